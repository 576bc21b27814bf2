"""docs/DECISIONS.md cites code by line; each citation must still hold its text."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CITATION = re.compile(r"`([\w/.]+\.(?:py|js)):(\d+)` \(`([^`]+)`\)")


def test_every_cited_line_still_holds_the_cited_code():
    text = (ROOT / "docs" / "DECISIONS.md").read_text()
    citations = CITATION.findall(text)
    assert len(citations) >= 20
    stale = []
    for path, line, snippet in citations:
        lines = (ROOT / path).read_text().splitlines()
        number = int(line)
        if number > len(lines) or snippet not in lines[number - 1]:
            stale.append(f"{path}:{line} does not contain {snippet!r}")
    assert stale == []
