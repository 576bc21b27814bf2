"""Render the fault suite's FAULT-REPORT lines as the table in docs/RELIABILITY.md.

    QUEUECTL_FAULT_REPORT=/tmp/faults.jsonl .venv/bin/python -m pytest tests/faults
    .venv/bin/python tests/faults/table.py /tmp/faults.jsonl
"""

from __future__ import annotations

import json
import sys

COLUMNS = ("scenario", "injected", "jobs in", "completed", "lost", "overlapping",
           "executions", "recovery (s)")


def rows(path: str) -> list[dict]:
    found = []
    with open(path) as handle:
        for line in handle:
            if line.startswith("FAULT-REPORT "):
                found.append(json.loads(line[len("FAULT-REPORT "):]))
    return found


def render(reports: list[dict]) -> str:
    out = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in reports:
        recovery = "n/a" if r.get("recovery_sec") is None else f"{r['recovery_sec']:g}"
        cells = (r["scenario"], r["injected"], r["jobs_in"], r["completed"], r["lost"],
                 r["overlapping"], r["executions"], recovery)
        out.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    return "\n".join(out)


if __name__ == "__main__":
    print(render(rows(sys.argv[1])))
