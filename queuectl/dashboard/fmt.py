"""How the stats page writes values for people: numbers, durations, ages, hostile text.

Every function returns plain text; Jinja's autoescape turns it into HTML. They
are registered as template filters by ``app.py``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

from queuectl.proto.timefmt import parse_iso

DASH = "\u2014"
# C0 controls (but tab and newline), DEL, C1 controls, and the bidirectional
# overrides/isolates that can make a command read differently from what runs.
_INVISIBLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def number(value: Any) -> str:
    """``1234567`` -> ``1,234,567``; None -> a dash."""
    if value is None:
        return DASH
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.2f}"
    return f"{int(value):,}"


def duration(seconds: Any) -> str:
    """``0.034`` -> ``34 ms``, ``1.24`` -> ``1.2 s``, ``184`` -> ``3 m 4 s``,
    ``7500`` -> ``2 h 5 m``."""
    if seconds is None:
        return DASH
    seconds = max(0.0, float(seconds))
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    whole = round(seconds)
    if whole < 3600:
        return _pair(whole // 60, "m", whole % 60, "s")
    if whole < 86400:
        return _pair(whole // 3600, "h", whole % 3600 // 60, "m")
    return _pair(whole // 86400, "d", whole % 86400 // 3600, "h")


def _pair(big: int, big_unit: str, small: int, small_unit: str) -> str:
    return f"{big} {big_unit} {small} {small_unit}" if small else f"{big} {big_unit}"


def _short_span(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} m"
    if seconds < 86400:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} d"


def ago(iso: str | None, now: float | None = None) -> str:
    """An ISO timestamp -> ``12 s ago`` (or ``in 5 m`` for the future); None -> a dash."""
    if not iso:
        return DASH
    try:
        moment = parse_iso(iso)
    except ValueError:
        return iso
    delta = (time.time() if now is None else now) - moment
    if -1 < delta < 1:
        return "just now"
    return f"{_short_span(delta)} ago" if delta > 0 else f"in {_short_span(-delta)}"


def visible(text: Any, oneline: bool = False) -> str:
    """Show invisible and direction-changing characters as ``\\u202e`` escapes, so a
    hostile value cannot hide or reorder what is displayed; ``oneline`` also folds
    newlines and tabs for a table cell."""
    if text is None:
        return ""
    shown = _INVISIBLE.sub(lambda m: f"\\u{ord(m.group()):04x}", str(text))
    if oneline:
        shown = shown.replace("\n", " \u23ce ").replace("\t", " ")
    return shown


def output(text: str) -> str:
    """Job output for a ``<pre>``: CRLF becomes LF, other controls become escapes."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return _INVISIBLE.sub(lambda m: "" if m.group() == "\x1b" else f"\\u{ord(m.group()):04x}",
                          _ANSI.sub("", text))


_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")  # colour and cursor sequences


def clip(text: Any, limit: int = 60) -> str:
    """One line of at most ``limit`` characters (an ellipsis marks the cut)."""
    shown = visible(text, oneline=True)
    return shown if len(shown) <= limit else shown[:limit - 1] + "\u2026"


def tip(text: Any, limit: int = 1000) -> str:
    """A hover title: the value, visible, cut at ``limit`` characters. Tables
    refresh every 2 s, so a 100 KiB command must not ride along in every row."""
    shown = visible(text)
    return shown if len(shown) <= limit else shown[:limit - 1] + "\u2026"


def labels(mapping: dict[str, str] | None) -> list[str]:
    """``{"gpu": "1"}`` -> ``["gpu=1"]``, sorted, for chips."""
    return [f"{visible(k, True)}={visible(v, True)}" for k, v in sorted((mapping or {}).items())]


FILTERS: dict[str, Callable[..., str | list[str]]] = {
    "number": number, "duration": duration, "ago": ago, "visible": visible,
    "clip": clip, "tip": tip, "labels": labels}
