"""Reading the stats page's HTML in tests, as a browser would see its elements.

A tiny tree built with the standard library's HTML parser, so assertions name
elements by their stable ``data-testid`` / ``data-*`` selectors instead of
matching strings.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
        "track", "wbr"}
CSRF_META = re.compile(r'<meta name="csrf-token" content="([^"]+)">')
# The policy the design fixes: no inline script or style, nothing from another origin.
CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
       "object-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


class Node:
    def __init__(self, tag: str, attrs: dict[str, str | None], parent: Node | None):
        self.tag, self.attrs, self.parent = tag, attrs, parent
        self.children: list[Node | str] = []

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def clean_text(self) -> str:
        return " ".join(self.text().split())

    def matches(self, tag: str | None, attrs: dict[str, object]) -> bool:
        if tag is not None and self.tag != tag:
            return False
        for name, wanted in attrs.items():
            name = name.rstrip("_").replace("_", "-")  # class_ -> class
            if wanted is True:
                if name not in self.attrs:
                    return False
            elif self.attrs.get(name) != wanted:
                return False
        return True

    def find_all(self, tag: str | None = None, **attrs: object) -> list[Node]:
        found = []
        for child in self.children:
            if isinstance(child, Node):
                if child.matches(tag, attrs):
                    found.append(child)
                found += child.find_all(tag, **attrs)
        return found

    def attr(self, name: str) -> str:
        """The value of attribute ``name``, which the element must have."""
        value = self.attrs.get(name)
        assert value is not None, f"<{self.tag}> has no {name}=\"...\""
        return value

    def find(self, tag: str | None = None, **attrs: object) -> Node | None:
        found = self.find_all(tag, **attrs)
        return found[0] if found else None

    def first(self, tag: str | None = None, **attrs: object) -> Node:
        """The first matching element, which must exist."""
        found = self.find(tag, **attrs)
        assert found is not None, f"expected a <{tag or '*'} {attrs}>, found none"
        return found

    def one(self, tag: str | None = None, **attrs: object) -> Node:
        found = self.find_all(tag, **attrs)
        assert len(found) == 1, f"expected one <{tag or '*'} {attrs}>, found {len(found)}"
        return found[0]

    def testid(self, name: str) -> Node:
        return self.one(data_testid=name)


class _Builder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = self.current = Node("#document", {}, None)

    def handle_starttag(self, tag: str, attrs: list) -> None:
        node = Node(tag, dict(attrs), self.current)
        self.current.children.append(node)
        if tag not in VOID:
            self.current = node

    def handle_startendtag(self, tag: str, attrs: list) -> None:
        self.current.children.append(Node(tag, dict(attrs), self.current))

    def handle_endtag(self, tag: str) -> None:
        node: Node | None = self.current
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:
            self.current = node.parent

    def handle_data(self, data: str) -> None:
        self.current.children.append(data)


def parse(html: str) -> Node:
    builder = _Builder()
    builder.feed(html)
    builder.close()
    return builder.root


def csrf_token(client) -> str:
    """The CSRF token a page embeds for its forms (the GET sets the session cookie)."""
    response = client.get("/")
    match = CSRF_META.search(response.get_data(as_text=True))
    assert match, response.get_data(as_text=True)[:500]
    return match.group(1)


def counter(page: Node, name: str) -> int:
    """A counter card's number (its text has thousands separators)."""
    return int(page.testid(name).clean_text().replace(",", ""))


def job_rows(page: Node, table: str = "jobs") -> dict[str, Node]:
    return {row.attr("data-job-id"): row
            for row in page.testid(table).find_all("tr", data_job_id=True)}


def settle(broker, ids: list[str], timeout: float = 30) -> dict[str, dict]:
    """Wait until each job is completed, dead or canceled; returns them by id."""
    with broker.client() as qc:
        return {job_id: qc.wait(job_id, timeout) for job_id in ids}
