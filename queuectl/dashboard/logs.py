"""A job's output for the page: byte offsets in, text out, live or finished.

The broker returns raw chunks of the latest attempt after two offsets (stdout,
stderr). This turns them into text for ``<pre>`` elements and into the next
offsets to ask from; while the attempt runs, a UTF-8 character cut between two
reads is held back until its last byte arrives instead of becoming U+FFFD.
"""

from __future__ import annotations

from typing import Any

from .fmt import output
from .source import Source


def complete_length(data: bytes) -> int:
    """How many bytes of ``data`` end on a whole UTF-8 character."""
    size = len(data)
    for back in range(1, min(4, size) + 1):
        byte = data[size - back]
        if byte & 0xC0 == 0x80:  # a continuation byte: look further back
            continue
        need = 1 if byte < 0xC0 else 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
        return size if back >= need or byte >= 0xF8 else size - back
    return size


def read(source: Source, job_id: str, attempt: int | None = None, out: int = 0,
         err: int = 0, token: int | None = None) -> dict[str, Any]:
    """The API document of ``GET /api/jobs/<id>/logs``; ``token`` picks an earlier attempt."""
    result = source.logs(job_id, attempt, out, err, token)
    same = token is not None or (result["attempt"] is not None and result["attempt"] == attempt)
    offsets = [out, err] if same else [0, 0]  # the broker restarts a new attempt at 0
    data = [bytearray(), bytearray()]
    skipped = False
    for stream, offset, chunk in result["chunks"]:
        index = stream - 1
        if offset > offsets[index]:
            skipped = True  # the store dropped older bytes (it keeps the last ones)
        elif offset < offsets[index]:  # overlaps what we have: keep the new part only
            chunk = chunk[offsets[index] - offset:]
            offset = offsets[index]
        data[index] += chunk
        offsets[index] = offset + len(chunk)
    text = []
    for index in (0, 1):
        keep = len(data[index]) if result["done"] else complete_length(bytes(data[index]))
        offsets[index] -= len(data[index]) - keep
        text.append(output(bytes(data[index][:keep]).decode("utf-8", errors="replace")))
    return {"attempt": result["attempt"], "done": bool(result["done"]),
            "state": result["state"], "stdout": text[0], "stderr": text[1],
            "out": offsets[0], "err": offsets[1], "skipped": skipped}
