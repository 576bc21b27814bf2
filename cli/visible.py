"""Text for a terminal, in the CLI: control characters written as visible escapes.

Every human-readable line the CLI prints goes through ``visible``
(``queuectl/escape.py``); ``--json`` output is already safe (``json.dumps``
escapes every control character).

``LogFilter`` is the policy for ``logs`` on a terminal: colours (SGR,
``ESC[...m``), newlines, tabs and CRLF pass, everything else is escaped.
This module imports only ``re`` and ``codecs``: the fast enqueue path uses it.
"""

from __future__ import annotations

import codecs
import re

from queuectl.escape import escape_char as _escape
from queuectl.escape import visible

__all__ = ["LogFilter", "visible"]

# In job output: an SGR sequence, CRLF, newline and tab pass; other controls do not.
_LOG_TOKEN = re.compile("(\x1b\\[[0-9;:]*m|\r\n|[\n\t])|[\x00-\x1f\x7f-\x9f]")
# The end of a chunk that may be the start of a sequence that passes.
_UNFINISHED = re.compile("(\x1b(\\[[0-9;:]{0,64})?|\r)\\Z")


def _log_token(match: re.Match[str]) -> str:
    return match.group(1) or _escape(match.group())


class LogFilter:
    """Job output bytes in, terminal-safe bytes out, across chunk boundaries.

    Bytes that are not UTF-8 are shown as ``\\xff``; a character or an SGR
    sequence cut between two chunks is held until the next one.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="backslashreplace")
        self._held = ""

    def feed(self, data: bytes) -> bytes:
        text = self._held + self._decoder.decode(data)
        unfinished = _UNFINISHED.search(text)
        cut = unfinished.start() if unfinished else len(text)
        self._held = text[cut:]
        return _LOG_TOKEN.sub(_log_token, text[:cut]).encode("utf-8")

    def flush(self) -> bytes:
        """Whatever is held (the output ended, or bytes were skipped)."""
        text = self._held + self._decoder.decode(b"", final=True)
        self._held = ""
        self._decoder.reset()
        return _LOG_TOKEN.sub(_log_token, text).encode("utf-8")
