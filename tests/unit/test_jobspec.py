"""The job JSON users enqueue: what is accepted, what is rejected, and why."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from queuectl.proto.jobspec import FIELDS, MAX_COMMAND_BYTES, SpecError, validate
from queuectl.proto.timefmt import parse_iso


def job(**fields):
    return {"command": "echo hi", **fields}


def rejected(raw) -> SpecError:
    with pytest.raises(SpecError) as info:
        validate(raw)
    return info.value


def assert_rejects(field, raw):
    error = rejected(raw)
    assert error.field == field
    assert f"'{field}'" in str(error)  # the message names the field


@pytest.fixture
def local_tz(monkeypatch):
    """Run with a non-UTC local time zone (UTC+05:30), restored afterwards."""
    monkeypatch.setenv("TZ", "XST-05:30")
    time.tzset()
    yield dt.timedelta(hours=5, minutes=30)
    monkeypatch.undo()
    time.tzset()


# --- the minimal job and its canonical form -----------------------------------

def test_minimal_job_is_just_a_command():
    assert validate({"command": "true"}) == {"command": "true"}


def test_every_field_at_once():
    spec = {
        "id": "build-42", "command": "make", "priority": -5, "run_at": "2030-01-31T09:00:00Z",
        "timeout_sec": 2.5, "max_retries": 4, "queue": "ci", "env": {"A": "1"},
        "cwd": "/tmp", "requires": {"gpu": "1"},
    }
    assert validate(spec) == {**spec, "run_at": "2030-01-31T09:00:00.000Z"}


def test_validate_does_not_share_maps_with_the_input():
    raw = job(env={"A": "1"})
    spec = validate(raw)
    raw["env"]["A"] = "changed"
    assert spec["env"] == {"A": "1"}


@pytest.mark.parametrize("raw", [None, [], "echo hi", 3, ["command", "x"]])
def test_a_job_must_be_an_object(raw):
    error = rejected(raw)
    assert "object" in str(error)


@pytest.mark.parametrize("name", ["cmd", "retries", "priorty", "timeout", "Command"])
def test_unknown_fields_are_rejected_by_name(name):
    assert_rejects(name, job(**{name: 1}))


# --- id ------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["a", "job-1", "A.b_c:d-9", "x" * 128, "2024-01-01T00:00:00"])
def test_id_accepted(value):
    assert validate(job(id=value))["id"] == value


@pytest.mark.parametrize("value", [
    "", "x" * 129, "has space", "slash/id", "ünïcode", "tab\tid", "new\nline", "trailing\n",
    "\nleading", 7, None, True, ["a"],
])
def test_id_rejected(value):
    assert_rejects("id", job(id=value))


# --- command ---------------------------------------------------------------------

@pytest.mark.parametrize("value", ["true", "  sleep 1  ", "echo 'ü'", "a\nb",
                                   "x" * MAX_COMMAND_BYTES])
def test_command_accepted(value):
    assert validate({"command": value})["command"] == value


@pytest.mark.parametrize("raw", [
    {}, {"command": ""}, {"command": "   "}, {"command": "\n\t"}, {"command": None},
    {"command": 5}, {"command": ["ls"]}, {"command": "echo \0"},
    {"command": "x" * (MAX_COMMAND_BYTES + 1)}, {"command": "ü" * (MAX_COMMAND_BYTES // 2 + 1)},
])
def test_command_rejected(raw):
    assert_rejects("command", raw)


# --- priority --------------------------------------------------------------------

@pytest.mark.parametrize("value", [0, 1, 100, -100, 2**63 - 1, -(2**63)])
def test_priority_accepted(value):
    assert validate(job(priority=value))["priority"] == value


@pytest.mark.parametrize("value", [1.0, 1.5, "1", True, False, None, 2**63, -(2**63) - 1])
def test_priority_rejected(value):
    assert_rejects("priority", job(priority=value))


# --- run_at ------------------------------------------------------------------------

def test_run_at_with_z_is_utc():
    assert validate(job(run_at="2030-01-31T09:00:00Z"))["run_at"] == "2030-01-31T09:00:00.000Z"


def test_run_at_with_offset_is_converted_to_utc():
    assert validate(job(run_at="2030-01-31T09:00:00+02:00"))["run_at"] == "2030-01-31T07:00:00.000Z"
    assert validate(job(run_at="2030-01-31T23:30:00-05:00"))["run_at"] == "2030-02-01T04:30:00.000Z"


def test_run_at_keeps_milliseconds():
    assert validate(job(run_at="2030-01-31T09:00:00.25Z"))["run_at"] == "2030-01-31T09:00:00.250Z"


def test_run_at_without_zone_is_local_time(local_tz):
    # 09:00 in UTC+05:30 is 03:30 UTC
    assert validate(job(run_at="2030-01-31T09:00:00"))["run_at"] == "2030-01-31T03:30:00.000Z"


def test_run_at_with_zone_ignores_local_time(local_tz):
    assert validate(job(run_at="2030-01-31T09:00:00Z"))["run_at"] == "2030-01-31T09:00:00.000Z"


def test_run_at_in_the_past_is_accepted():
    assert validate(job(run_at="2001-01-01T00:00:00Z"))["run_at"] == "2001-01-01T00:00:00.000Z"


def test_run_at_before_year_1000_keeps_a_four_digit_year():
    # the canonical form is validated again by the broker, so it must parse
    spec = validate(job(run_at="0999-06-01T12:00:00Z"))
    assert spec["run_at"] == "0999-06-01T12:00:00.000Z"
    assert validate(spec) == spec


@pytest.mark.parametrize("value", [
    "tomorrow", "", "2030-13-01T00:00:00Z", "2030-01-32", "31/01/2030", "9999-12-31T23:00:00-05:00",
    1_900_000_000, None, True, {"at": "now"},
])
def test_run_at_rejected(value):
    assert_rejects("run_at", job(run_at=value))


# --- delay ---------------------------------------------------------------------------

@pytest.mark.parametrize("value, seconds", [
    (30, 30.0), (0, 0.0), (2.5, 2.5), ("30s", 30.0), ("5m", 300.0), ("2h", 7200.0),
    ("1d", 86400.0), ("250ms", 0.25), ("45", 45.0), (" 10 s ", 10.0), ("1.5m", 90.0),
])
def test_delay_accepted_in_seconds(value, seconds):
    assert validate(job(delay=value))["delay"] == seconds


@pytest.mark.parametrize("value", [
    -1, "-5s", "5 minutes", "5x", "", "s", "1e3", float("nan"), float("inf"), True, None, [5],
    100 * 365 * 86400 + 1, "36501d",
])
def test_delay_rejected(value):
    assert_rejects("delay", job(delay=value))


def test_run_at_and_delay_together_are_rejected():
    error = rejected(job(run_at="2030-01-31T09:00:00Z", delay="5m"))
    assert "run_at" in str(error) and "delay" in str(error)


# --- timeout_sec, max_retries ----------------------------------------------------------

@pytest.mark.parametrize("value", [1, 0.001, 60, 3600.5])
def test_timeout_accepted(value):
    assert validate(job(timeout_sec=value))["timeout_sec"] == value


@pytest.mark.parametrize("value", [0, -1, "60", None, True, float("nan"), float("inf")])
def test_timeout_rejected(value):
    assert_rejects("timeout_sec", job(timeout_sec=value))


@pytest.mark.parametrize("value", [1, 3, 1_000_000])
def test_max_retries_accepted(value):
    assert validate(job(max_retries=value))["max_retries"] == value


@pytest.mark.parametrize("value", [0, -1, 1_000_001, 3.0, "3", True, None])
def test_max_retries_rejected(value):
    assert_rejects("max_retries", job(max_retries=value))


# --- queue, env, cwd, requires ----------------------------------------------------------

# The contract says only "string": any name that prints on one line.
@pytest.mark.parametrize("value", [
    "default", "ci-builds", "q.1:a_b", "two words", "nightly/reports", "ünïcode", "队列", "🎉",
    "x" * 128, "é" * 128, "🎉" * 128, "a'b\"c",
])
def test_queue_accepted(value):
    assert validate(job(queue=value))["queue"] == value


@pytest.mark.parametrize("value", [
    "", "x" * 129, "é" * 129, "q\n", "tab\tq", "\rq", "nul\0", "del\x7f", "c1\x85", "\x1b[31m",
    "lone \ud800", "\udfff", 1, None, True, ["default"], {"name": "q"},
])
def test_queue_rejected(value):
    assert_rejects("queue", job(queue=value))


@pytest.mark.parametrize("value", [{}, {"PATH": "/bin"}, {"A": "", "B": "x=y"}])
def test_env_accepted(value):
    assert validate(job(env=value))["env"] == value


@pytest.mark.parametrize("value", [
    {"A": 1}, {"A": None}, {"": "x"}, {"A=B": "x"}, {"A": "a\0b"}, {"A\0": "x"}, ["A=1"], "A=1",
    None,
])
def test_env_rejected(value):
    assert_rejects("env", job(env=value))


MAX_ARG_BYTES = 131072  # Linux's MAX_ARG_STRLEN: one argv or KEY=VALUE string with its NUL
MAX_EXEC_BYTES = 1 << 20  # what the README promises a job's command and env may take


def sized_env(entry_bytes: list[int], fill: str = "x") -> dict[str, str]:
    """Variables V0, V1, ... whose KEY=VALUE strings, with their NUL, take these bytes."""
    return {f"V{n}": fill * ((size - len(f"V{n}") - 2) // len(fill.encode()))
            for n, size in enumerate(entry_bytes)}


def test_one_variable_may_take_what_exec_takes_in_one_string():
    assert validate(job(env=sized_env([MAX_ARG_BYTES])))  # 131071 bytes and the NUL
    error = rejected(job(env=sized_env([MAX_ARG_BYTES + 1])))
    assert error.field == "env" and "131071" in str(error) and "'V0'" in str(error)
    # bytes, not characters: 65,535 two-byte characters are too many
    assert rejected(job(env=sized_env([MAX_ARG_BYTES + 2], fill="\u00e9"))).field == "env"
    # a 1 MB value, the case that used to fail every attempt with "Argument list too long"
    assert rejected(job(env={"BIG": "x" * 1_000_000})).field == "env"


def test_command_and_environment_together_take_at_most_1_mib():
    command = "true"  # 5 bytes with its NUL
    fits = [MAX_ARG_BYTES] * 7 + [MAX_EXEC_BYTES - 7 * MAX_ARG_BYTES - 5]
    assert validate({"command": command, "env": sized_env(fits)})
    fits[-1] += 1
    error = rejected({"command": command, "env": sized_env(fits)})
    assert error.field == "env" and f"{MAX_EXEC_BYTES + 1} bytes" in str(error)
    assert "1048576 (1 MiB)" in str(error)
    # the command counts too
    long_command = "x" * MAX_COMMAND_BYTES  # with its NUL, 1/8 MiB
    assert validate({"command": long_command, "env": sized_env([MAX_ARG_BYTES] * 7)})
    env = sized_env([MAX_ARG_BYTES] * 7 + [5])
    assert rejected({"command": long_command, "env": env}).field == "env"


def test_an_over_long_command_names_its_size_and_the_limit():
    error = rejected({"command": "x" * (MAX_COMMAND_BYTES + 1)})
    assert error.field == "command" and "131072 bytes" in str(error) and "131071" in str(error)


@pytest.mark.parametrize("value", ["/tmp", "relative/dir", "."])
def test_cwd_accepted(value):
    assert validate(job(cwd=value))["cwd"] == value


@pytest.mark.parametrize("value", ["", None, 1, "/tmp\0x", ["/tmp"]])
def test_cwd_rejected(value):
    assert_rejects("cwd", job(cwd=value))


@pytest.mark.parametrize("value", [{}, {"gpu": "1"}, {"zone": "eu-1", "arch": "arm64"}])
def test_requires_accepted(value):
    assert validate(job(requires=value))["requires"] == value


@pytest.mark.parametrize("value", [{"gpu": 1}, {"gpu": True}, {"": "1"}, ["gpu"], "gpu=1", None])
def test_requires_rejected(value):
    assert_rejects("requires", job(requires=value))


# --- the compatibility fields --------------------------------------------------------------

def test_the_job_format_users_already_write_is_accepted():
    raw = {"id": "job1", "command": "sleep 2", "state": "pending", "attempts": 0, "max_retries": 3,
           "created_at": "2025-11-04T10:30:00Z", "updated_at": "2025-11-04T10:30:00Z"}
    assert validate(raw) == {"id": "job1", "command": "sleep 2", "max_retries": 3}


@pytest.mark.parametrize("value", ["processing", "completed", "failed", "dead", "canceled",
                                   "PENDING", "", None, 0])
def test_state_other_than_pending_is_rejected(value):
    assert_rejects("state", job(state=value))


@pytest.mark.parametrize("value", [1, 3, -1, 0.0, False, "0", None])
def test_attempts_other_than_zero_is_rejected(value):
    assert_rejects("attempts", job(attempts=value))


@pytest.mark.parametrize("value", ["2025-11-04T10:30:00Z", "not a date", 12345, None, {"x": 1}])
def test_created_and_updated_at_are_ignored_whatever_they_hold(value):
    assert validate(job(created_at=value, updated_at=value)) == job()


# --- idempotence ------------------------------------------------------------------------------

# None among them (a naive moment), which st.datetimes' overloads do not foresee:
# so the strategy is typed Any.
OFFSETS: st.SearchStrategy[Any] = st.sampled_from(
    [None, dt.UTC, dt.timezone(dt.timedelta(hours=5, minutes=30)),
     dt.timezone(dt.timedelta(hours=-8))])
NAME = st.from_regex(r"\A[A-Za-z0-9._:-]{1,20}\Z")
TEXT = st.text(st.characters(blacklist_characters="\0"), max_size=10)


def naive(year: int, month: int, day: int) -> dt.datetime:
    """A bound for st.datetimes, which takes naive ones (timezones= gives the zone)."""
    return dt.datetime(year, month, day)  # noqa: DTZ001 - naive on purpose, see above


@st.composite
def run_at_strings(draw):
    if draw(st.booleans()):
        # Any year, whole seconds. (Far from 1970 an epoch float cannot hold
        # milliseconds exactly, so sub-second values are drawn only below.)
        moment = draw(st.datetimes(min_value=naive(1, 1, 2), max_value=naive(9999, 12, 30),
                                   timezones=OFFSETS)).replace(microsecond=0)
    else:
        moment = draw(st.datetimes(min_value=naive(1902, 1, 1), max_value=naive(2100, 1, 1),
                                   timezones=OFFSETS))
    text = moment.isoformat()
    if text.endswith("+00:00") and draw(st.booleans()):
        text = text[:-6] + "Z"
    return text


JOB_FIELDS = {
    "id": NAME,
    "priority": st.integers(-(2**63), 2**63 - 1),
    "run_at": run_at_strings(),
    "delay": st.one_of(st.integers(0, 10**6), st.floats(0, 10**6),
                       st.builds(lambda n, u: f"{n}{u}", st.integers(0, 1000),
                                 st.sampled_from(["", "ms", "s", "m", "h", "d"]))),
    "timeout_sec": st.floats(0.001, 1e6),
    "max_retries": st.integers(1, 1_000_000),
    "queue": NAME,
    "env": st.dictionaries(st.from_regex(r"\A[A-Z_]{1,8}\Z"), TEXT, max_size=3),
    "cwd": TEXT.filter(bool),
    "requires": st.dictionaries(TEXT.filter(bool), TEXT, max_size=3),
    "state": st.just("pending"),
    "attempts": st.just(0),
    "created_at": TEXT,
}


@st.composite
def raw_jobs(draw):
    names = draw(st.sets(st.sampled_from(sorted(JOB_FIELDS))))
    if "run_at" in names and "delay" in names:
        names.discard(draw(st.sampled_from(["run_at", "delay"])))
    raw = {name: draw(JOB_FIELDS[name]) for name in sorted(names)}
    raw["command"] = draw(TEXT.filter(str.strip))
    return raw


@settings(max_examples=300, deadline=None)
@given(raw=raw_jobs())
def test_validate_is_idempotent(raw):
    try:
        once = validate(raw)
    except SpecError:
        assume(False)  # e.g. a run_at that falls outside the representable years in UTC
    assert validate(once) == once
    assert set(once) <= set(FIELDS)


@settings(max_examples=200, deadline=None)
@given(text=run_at_strings())
def test_canonical_run_at_is_the_same_instant(text):
    try:
        canonical = validate(job(run_at=text))["run_at"]
    except SpecError:
        assume(False)
    assert canonical.endswith("Z")
    assert abs(parse_iso(canonical) - parse_iso(text)) < 0.002  # truncated to milliseconds
