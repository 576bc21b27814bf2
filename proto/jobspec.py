"""The job JSON that users enqueue: validation and its canonical form.

``validate`` is used by the client (so mistakes are reported before any
network traffic) and again by the broker (which trusts no peer). It is
idempotent: ``validate(validate(x)) == validate(x)``. In the canonical form
``run_at`` is a UTC ISO string, resolved on the client side, because a
timestamp without a zone means the local time of the person who wrote it;
``delay`` is seconds and is resolved by the broker's clock.
"""

from __future__ import annotations

import math
import re
import unicodedata
from typing import Any

from .timefmt import parse_duration, parse_iso, to_iso

ID_PATTERN = re.compile(r"^[A-Za-z0-9._:-]{1,128}\Z")  # \Z: "$" would allow a trailing newline
MAX_QUEUE_CHARS = 128
# What the agent can exec (/bin/sh -c COMMAND, with the job's env): Linux refuses
# one argument or KEY=VALUE string over MAX_ARG_STRLEN (128 KiB with its NUL),
# and all of them together over a quarter of the stack limit (2 MiB with the usual
# 8 MiB). A job may take half of that; the rest is the agent's own environment.
MAX_ARG_BYTES = 131072
MAX_COMMAND_BYTES = MAX_ARG_BYTES - 1
MAX_EXEC_BYTES = 1 << 20
INT64 = (-(2**63), 2**63 - 1)

FIELDS = (
    "id", "command", "priority", "run_at", "delay", "timeout_sec", "max_retries",
    "queue", "env", "cwd", "requires",
)
# Fields of the job format users already write; the queue sets them itself.
COMPAT_FIELDS = ("state", "attempts", "created_at", "updated_at")
_KNOWN = frozenset(FIELDS + COMPAT_FIELDS)


class SpecError(ValueError):
    """An invalid job; the message names the field."""

    def __init__(self, field: str | None, reason: str):
        self.field = field
        super().__init__(f"field '{field}': {reason}" if field else reason)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return -2**63 <= value < 2**63
    return isinstance(value, float) and math.isfinite(value)


def _type_name(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean",
             type(None): "null", int: "integer", float: "number"}
    return names.get(type(value), type(value).__name__)


def _check_text(field: str, value: str) -> int:
    """Strings travel as UTF-8; a lone surrogate ("\\ud800") cannot. Returns the
    length in bytes (ASCII, the usual case, needs no encoding to know it)."""
    if value.isascii():
        size = len(value)
    else:
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError:
            raise SpecError(field,
                            "is not valid Unicode text (it holds a lone surrogate)") from None
    if "\0" in value:
        raise SpecError(field, "must not contain a NUL byte")
    return size


def queue_name(value: Any, field: str = "queue") -> str:
    """A queue is any name people choose (the contract says "string"), but one
    that prints on one line: 1-128 characters, no control characters."""
    if not isinstance(value, str):
        raise SpecError(field, f"expected a string, got {_type_name(value)}")
    if not value or len(value) > MAX_QUEUE_CHARS:
        raise SpecError(field, f"must be 1-{MAX_QUEUE_CHARS} characters long")
    _check_text(field, value)
    if any(unicodedata.category(char) == "Cc" for char in value):
        raise SpecError(field, "must not contain control characters (newline, tab, ...)")
    return value


def _string_map(field: str, value: Any, *, exec_room: int | None = None) -> dict[str, str]:
    """An object of strings. With ``exec_room`` (the bytes the command leaves of
    MAX_EXEC_BYTES) it is an environment that exec must take: no '=' in a name,
    no KEY=VALUE over MAX_ARG_BYTES, and no more than ``exec_room`` in all."""
    if not isinstance(value, dict):
        raise SpecError(field, f"expected an object of strings, got {_type_name(value)}")
    for key, item in value.items():
        if not isinstance(key, str) or not key:
            raise SpecError(field, "keys must be non-empty strings")
        if not isinstance(item, str):
            raise SpecError(field, f"value of {key!r} must be a string, got {_type_name(item)}")
        size = _check_text(field, key) + _check_text(field, item) + 2  # KEY=VALUE and its NUL
        if exec_room is not None:
            if "=" in key:
                raise SpecError(field, f"variable name {key!r} contains '='")
            if size > MAX_ARG_BYTES:
                raise SpecError(field, f"{key[:40]!r} is {size - 1} bytes as KEY=VALUE; one "
                                       f"variable may take at most {MAX_ARG_BYTES - 1} bytes")
            exec_room -= size
    if exec_room is not None and exec_room < 0:
        raise SpecError(field, f"the command and its environment take {MAX_EXEC_BYTES - exec_room}"
                               f" bytes; at most {MAX_EXEC_BYTES} (1 MiB) can be passed to a job")
    return dict(value)


