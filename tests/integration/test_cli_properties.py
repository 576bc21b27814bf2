"""Property tests over every field a user types into ``queuectl``.

Each job JSON field of the contract (and the compatibility fields), ``config
set KEY VALUE``, ``list --state/--queue/--limit`` and the job-id arguments get
hypothesis-generated values, valid and hostile: wrong types, huge and negative
numbers, unicode, control characters, empty strings, deep nesting, invalid
JSON. For every example, either the command exits 0 and the value round-trips
through ``show ID --json`` (or ``config get``), or it exits with the
contract's code (2 for bad input, 1 for an unknown or duplicate id) with
exactly one line on stderr that starts with ``queuectl: ``, nothing on
stdout, and never a traceback. Values the contract clearly allows must be
accepted; values it clearly refuses must be refused with a message naming the
field. test_cli.py has the hand-picked cases.

The CLI runs in-process (``queuectl.cli.main.main``) against one real broker
per module, so hundreds of examples stay fast; a few go through the real
``queuectl`` program too.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import math
import re
import time
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, assume, example, given, settings
from hypothesis import strategies as st

from harness import Broker, Processes, run_cli
from queuectl.cli.main import main
from queuectl.proto.states import ALL_STATES

pytestmark = [pytest.mark.integration, pytest.mark.faults]

# No shrinking: every example costs a broker round trip, and a failure is reported
# with the example as generated.
PROPS = settings(max_examples=40, deadline=None, database=None,
                 phases=[Phase.explicit, Phase.reuse, Phase.generate],
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
ID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-"
CONFIG_RULES = {  # the contract's keys: (integer?, rule)
    "max_retries": (True, lambda v: v >= 1),
    "base_backoff": (False, lambda v: v >= 1),
    "max_backoff": (False, lambda v: v >= 0),
    "timeout_sec": (False, lambda v: v > 0),
}
_ids = itertools.count()


# --- running the CLI -----------------------------------------------------------------------

@dataclass
class Outcome:
    argv: list[str]
    code: int
    out: str
    err: str

    def __str__(self) -> str:
        return (f"queuectl {self.argv!r} -> exit {self.code}\n"
                f"stdout: {self.out[:500]!r}\nstderr: {self.err[:500]!r}")


class CLI:
    """``queuectl --broker ENDPOINT ARGV`` in this process, output captured."""

    def __init__(self, broker: Broker, capsys):
        self.broker, self.capsys = broker, capsys

    def __call__(self, *argv: str) -> Outcome:
        self.capsys.readouterr()
        try:
            code = main(["--broker", self.broker.endpoint, *argv])
        except SystemExit as exc:  # the real program would exit with it, no traceback
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException as exc:  # noqa: BLE001 - the real program would print a traceback
            captured = self.capsys.readouterr()
            pytest.fail(f"queuectl {list(argv)!r} raised {type(exc).__name__}: {str(exc)[:300]} "
                        f"(the real program prints a traceback)\nstderr: {captured.err[:300]!r}")
        captured = self.capsys.readouterr()
        return Outcome(list(argv), code, captured.out, captured.err)

    def json(self, *argv: str) -> Any:
        result = self(*argv, "--json")
        assert result.code == 0, str(result)
        return json.loads(result.out)


def assert_error(result: Outcome, codes: tuple[int, ...] = (2,), names: str | None = None) -> None:
    """A documented exit code, nothing on stdout, one line on stderr: 'queuectl: ...'."""
    assert "Traceback" not in result.err, str(result)
    assert result.code in codes, str(result)
    assert result.out == "", str(result)
    assert result.err.startswith("queuectl: ") and result.err.endswith("\n"), str(result)
    assert "\n" not in result.err[:-1], f"the error is more than one line:\n{result}"
    if names:
        assert names in result.err, f"the error does not name {names!r}:\n{result}"


def assert_either(result: Outcome) -> bool:
    """Exit 0, or a clean bad-input error; True if it was accepted."""
    assert "Traceback" not in result.err + result.out, str(result)
    if result.code == 0:
        return True
    assert_error(result, (1, 2))
    return False


# --- the shared broker -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cli_broker(tmp_path_factory):
    """One broker and no agent: enqueued jobs stay pending, so nothing runs."""
    workdir = tmp_path_factory.mktemp("cli-properties")
    owner = Processes(workdir)
    (workdir / "home").mkdir()
    try:
        yield Broker(owner, workdir / "home").start()
    finally:
        owner.cleanup()


@pytest.fixture
def cli(cli_broker, capsys):
    return CLI(cli_broker, capsys)


# --- strategies ----------------------------------------------------------------------------------

FINITE = st.floats(allow_nan=False, allow_infinity=False)
JSON_SCALAR = st.one_of(st.none(), st.booleans(), st.integers(), FINITE, st.text(max_size=20))
JSON_VALUE = st.recursive(JSON_SCALAR, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12)
HUGE_INTS = st.one_of(st.integers(min_value=2**63), st.integers(max_value=-(2**63) - 1),
                      st.sampled_from([10**30, -(10**30), 2**64, 2**1000, 2**1100, -(2**1100)]))
NUMBERS = st.one_of(st.integers(), HUGE_INTS, FINITE)
# Text that travels on any wire: no lone surrogates.
TEXT = st.text(st.characters(blacklist_categories=["Cs"]), max_size=40)
PRINTABLE = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=60)
NO_NUL = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\0"),
                 max_size=40)
# What an argv entry can hold: a byte that is not UTF-8 arrives as a lone surrogate (PEP 383).
LONE_SURROGATES = st.text(st.characters(min_codepoint=0xDC80, max_codepoint=0xDCFF),
                          min_size=1, max_size=3)
ARGV_TEXT = st.one_of(TEXT, TEXT, st.builds(lambda a, b, c: a + b + c, TEXT, LONE_SURROGATES, TEXT))


def not_a(*types: type) -> st.SearchStrategy:
    """JSON values of none of ``types`` (bool is never an int here)."""
    def wrong(value: Any) -> bool:
        if isinstance(value, bool):
            return bool not in types
        return not isinstance(value, types)
    return JSON_VALUE.filter(wrong)


def deep(depth: int, kind: str = "list") -> str:
    return ("[" * depth + "]" * depth) if kind == "list" else ('{"a":' * depth + "{}" + "}" * depth)


@dataclass
class Case:
    """One generated value for a field: 'valid' must be accepted, 'invalid' refused
    with exit 2, 'either' may go both ways (the contract leaves it open)."""
    value: Any
    expect: str


def cases(valid=None, invalid=None, either=None) -> st.SearchStrategy:
    parts = []
    if valid is not None:
        parts.append(valid.map(lambda v: Case(v, "valid")))
    if invalid is not None:
        parts.append(invalid.map(lambda v: Case(v, "invalid")))
    if either is not None:
        parts.append(either.map(lambda v: Case(v, "either")))
    return st.one_of(*parts)


ISO_ZONES = st.one_of(st.none(), st.just(dt.UTC),
                      st.integers(-14 * 60, 14 * 60).map(
                          lambda m: dt.timezone(dt.timedelta(minutes=m))))
# st.datetimes takes naive bounds; the zone is put on after.
EARLIEST = dt.datetime(1971, 1, 1)  # noqa: DTZ001 - a naive bound, as st.datetimes wants
LATEST = dt.datetime(2200, 1, 1)  # noqa: DTZ001 - a naive bound, as st.datetimes wants
DATETIMES = st.builds(lambda moment, zone: moment.replace(tzinfo=zone),
                      st.datetimes(min_value=EARLIEST, max_value=LATEST),
                      ISO_ZONES)


def iso_text(moment: dt.datetime, style: int) -> str:
    text = moment.isoformat(timespec=["seconds", "milliseconds", "microseconds"][style % 3])
    return text.replace("+00:00", "Z") if style >= 3 else text


RUN_AT = cases(
    valid=st.builds(iso_text, DATETIMES, st.integers(0, 5)),
    invalid=st.one_of(not_a(str), st.sampled_from(["", "tomorrow", "2030-13-01T00:00:00Z",
                                                   "31/01/2030", "2030-01-01T25:00:00", "now",
                                                   "1700000000"])),
    either=TEXT)

DURATION_TEXT = st.builds(lambda n, unit, pad: f"{pad}{n}{pad}{unit}" if unit else f"{n}",
                          st.integers(0, 10**4), st.sampled_from(["", "ms", "s", "m", "h", "d"]),
                          st.sampled_from(["", " "]))
DELAY = cases(
    valid=st.one_of(st.integers(0, 10**6), st.floats(0, 10**6), DURATION_TEXT),
    invalid=st.one_of(st.integers(max_value=-1), st.floats(max_value=-1e-9, allow_infinity=False),
                      not_a(int, float, str),
                      st.sampled_from(["soon", "5 minutes", "-5s", "", "s", "5x", "1e3", "NaN"])),
    either=st.one_of(TEXT, NUMBERS))

UNICODE_KEYS = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="=\0"),
                       min_size=1, max_size=12)

FIELD_CASES: dict[str, st.SearchStrategy] = {
    "command": cases(
        valid=NO_NUL.filter(lambda s: s.strip()),
        invalid=st.one_of(not_a(str), st.just("")),
        either=st.one_of(TEXT, st.sampled_from(["  ", "\n\t", "echo \0", "x" * 200_000]))),
    "priority": cases(
        valid=st.integers(-(2**63), 2**63 - 1),
        invalid=st.one_of(not_a(int, float), FINITE.filter(
            lambda f: not f.is_integer())),
        either=st.one_of(HUGE_INTS, FINITE)),
    "run_at": RUN_AT,
    "delay": DELAY,
    "timeout_sec": cases(
        valid=st.one_of(st.floats(min_value=1e-3, max_value=1e12), st.integers(1, 10**9)),
        invalid=st.one_of(not_a(int, float),
                          st.floats(max_value=0, allow_infinity=False, allow_nan=False),
                          st.integers(max_value=0)),
        either=NUMBERS),
    "max_retries": cases(
        valid=st.integers(1, 1000),
        invalid=st.one_of(not_a(int, float), st.integers(max_value=0),
                          FINITE.filter(lambda f: not f.is_integer())),
        either=NUMBERS),
    "queue": cases(
        valid=PRINTABLE.filter(lambda s: len(s) <= 128),
        invalid=not_a(str),
        either=st.one_of(TEXT, st.just(""), st.text(min_size=129, max_size=300))),
    "env": cases(
        valid=st.dictionaries(UNICODE_KEYS, NO_NUL, max_size=4),
        invalid=st.one_of(not_a(dict),
                          st.dictionaries(UNICODE_KEYS, not_a(str), min_size=1, max_size=3)),
        either=st.dictionaries(TEXT, TEXT, max_size=3)),
    "cwd": cases(
        valid=NO_NUL.filter(bool),
        invalid=not_a(str),
        either=st.one_of(TEXT, st.just(""))),
    "requires": cases(
        valid=st.dictionaries(UNICODE_KEYS, NO_NUL, max_size=4),
        invalid=st.one_of(not_a(dict),
                          st.dictionaries(UNICODE_KEYS, not_a(str), min_size=1, max_size=3)),
        either=st.dictionaries(TEXT, TEXT, max_size=3)),
    # The compatibility fields: the queue sets them, so only these values are accepted.
    "state": cases(
        valid=st.just("pending"),
        invalid=JSON_VALUE.filter(lambda v: v != "pending")),
    "attempts": cases(
        valid=st.just(0),
        invalid=JSON_VALUE.filter(lambda v: not (type(v) in (int, float) and v == 0))),
    "created_at": cases(valid=JSON_VALUE),
    "updated_at": cases(valid=JSON_VALUE),
}


# Values found to break the CLI (huge numbers), tried first on every run.
EXPLICIT: dict[str, list[Case]] = {
    "timeout_sec": [Case(2**70, "either"), Case(2**1100, "either")],
    "delay": [Case(2**1100, "either"), Case(-(2**1100), "invalid")],
    "priority": [Case(2**64, "either")],
}


# --- round trips ----------------------------------------------------------------------------------

def epoch(text: str) -> float:
    moment = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.astimezone()  # the contract: no zone means local time
    return moment.timestamp()


def duration(value: Any) -> float:
    if isinstance(value, (int, float)):
        return float(value)
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*", value)
    assert match is not None, value
    unit = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}[match.group(2)]
    return float(match.group(1)) * unit


def assert_round_trip(field: str, value: Any, job: dict, enqueued_at: float) -> None:
    if field == "run_at":
        assert abs(epoch(job["run_at"]) - epoch(value)) < 0.001, (value, job["run_at"])
    elif field == "delay":
        wanted = enqueued_at + duration(value)
        assert wanted - 1 <= epoch(job["run_at"]) <= wanted + 30, (value, job["run_at"])
    elif field in ("state", "attempts"):
        assert job["state"] == "pending" and job["attempts"] == 0, job
    elif field in ("created_at", "updated_at"):
        # the queue's time, not ours
        assert abs(epoch(job[field]) - enqueued_at) < 60, (value, job[field])
    elif field == "timeout_sec":  # a number: stored as a double
        assert math.isclose(job[field], value, rel_tol=1e-15), (value, job[field])
    elif field in ("env", "requires") and not value:
        assert job[field] in ({}, None), (field, value, job[field])  # an empty map is no map
    else:
        assert job[field] == value and type(job[field]) in (type(value), float), \
            (field, value, job[field])


def enqueue_and_check(cli: CLI, used_ids: set, spec: dict, text: str, field: str,
                      case: Case) -> None:
    started = time.time()
    result = cli("enqueue", text, "--json")
    if case.expect == "valid" and spec.get("id") in used_ids:
        assert_error(result, (1,), spec["id"])  # the contract: a duplicate id is exit 1
        return
    if case.expect == "valid":
        assert result.code == 0, f"a valid {field} was refused:\n{result}"
    elif case.expect == "invalid":
        assert_error(result, (2,), field)
        return
    if not assert_either(result):
        return
    reply = json.loads(result.out)
    used_ids.add(reply["id"])
    # an id may start with "-": after "--" it is an argument, as in any CLI
    result = cli("show", "--json", "--", reply["id"])
    assert result.code == 0, str(result)
    job = json.loads(result.out)
    assert_round_trip(field, case.value, job, started)


# --- tests: every job field ---------------------------------------------------------------

@pytest.fixture(scope="module")
def used_ids():
    return set()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("field", sorted(FIELD_CASES))
def test_every_job_field_round_trips_or_is_refused_cleanly(cli, used_ids, field):
    @PROPS
    @given(case=FIELD_CASES[field], ascii_only=st.booleans())
    def check(case, ascii_only):
        spec = {"id": f"prop-{next(_ids)}", "command": "true", field: case.value}
        if field == "command" and isinstance(case.value, str) and len(case.value) > 1000:
            ascii_only = True  # a long argv entry either way; keep it cheap
        text = json.dumps(spec, ensure_ascii=ascii_only)
        enqueue_and_check(cli, used_ids, spec, text, field, case)

    for case in EXPLICIT.get(field, []):
        check = example(case=case, ascii_only=True)(check)
    check()


@pytest.mark.timeout(120)
def test_the_id_field_round_trips_or_is_refused_cleanly(cli, used_ids):
    valid = st.text(ID_CHARS, min_size=1, max_size=128)
    invalid = st.one_of(not_a(str), st.just(""), st.text(ID_CHARS, min_size=129, max_size=200),
                        st.text(min_size=1, max_size=30).filter(
                            lambda s: not re.fullmatch(r"[A-Za-z0-9._:-]+", s)))

    @PROPS
    @given(case=cases(valid=valid, invalid=invalid))
    def check(case):
        spec = {"id": case.value, "command": "true"}
        enqueue_and_check(cli, used_ids, spec, json.dumps(spec), "id", case)

    check()


@pytest.mark.timeout(120)
def test_unknown_fields_are_refused_by_name(cli):
    known = {"id", "command", "priority", "run_at", "delay", "timeout_sec", "max_retries", "queue",
             "env", "cwd", "requires", "state", "attempts", "created_at", "updated_at"}

    @PROPS
    @given(name=TEXT.filter(lambda s: s not in known), value=JSON_VALUE)
    @example(name="colour\nred", value=1)
    def check(name, value):
        result = cli("enqueue", json.dumps({"command": "true", name: value}))
        assert_error(result, (2,), name[:64] if name.isprintable() else None)

    check()


@pytest.mark.timeout(120)
def test_run_at_and_delay_together_are_refused(cli):
    @PROPS
    @given(run_at=st.builds(iso_text, DATETIMES, st.integers(0, 5)),
           delay=DELAY.map(lambda c: c.value))
    def check(run_at, delay):
        spec = {"command": "true", "run_at": run_at, "delay": delay}
        assert_error(cli("enqueue", json.dumps(spec)), (2,))

    check()


@pytest.mark.timeout(120)
def test_text_that_is_not_a_json_object_is_refused_cleanly(cli):
    valid_job = st.builds(
        lambda n: json.dumps({"command": "true", "id": f"never-{n}", "env": {"A": "1"}}),
        st.integers(0, 10**9))
    not_json = st.one_of(
        TEXT.filter(lambda s: not _parses(s)),
        st.builds(lambda text, cut: text[:cut], valid_job, st.integers(0, 40)).filter(
            lambda s: not _parses(s)),
        st.builds(lambda text, junk: text + junk, valid_job,
                  st.sampled_from([",", "}", " x", "\0", "]"])),
        st.sampled_from(["", " ", "{", "{command: true}", "{'command': 'true'}", "NaN",
                         "\ufeff{}"]),
    )
    not_an_object = JSON_VALUE.filter(lambda v: not isinstance(v, dict)).map(json.dumps)

    @PROPS
    @given(text=st.one_of(not_json, not_an_object))
    def check(text):
        assert_error(cli("enqueue", text), (2,))

    check()


def _parses(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


@pytest.mark.timeout(120)
@pytest.mark.parametrize("field", ["env", "requires", "command", "created_at"])
def test_deeply_nested_json_is_refused_or_ignored_cleanly(cli, field):
    """A job nested thousands of levels deep is bad input (or, for created_at,
    ignored input), never a crash of the CLI."""
    @settings(PROPS, max_examples=25)
    @given(depth=st.one_of(st.integers(1, 50), st.integers(900, 1100), st.integers(1100, 20_000)),
           kind=st.sampled_from(["list", "object"]))
    def check(depth, kind):
        text = '{"command": "true", "' + field + '": ' + deep(depth, kind) + "}"
        if field == "command":
            text = '{"command": ' + deep(depth, kind) + "}"
        result = cli("enqueue", text)
        if field == "created_at":
            assert_either(result)
        else:
            assert_error(result, (2,))

    check()


# --- tests: config set ---------------------------------------------------------------------------

def number_text(value: int | float, style: int) -> str:
    if isinstance(value, int):
        return str(value)
    return [repr(value), f"{value:e}", f"{value:.6f}"][style % 3]


@pytest.mark.timeout(120)
def test_config_set_accepts_the_documented_values_and_refuses_the_rest(cli):
    keys = sorted(CONFIG_RULES)
    spellings = st.sampled_from(keys).flatmap(lambda k: st.sampled_from([k, k.replace("_", "-")]))

    def valid_value(key: str) -> st.SearchStrategy:
        integer, _rule = CONFIG_RULES[key]
        if integer:
            return st.integers(1, 1000).map(str)
        low = 1 if key == "base_backoff" else 0.001
        return st.builds(number_text, st.one_of(st.integers(math.ceil(low), 10**6),
                                                 st.floats(low, 10**6)), st.integers(0, 2))

    def invalid_value(key: str) -> st.SearchStrategy:
        integer, rule = CONFIG_RULES[key]
        out_of_range = st.one_of(st.integers(-10**6, 10), st.floats(-1e6, 1.0)).filter(
            lambda v: not rule(v))
        words = st.sampled_from(["", " ", "abc", "nan", "inf", "-inf", "1e999", "5s", "one", "0x10",
                                 "--1", "\udcff", "1\udcff"])
        parts = [out_of_range.map(str), words]
        if integer:
            parts.append(st.floats(1.01, 1e6).filter(lambda f: not f.is_integer()).map(repr))
        return st.one_of(*parts)

    @PROPS
    @given(data=st.data())
    def check(data):
        key = data.draw(spellings, label="key")
        name = key.replace("-", "_")
        kind = data.draw(st.sampled_from(["valid", "invalid", "either"]), label="kind")
        value = data.draw({"valid": valid_value(name), "invalid": invalid_value(name),
                           "either": ARGV_TEXT}[kind], label="value")
        result = cli("config", "set", "--", key, value)  # "--": a value may start with "-"
        if kind == "invalid":
            assert_error(result, (2,), name)
            return
        if kind == "valid":
            assert result.code == 0, f"a valid {name} was refused:\n{result}"
        elif not assert_either(result):
            return
        stored = cli.json("config", "get", key)[name]
        assert math.isclose(stored, float(value.strip()), rel_tol=1e-12), (value, stored)

    check()


@pytest.mark.timeout(120)
def test_config_keys_other_than_the_known_ones_are_refused(cli):
    known = {"max_retries", "base_backoff", "backoff_base", "max_backoff", "timeout_sec",
             "heartbeat_sec", "lease_sec", "kill_grace_sec", "output_limit"}

    @PROPS
    @given(key=ARGV_TEXT.filter(lambda k: k.strip().lower().replace("-", "_") not in known
                                and not k.startswith("-")),
           value=st.sampled_from(["1", "2", "abc"]))
    def check(key, value):
        assert_error(cli("config", "set", key, value), (2,))
        assert_error(cli("config", "get", key), (2,))

    check()


LIVENESS_RANGES = {"heartbeat_sec": (0.05, 60), "lease_sec": (0.5, 3600)}  # proto/config.py
PLAIN_NUMBER = re.compile(r"-?\d+(\.\d+)?")


@pytest.mark.timeout(120)
def test_liveness_settings_keep_the_lease_at_least_four_heartbeats(cli):
    """heartbeat_sec and lease_sec: refused (exit 2) exactly when out of range or when
    the lease would be shorter than 4 heartbeats; the settings never break that rule.
    An accepted value is the setting now, and a refused one changes nothing."""
    @PROPS
    @given(key=st.sampled_from(["heartbeat_sec", "lease_sec", "heartbeat-sec", "lease-sec"]),
           value=st.one_of(st.floats(0.01, 100).map(lambda f: f"{f:.3f}"),
                           st.integers(-5, 4000).map(str), ARGV_TEXT))
    def check(key, value):
        name = key.replace("-", "_")
        before = cli.json("config", "show")
        accepted = assert_either(cli("config", "set", "--", key, value))
        config = cli.json("config", "show")
        assert config["lease_sec"] >= 4 * config["heartbeat_sec"], config
        if PLAIN_NUMBER.fullmatch(value):  # a plain number: the rule decides
            low, high = LIVENESS_RANGES[name]
            proposed = {**before, name: float(value)}
            allowed = low <= float(value) <= high and \
                proposed["lease_sec"] >= 4 * proposed["heartbeat_sec"]
            assert accepted == allowed, (key, value, before, accepted)
        if accepted:
            assert math.isclose(config[name], float(value.strip()), rel_tol=1e-12), (value, config)
            assert {**config, name: before[name]} == before, "another setting changed too"
        else:
            assert config == before, "a refused value changed the settings"

    try:
        check()
    finally:  # back to the defaults, in an order the rule allows from any state
        for key, value in (("lease_sec", "240"), ("heartbeat_sec", "1"), ("lease_sec", "6")):
            assert cli("config", "set", key, value).code == 0


# --- tests: list options and job-id arguments --------------------------------------------

@pytest.mark.timeout(120)
def test_list_state_and_limit_filter_or_are_refused_cleanly(cli):
    @PROPS
    @given(state=st.one_of(st.none(), st.sampled_from(ALL_STATES),
                           ARGV_TEXT.filter(lambda s: not s.startswith("-"))),
           limit=st.one_of(st.none(), st.integers(1, 50).map(str), st.integers(-10**6, 0).map(str),
                           HUGE_INTS.map(str), st.integers(1_000_001, 10**18).map(str),
                           st.sampled_from(["", "1.5", "abc", "1e3", " 5"])))
    @example(state=None, limit=str(10**30))
    @example(state=None, limit=str(10**400))  # once overflowed the client's time allowance
    def check(state, limit):
        argv = ["list", "--json"]
        if state is not None:
            argv += ["--state", state]
        if limit is not None:
            argv += ["--limit", limit]
        result = cli(*argv)
        state_ok = state is None or state in ALL_STATES
        limit_ok = limit is None or (limit.isdigit() and 1 <= int(limit) <= 1000)
        limit_bad = limit is not None and (not re.fullmatch(r"\s*-?\d+\s*", limit)
                                           or int(limit) < 1)
        if state_ok and limit_ok:
            assert result.code == 0, str(result)
        elif not state_ok or limit_bad:
            assert_error(result, (2,))
            return
        if assert_either(result):
            jobs = json.loads(result.out)
            assert isinstance(jobs, list)
            assert limit is None or len(jobs) <= int(limit)
            assert state is None or all(job["state"] == state for job in jobs)

    check()


@pytest.mark.timeout(120)
def test_list_queue_returns_only_that_queue(cli, used_ids):
    """A job enqueued in a queue is listed under it, and nothing of another queue is."""
    @PROPS
    @given(queue=ARGV_TEXT.filter(lambda s: not s.startswith("-")))
    @example(queue="\udcff")
    def check(queue):
        job_id = f"prop-{next(_ids)}"
        enqueued = assert_either(cli("enqueue", json.dumps({"id": job_id, "command": "true",
                                                             "queue": queue})))
        if enqueued:
            used_ids.add(job_id)
        result = cli("list", "--queue", queue, "--json", "--limit", "1000")
        if enqueued:
            assert result.code == 0, f"a queue that took a job cannot be listed:\n{result}"
        if assert_either(result):
            jobs = json.loads(result.out)
            assert all(job["queue"] == queue for job in jobs)
            if enqueued and len(jobs) < 1000:  # a full page may end before it
                assert job_id in [job["id"] for job in jobs], f"{job_id} not listed in {queue!r}"

    check()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("command", [["show"], ["cancel"], ["logs"], ["dlq", "retry"]])
def test_an_unknown_job_id_is_a_one_line_error(cli, used_ids, command):
    @settings(PROPS, max_examples=30)
    @given(job_id=st.one_of(ARGV_TEXT, st.text(max_size=20), st.text(min_size=200, max_size=2000))
           .filter(lambda s: s and not s.startswith("-")))
    @example(job_id="bad\udcffid")
    def check(job_id):
        assume(not job_id.startswith("prop-") and job_id not in used_ids)
        assert_error(cli(*command, job_id), (1, 2))

    check()


# --- a few examples through the real program ---------------------------------------------

REAL_PROGRAM = [
    (["enqueue", json.dumps({"id": "real-1", "command": "true", "queue": "ünï ✓",
                             "priority": -(2**63), "env": {"K": "v=1"}, "timeout_sec": 1e-3})],
     0, None),
    (["enqueue", json.dumps({"command": "true", "max_retries": "3"})], 2, "max_retries"),
    (["enqueue", '{"command": "true", "env": ' + deep(5000) + "}"], 2, None),
    (["enqueue", '{"command": "true", "run_at": "soon"'], 2, None),
    (["config", "set", "base-backoff", "1e999"], 2, "base_backoff"),
    (["list", "--limit", str(10**30)], 2, None),
    (["list", "--queue", "\udcff"], (0, 2), None),    # a non-UTF-8 byte in argv
    (["show", "bad\udcffid"], (1, 2), None),
]


@pytest.mark.timeout(120)
def test_a_few_examples_through_the_real_program(cli_broker):
    for argv, codes, name in REAL_PROGRAM:
        result = run_cli(cli_broker, *argv)
        outcome = Outcome(argv, result.returncode, result.stdout, result.stderr)
        codes = codes if isinstance(codes, tuple) else (codes,)
        if codes == (0,):
            assert result.returncode == 0, str(outcome)
            job = json.loads(run_cli(cli_broker, "show", "real-1", "--json").stdout)
            spec = json.loads(argv[1])
            assert {k: job[k] for k in ("queue", "priority", "env", "timeout_sec")} == \
                {k: spec[k] for k in ("queue", "priority", "env", "timeout_sec")}
        elif result.returncode == 0 and 0 in codes:
            assert "Traceback" not in result.stderr, str(outcome)
        else:
            assert_error(outcome, codes, name)
