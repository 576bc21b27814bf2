"""The process-spawn ceilings that QueueCTL's drain rate is compared with.

    python tests/bench/ceilings.py [--jobs 2000]

* xargs: ``seq N | xargs -P2 -I{} sh -c true``, two ``sh -c true`` at a time
  (what a shell can do with 2 workers and no queue at all);
* Python spawn: 2 Python processes, each running ``subprocess.run("true",
  shell=True)`` N/2 times, timed from their start until both are done
  (interpreter start included), which is how an agent slot starts a job.
Both are jobs per second.

* ZeroMQ echo: a Python ROUTER that only decodes and re-encodes each msgpack
  frame, and one DEALER client in lockstep over ``tcp://127.0.0.1``: the most
  request-reply round trips a second that any Python broker here can answer
  one at a time, which bounds a single ``Client.enqueue`` loop.
Nothing here asserts a speed; it prints figures.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import free_port

SPAWN_LOOP = ("import subprocess, sys\n"
              "for _ in range(int(sys.argv[1])):\n"
              "    subprocess.run('true', shell=True, check=True)\n")


ECHO_LOOP = ("import msgpack, sys, zmq\n"
             "sock = zmq.Context.instance().socket(zmq.ROUTER)\n"
             "sock.bind(sys.argv[1])\n"
             "poller = zmq.Poller()\n"
             "poller.register(sock, zmq.POLLIN)\n"
             "while True:\n"
             "    poller.poll()\n"
             "    ident, data = sock.recv_multipart()\n"
             "    request = msgpack.unpackb(data)\n"
             "    if request is None:\n"
             "        break\n"
             "    sock.send_multipart([ident, msgpack.packb(request)])\n")
REQUEST = {"op": "enqueue", "req_id": 1, "args": {"job": {"command": "true"}}}


def echo_round_trips(n: int) -> float:
    """Lockstep round trips a second between a DEALER and a Python ROUTER echo."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    server = subprocess.Popen([sys.executable, "-c", ECHO_LOOP, endpoint])
    client: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    client.setsockopt(zmq.LINGER, 0)
    try:
        client.connect(endpoint)
        frame = msgpack.packb(REQUEST)

        def round_trip() -> None:
            client.send(frame)
            if not client.poll(10_000):
                raise RuntimeError("the echo server did not answer within 10 s")
            msgpack.unpackb(client.recv())

        round_trip()  # the connection is up
        for _ in range(min(n, 200)):  # warm up
            round_trip()
        start = time.perf_counter()
        for _ in range(n):
            round_trip()
        rate = n / (time.perf_counter() - start)
        client.send(msgpack.packb(None))
        server.wait(10)
        return rate
    finally:
        client.close()
        if server.poll() is None:
            server.kill()
            server.wait()


def xargs_rate(jobs: int) -> float:
    start = time.perf_counter()
    subprocess.run(f"seq {jobs} | xargs -P2 -I{{}} sh -c true", shell=True, check=True)
    return jobs / (time.perf_counter() - start)


def python_spawn_rate(jobs: int) -> float:
    halves = (jobs // 2, jobs - jobs // 2)
    start = time.perf_counter()
    workers = [subprocess.Popen([sys.executable, "-c", SPAWN_LOOP, str(n)]) for n in halves]
    try:
        codes = [worker.wait(600) for worker in workers]
        elapsed = time.perf_counter() - start
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    if any(codes):
        raise RuntimeError(f"python spawn loop exited with {codes}")
    return jobs / elapsed


def measure(jobs: int, round_trips: int) -> dict[str, float]:
    return {"jobs": jobs, "xargs_per_sec": xargs_rate(jobs),
            "python_spawn_per_sec": python_spawn_rate(jobs),
            "round_trips": round_trips, "echo_per_sec": echo_round_trips(round_trips)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--round-trips", type=int, default=10_000)
    args = parser.parse_args()
    result = measure(args.jobs, args.round_trips)
    print(f"xargs -P2 sh -c true ({args.jobs} jobs): {result['xargs_per_sec']:,.0f} jobs/s")
    print(f"2 x python subprocess.run('true', shell=True): "
          f"{result['python_spawn_per_sec']:,.0f} jobs/s")
    print(f"ZeroMQ lockstep echo, Python ROUTER ({args.round_trips} round trips): "
          f"{result['echo_per_sec']:,.0f}/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