def _check_compat(raw: dict[str, Any]) -> None:
    if "state" in raw and raw["state"] != "pending":
        raise SpecError("state", "only 'pending' is accepted; the queue sets the state")
    if "attempts" in raw and not (_is_int(raw["attempts"]) and raw["attempts"] == 0):
        raise SpecError("attempts", "only 0 is accepted; the queue counts attempts")


def validate(raw: Any) -> dict[str, Any]:
    """Check a job object and return its canonical form. Raises SpecError."""
    if not isinstance(raw, dict):
        raise SpecError(None, f"a job must be a JSON object, got {_type_name(raw)}")
    if not _KNOWN.issuperset(raw):
        unknown = next(key for key in raw if key not in _KNOWN)  # the first, as written
        raise SpecError(repr(str(unknown)[:64])[1:-1], "unknown field")
    if "state" in raw or "attempts" in raw:
        _check_compat(raw)
    spec: dict[str, Any] = {}

    if "id" in raw:
        if not isinstance(raw["id"], str) or not ID_PATTERN.match(raw["id"]):
            raise SpecError("id", "must be 1-128 characters of A-Z a-z 0-9 . _ : -")
        spec["id"] = raw["id"]

    command = raw.get("command")
    if "command" not in raw:
        raise SpecError("command", "is required")
    if not isinstance(command, str):
        raise SpecError("command", f"expected a string, got {_type_name(command)}")
    if not command or command.isspace():
        raise SpecError("command", "must not be empty")
    try:
        encoded = command.encode("utf-8")
    except UnicodeEncodeError:
        _check_text("command", command)  # raises the message for a lone surrogate
    if b"\0" in encoded:
        raise SpecError("command", "must not contain a NUL byte")
    if len(encoded) > MAX_COMMAND_BYTES:
        raise SpecError("command", f"is {len(encoded)} bytes; at most {MAX_COMMAND_BYTES} bytes "
                                   "fit in one argument of a command")
    spec["command"] = command

    if "priority" in raw:
        if not _is_int(raw["priority"]):
            raise SpecError("priority", f"expected an integer, got {_type_name(raw['priority'])}")
        if not INT64[0] <= raw["priority"] <= INT64[1]:
            raise SpecError("priority", "is out of the 64-bit integer range")
        spec["priority"] = raw["priority"]

    if "run_at" in raw and "delay" in raw:
        raise SpecError("delay", "give either run_at or delay, not both")
    if "run_at" in raw:
        if not isinstance(raw["run_at"], str):
            raise SpecError("run_at",
                            f"expected an ISO-8601 string, got {_type_name(raw['run_at'])}")
        try:
            run_at = to_iso(parse_iso(raw["run_at"]))
        except (ValueError, OverflowError, OSError) as exc:
            raise SpecError("run_at", str(exc)) from None
        if run_at is None:
            raise SpecError("run_at", f"{raw['run_at'][:40]!r} is past the year 9999 in UTC")
        spec["run_at"] = run_at
    if "delay" in raw:
        try:
            spec["delay"] = parse_duration(raw["delay"])
        except ValueError as exc:
            raise SpecError("delay", str(exc)) from None
        if spec["delay"] > 100 * 365 * 86400:
            raise SpecError("delay", "is more than 100 years")

    if "timeout_sec" in raw:
        value = raw["timeout_sec"]
        if not _is_number(value) or value <= 0:
            raise SpecError("timeout_sec", "must be a number greater than 0")
        spec["timeout_sec"] = value

    if "max_retries" in raw:
        value = raw["max_retries"]
        if not _is_int(value):
            raise SpecError("max_retries", f"expected an integer, got {_type_name(value)}")
        if not 1 <= value <= 1_000_000:
            raise SpecError("max_retries", "must be an integer from 1 to 1000000")
        spec["max_retries"] = value

    if "queue" in raw:
        spec["queue"] = queue_name(raw["queue"])

    if "env" in raw:
        # the command and every KEY=VALUE count with their NUL bytes, as the kernel counts
        spec["env"] = _string_map("env", raw["env"], exec_room=MAX_EXEC_BYTES - len(encoded) - 1)
    if "cwd" in raw:
        value = raw["cwd"]
        if not isinstance(value, str) or not value:
            raise SpecError("cwd", "must be a non-empty path")
        _check_text("cwd", value)
        spec["cwd"] = value
    if "requires" in raw:
        spec["requires"] = _string_map("requires", raw["requires"])
    return spec
