"""Timestamps on the wire and in output: ISO-8601 UTC strings ending in ``Z``."""

from __future__ import annotations

import datetime as _dt
import re

_UTC = _dt.UTC
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def to_iso(epoch: float | None) -> str | None:
    """Epoch seconds -> ``2026-01-02T03:04:05.678Z`` (None stays None). A value
    that is no time a reader can show (inf, NaN, beyond year 9999) is None too:
    a read must never fail on what the store holds."""
    if epoch is None:
        return None
    try:
        moment = _dt.datetime.fromtimestamp(epoch, _UTC)
    except (OverflowError, ValueError, OSError):
        return None
    # isoformat, not strftime("%Y"): glibc does not zero-pad years before 1000
    return moment.replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


def parse_iso(text: str) -> float:
    """ISO-8601 -> epoch seconds. ``Z`` or an offset is honoured; no zone means local time.

    Raises ValueError with a short reason.
    """
    try:
        moment = _dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is not an ISO-8601 timestamp (e.g. 2030-01-31T09:00:00Z)") from None
    if moment.tzinfo is None:
        moment = moment.astimezone()  # naive: the local time of whoever wrote it
    return moment.timestamp()


def parse_duration(value: object) -> float:
    """``30``, ``2.5``, ``"30s"``, ``"5m"``, ``"2h"``, ``"1d"``, ``"250ms"`` -> seconds."""
    if isinstance(value, bool):
        raise ValueError("expected seconds or a string like '30s', '5m', '2h'")
    if isinstance(value, (int, float)):
        try:
            seconds = float(value)
        except OverflowError:
            raise ValueError("is out of range") from None
    elif isinstance(value, str):
        match = _DURATION.match(value)
        if not match:
            raise ValueError(f"{value!r} is not a duration (use seconds or e.g. '30s', '5m', '2h')")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    else:
        raise ValueError("expected seconds or a string like '30s', '5m', '2h'")
    if seconds != seconds or seconds < 0 or seconds == float("inf"):
        raise ValueError("must be a finite number of seconds, zero or more")
    return seconds
