"""Log lines quote what peers sent; no such text drives a terminal or forges a line."""

from __future__ import annotations

import logging

from queuectl.logsetup import FORMAT, SafeFormatter

HOSTILE = "x\x1b]0;TITLE\x07\x1b[2J\nERROR queuectl.broker: forged\x9b31m"


def record(msg: str, *args, exc_info=None) -> logging.LogRecord:
    return logging.LogRecord("queuectl.broker", logging.WARNING, __file__, 1, msg, args, exc_info)


def test_a_message_with_peer_text_is_one_line_without_control_characters():
    line = SafeFormatter(FORMAT).format(record("stale result for attempt %d (%s)", 7, HOSTILE))
    assert "\n" not in line and "\x1b" not in line and "\x07" not in line and "\x9b" not in line
    assert line.endswith("(x\\x1b]0;TITLE\\x07\\x1b[2J\\nERROR queuectl.broker: forged\\x9b31m)")


def test_a_traceback_keeps_its_lines():
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        line = SafeFormatter(FORMAT).format(record("bug while handling %s", "x\ny",
                                                   exc_info=sys.exc_info()))
    first, *rest = line.split("\n")
    assert first.endswith("bug while handling x\\ny")
    assert rest[0] == "Traceback (most recent call last):" and rest[-1] == "ValueError: boom"
