"""QueueCTL's benchmark suite: one command, one run, one table with the issue's targets.

    python tests/bench/run.py                    # the full suite (a few minutes)
    python tests/bench/run.py --quick            # a smoke run in seconds (CI uses this)
    python tests/bench/run.py --only ceilings,throughput --json figures.json

Sections, all in this one process and run so that their figures compare as
ratios on a noisy machine (each prints as rows of the table):
* ceilings (ceilings.py): ``xargs -P2 sh -c true``, 2 Python processes
  spawning ``true`` through ``subprocess.run``, and lockstep round trips with a
  Python ZeroMQ echo server (what bounds one-at-a-time requests);
* throughput (throughput.py): drain and CPU per job with one agent of 2 slots,
  enqueue-to-completion latency, single / batch (CLI ``--file``) / CLI enqueue;
* scale (scale.py): a broker on a store of 1,000,000 jobs against one on an
  empty store: drain, enqueue, ``status``, ``/api/stats``, RSS;
* fleet (fleet.py): 20 agents x 10 slots busy with ``sleep 0.2`` jobs;
* curve (curve.py): the same drain with CURVE keys on and off;
* big_batch (big_batch.py): ``enqueue --file`` of 100,000 and of 1,000,000
  lines (quick: 2,000 and 20,000), each on a fresh broker: the rates and their
  ratio, another client's worst ``status`` wait, peak RSS of broker and CLI.
Each row is marked "meets" or "misses" against its target. Speed is never
asserted: the command exits 0 whatever the figures (and non-zero only when a
benchmark could not run, e.g. a CLI command failed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import big_batch
import ceilings
import curve
import fleet
import scale
import throughput

SECTIONS = ("ceilings", "throughput", "scale", "fleet", "curve", "big_batch")
SIZES = {
    "full": {"ceiling_jobs": 2000, "round_trips": 10_000, "drain": 2000, "latency": 200,
             "batch": 100_000, "single": 10_000, "cli_runs": 20, "scale_rows": 1_000_000,
             "scale_pending": 100_000, "scale_drain": 2000, "scale_single": 10_000,
             "scale_batch": 100_000, "scale_samples": 200,
             "fleet_agents": 20, "fleet_slots": 10, "fleet_jobs": 5000, "fleet_duration": 0.2,
             "curve_jobs": 2000, "curve_rounds": 2, "big_small": 100_000, "big_big": 1_000_000},
    "quick": {"ceiling_jobs": 200, "round_trips": 500, "drain": 200, "latency": 20,
              "batch": 2000, "single": 500, "cli_runs": 3, "scale_rows": 20_000,
              "scale_pending": 2000, "scale_drain": 200, "scale_single": 500,
              "scale_batch": 2000, "scale_samples": 50,
              "fleet_agents": 4, "fleet_slots": 5, "fleet_jobs": 100, "fleet_duration": 0.05,
              "curve_jobs": 200, "curve_rounds": 1, "big_small": 2000, "big_big": 20_000},
}
PEERS = (  # /work/shared/FACTS.md "Peers": 2,000 `sh -c true` jobs, 2 workers
    ("beanstalkd + greenstalk", "1,520", "61,000", "1.5 ms"),
    ("Huey (SQLite storage)", "1,015", "5,080", "116 ms or more (polls)"),
    ("Celery (prefork, Redis)", "725", "2,630", "4.7 ms"),
    ("RQ (fork per job)", "126", "3,490", "11.5 ms"),
)


def run_sections(only: list[str], s: dict) -> dict:
    results: dict = {}
    for name in only:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        if name == "ceilings":
            results[name] = ceilings.measure(s["ceiling_jobs"], s["round_trips"])
        elif name == "throughput":
            results[name] = throughput.measure(s["drain"], s["latency"], s["batch"],
                                               s["single"], s["cli_runs"])
        elif name == "scale":
            results[name] = scale.measure(s["scale_rows"], s["scale_pending"], s["scale_drain"],
                                          s["scale_single"], s["scale_batch"], s["scale_samples"])
        elif name == "fleet":
            results[name] = fleet.measure(s["fleet_agents"], s["fleet_slots"], s["fleet_jobs"],
                                          s["fleet_duration"])
        elif name == "curve":
            results[name] = curve.measure(s["curve_jobs"], s["curve_rounds"])
        elif name == "big_batch":
            results[name] = big_batch.measure(s["big_small"], s["big_big"])
        results[name]["section_sec"] = time.perf_counter() - start
    return results


def verdict(ok: bool) -> str:
    return "meets" if ok else "misses"


def rows(r: dict, s: dict) -> list[tuple[str, str, str, str]]:
    out = []
    xargs = r.get("ceilings", {}).get("xargs_per_sec")

    def vs_xargs(rate: float, target: float | None = None) -> str:
        if xargs is None:
            return "n/a (ceilings not run)"
        text = f"{rate / xargs:.2f}x xargs"
        return text if target is None else f"{text}: {verdict(rate / xargs >= target)}"

    def vs_target(value: float, target: float, higher_is_better: bool = True) -> str:
        ok = value >= target if higher_is_better else value <= target
        return f"{value / target:.2f}x target: {verdict(ok)}"

    if "ceilings" in r:
        c = r["ceilings"]
        out.append((f"xargs -P2 sh -c true ({c['jobs']:,} jobs)", f"{xargs:,.0f} jobs/s",
                    "ceiling", "1.00x xargs"))
        out.append((f"Python spawn: 2 x subprocess.run('true', shell=True) ({c['jobs']:,})",
                    f"{c['python_spawn_per_sec']:,.0f} jobs/s", "ceiling",
                    vs_xargs(c["python_spawn_per_sec"])))
        out.append((f"ZeroMQ lockstep echo, Python ROUTER ({c['round_trips']:,} round trips)",
                    f"{c['echo_per_sec']:,.0f}/s", "ceiling", "bounds single enqueue"))
    if "throughput" in r:
        t = r["throughput"]
        d, lat, cli = t["drain"], t["latency_ms"], t["cli_enqueue_ms"]
        out.append((f"drain, 1 agent x 2 slots ({d['jobs']:,} true jobs)",
                    f"{d['per_sec']:,.0f} jobs/s", ">= 0.9x xargs", vs_xargs(d["per_sec"], 0.9)))
        cpu = d["cpu_ms_per_job"]
        out.append(("CPU per job during the drain (broker / agent / the job's `sh -c true`)",
                    f"{cpu['broker']:.2f} / {cpu['agent']:.2f} / {cpu['jobs']:.2f} ms; machine "
                    f"{d['machine_busy']:.0%} busy", "-", "info"))
        if xargs:
            # What 0.9x xargs leaves for the broker and the agent on this machine,
            # once the job processes have had their CPU.
            budget = len(os.sched_getaffinity(0)) / (0.9 * xargs) * 1000 - cpu["jobs"]
            used = cpu["broker"] + cpu["agent"]
            out.append(("CPU per job left for broker + agent at 0.9x xargs",
                        f"{budget:.2f} ms (they use {used:.2f})", "-",
                        f"{used / budget:.1f}x the budget" if budget > 0 else "none left"))
        out.append((f"latency enqueue->completed p50 ({lat['samples']} jobs)",
                    f"{lat['p50']:.2f} ms", "<= 2 ms", vs_target(lat["p50"], 2, False)))
        out.append((f"latency enqueue->completed p99 ({lat['samples']} jobs)",
                    f"{lat['p99']:.2f} ms", "<= 10 ms", vs_target(lat["p99"], 10, False)))
        b, one = t["batch_enqueue"], t["single_enqueue"]
        out.append((f"batch enqueue, queuectl enqueue --file ({b['jobs']:,} jobs)",
                    f"{b['per_sec']:,.0f}/s", ">= 100,000/s", vs_target(b["per_sec"], 100_000)))
        echo = r.get("ceilings", {}).get("echo_per_sec")
        out.append((f"single enqueue, Client.enqueue ({one['n']:,} calls)",
                    f"{one['per_sec']:,.0f}/s" + (f" ({one['per_sec'] / echo:.2f}x the echo)"
                                                  if echo else ""),
                    ">= 10,000/s", vs_target(one["per_sec"], 10_000)))
        out.append((f"CLI enqueue wall, median / max ({cli['runs']} runs)",
                    f"{cli['median']:.0f} / {cli['max']:.0f} ms (python -c pass: "
                    f"{cli['python_pass_median']:.0f} ms)", "<= 120 ms",
                    vs_target(cli["median"], 120, False)))
    if "scale" in r:
        sc = r["scale"]
        big, empty, rows_label = sc["full"], sc["empty"], f"{sc['rows']:,} rows"

        def within(key: str, label: str, unit: str = "/s") -> None:
            ratio = big[key] / empty[key]
            out.append((f"{label} at {rows_label}",
                        f"{big[key]:,.0f}{unit} (empty: {empty[key]:,.0f})",
                        "within 10% of empty", f"{ratio:.2f}x empty: {verdict(ratio >= 0.9)}"))

        within("drain_per_sec", f"drain of {sc['drain']:,} jobs, 1 agent x 2 slots,", " jobs/s")
        within("single_enqueue_per_sec", f"single enqueue ({sc['single']:,} calls)")
        within("batch_enqueue_per_sec", f"batch enqueue, CLI --file ({sc['batch']:,} jobs),")
        for key, label in (("status_ms", "status, Python client"),
                           ("api_stats_ms", "/api/stats, queuectl dashboard")):
            b, e = big[key], empty[key]
            out.append((f"{label}, p50 / p99 ({sc['samples']}) at {rows_label}",
                        f"{b['p50']:.1f} / {b['p99']:.1f} ms (empty: {e['p50']:.1f} / "
                        f"{e['p99']:.1f})", "<= 50 ms",
                        f"p99 {b['p99'] / e['p99']:.2f}x empty: {verdict(b['p99'] <= 50)}"))
        b, e = big["rss_mb"], empty["rss_mb"]
        growth = max(b[k] / e[k] for k in b)
        flat = max(b.values()) < 150 and growth <= 1.1
        out.append((f"broker RSS at start / after drain / after enqueues, {rows_label}",
                    " / ".join(f"{b[k]:.0f}" for k in b) + " MB (empty: "
                    + " / ".join(f"{e[k]:.0f}" for k in e) + ")",
                    "< 150 MB, flat with rows",
                    f"up to {growth:.2f}x empty: {verdict(flat)}"))
    if "fleet" in r:
        f = r["fleet"]
        shape = (f"{f['agents']} agents x {f['slots']} slots, "
                 f"{f['jobs']:,} x sleep {f['duration']:g}")
        out.append((f"fleet utilisation ({shape})",
                    f"{f['utilisation']:.1%} (wall {f['wall_sec']:.2f} s, ideal "
                    f"{f['ideal_sec']:.2f} s)", ">= 95%",
                    verdict(f["utilisation"] >= 0.95)))
        out.append((f"fleet ceiling: xargs -P{f['agents'] * f['slots']} sh -c 'sleep "
                    f"{f['duration']:g}' ({f['jobs']:,})", f"{f['xargs_utilisation']:.1%}",
                    "ceiling", f"queuectl {f['utilisation'] / f['xargs_utilisation']:.2f}x"))
        out.append(("fleet slot occupancy (busy / total slots while jobs wait)",
                    f"{f['occupancy']:.1%}", ">= 95%", verdict(f["occupancy"] >= 0.95)))
        out.append(("fleet broker CPU (agents' own; their job processes)",
                    f"{f['broker_cores']:.2f} core ({f['agents_cores']:.2f}; "
                    f"{f['job_processes_cores']:.2f})", "< 1 core",
                    verdict(f["broker_cores"] < 1)))
    if "curve" in r:
        c = r["curve"]
        out.append((f"drain with CURVE on, best of {c['rounds']} ({c['jobs']:,} true jobs)",
                    f"{c['curve_per_sec']:,.0f} jobs/s (off: {c['plain_per_sec']:,.0f})",
                    "measured (issue 6)", f"{c['curve_per_sec'] / c['plain_per_sec']:.2f}x off"))
    if "big_batch" in r:
        small, big = r["big_batch"]["small"], r["big_batch"]["big"]
        ratio = r["big_batch"]["ratio"]
        out.append((f"enqueue --file of {big['lines']:,} lines vs {small['lines']:,}",
                    f"{big['per_sec']:,.0f}/s vs {small['per_sec']:,.0f}/s",
                    "within 25%", f"{ratio:.2f}x: {verdict(ratio >= 0.75)}"))
        out.append((f"another client's status during the {big['lines']:,}-line batch, worst",
                    f"{big['status_worst_ms']:,.0f} ms ({big['status_calls']} calls)", "<= 1 s",
                    verdict(big["status_worst_ms"] <= 1000)))
        out.append((f"peak RSS (VmHWM) broker / CLI, {big['lines']:,}-line batch",
                    f"{big['broker_peak_mb']:.0f} / {big['client_peak_mb']:.0f} MB", "< 200 MB",
                    verdict(max(big["broker_peak_mb"], big["client_peak_mb"]) < 200)))
    return out


def machine() -> dict:
    import apsw
    import zmq

    return {"nproc": len(os.sched_getaffinity(0)), "python": platform.python_version(),
            "pyzmq": zmq.__version__, "libzmq": zmq.zmq_version(), "apsw": apsw.apsw_version(),
            "sqlite": apsw.sqlite_lib_version(), "loadavg": os.getloadavg()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run with small sizes (seconds, for CI)")
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated sections to run, of: {', '.join(SECTIONS)}")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON here")
    args = parser.parse_args()
    only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown or not only:
        parser.error(f"unknown section(s) {unknown}; pick from {', '.join(SECTIONS)}")
    sizes = SIZES["quick" if args.quick else "full"]
    before = machine()
    start = time.perf_counter()
    only = [name for name in SECTIONS if name in only]
    results = run_sections(only, sizes)
    elapsed = time.perf_counter() - start
    table = rows(results, sizes)
    print("| benchmark | result | target (from the issue) | ratio / verdict |")
    print("|---|---|---|---|")
    for row in table:
        print("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
    print("\nReference points, NOT measured in this run (FACTS.md \"Peers\": 2,000 `sh -c true`"
          " jobs, 2 workers, same kind of machine):\n")
    print("| system | drain/s | enqueue/s | latency on an idle worker |")
    print("|---|---|---|---|")
    for peer in PEERS:
        print("| " + " | ".join(peer) + " |")
    after = os.getloadavg()
    print(f"\nMachine: {before['nproc']} CPUs, Python {before['python']}, pyzmq {before['pyzmq']}"
          f" / libzmq {before['libzmq']}, apsw {before['apsw']} (SQLite {before['sqlite']});"
          f" load average {before['loadavg'][0]:.2f} before, {after[0]:.2f} after.")
    print(f"Sizes: {'quick' if args.quick else 'full'}; sections: {', '.join(only)};"
          f" {elapsed:.1f} s in all. Speed is not asserted: this exits 0 whatever the figures.")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"machine": before, "quick": args.quick, "sizes": sizes, "results": results,
             "seconds": elapsed,
             "table": [dict(zip(("benchmark", "result", "target", "verdict"), row, strict=True))
                       for row in table]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
