"""How QueueCTL's processes log: one format, and no line a peer can forge.

Log messages quote what peers sent (a result's detail, a job id, a reason)
and reach a terminal (`queuectl up`, a foreground broker or agent) or a
journal. ``SafeFormatter`` writes the control characters of every message as
visible escapes, so such text can neither drive the terminal nor start a
line that looks like another log record. A traceback, which the formatter
adds after the message, keeps its lines.
"""

from __future__ import annotations

import logging
import sys

from queuectl.escape import visible

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class SafeFormatter(logging.Formatter):
    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = visible(record.message)
        return super().formatMessage(record)


def configure(level: str | int, fmt: str = FORMAT) -> None:
    """Log to stderr at ``level``, every message made safe (as logging.basicConfig)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(SafeFormatter(fmt))
    logging.basicConfig(level=level, handlers=[handler])
