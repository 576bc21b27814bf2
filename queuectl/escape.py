"""Text for terminals: control characters written as visible escapes.

Ids, commands, labels, errors and job output come from users and from peers.
Written raw, an ESC or a C1 control starts a terminal sequence (a window
title, an OSC 52 clipboard write, a cursor move over earlier lines) and a
newline starts what looks like another line of a table or a log. ``visible``
writes them as ``\\x1b``, ``\\n``, ``\\x9b``. The CLI prints every
human-readable line through it (``cli/visible.py``), and every process logs
through ``SafeFormatter`` (``queuectl/logsetup.py``). Imports only ``re``:
the fast enqueue path uses it.
"""

from __future__ import annotations

import re

# What a terminal obeys rather than shows: C0, DEL and C1 controls, line and
# paragraph separators, and bidirectional-text controls (they reorder what is
# shown: "Trojan Source"); and lone surrogates (argv bytes that were not UTF-8).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e"
                      "\u2066-\u2069\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape_char(char: str) -> str:
    code = ord(char)
    return _NAMED.get(char) or (f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}")


def has_control(text: str) -> bool:
    return _CONTROL.search(text) is not None


def visible(text: str) -> str:
    """``text`` on one line, with every control character shown as ``\\x1b``, ``\\n``, ..."""
    return _CONTROL.sub(lambda match: escape_char(match.group()), text)
