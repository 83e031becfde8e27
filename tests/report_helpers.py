"""Reading ``psy report`` pages in tests: a parser that sees what a browser would build."""

from __future__ import annotations

import base64
import struct
from html.parser import HTMLParser

__all__ = ["REPORT_TAGS", "Page", "png_size"]

#: The tags a report may hold; anything else came from a name or a value.
REPORT_TAGS = {
    "html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "p", "code",
    "table", "tr", "th", "td", "span", "ul", "li", "figure", "img", "figcaption", "div",
    "strong",
}  # fmt: skip


class Page(HTMLParser):
    """A parsed report: its tags, text per section, tables, images and captions."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.sections: dict[str, list[str]] = {}
        self.section = "top"
        self.images: list[dict] = []
        self.captions: list[str] = []
        self.tables: list[list[list[str]]] = []
        self._in: list[str] = []
        self._cell: list[str] | None = None
        self._text: list[str] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        self._in.append(tag)
        if tag == "img":
            self.images.append(attrs)
        if tag == "table":
            self.tables.append([])
        if tag == "tr" and self.tables:
            self.tables[-1].append([])
        if tag in ("td", "th"):
            self._cell = []
        if tag in ("h2", "figcaption"):
            self._text = []

    def handle_endtag(self, tag):
        if self._in and self._in[-1] == tag:
            self._in.pop()
        if tag in ("td", "th") and self._cell is not None and self.tables:
            self.tables[-1][-1].append("".join(self._cell))
            self._cell = None
        if tag == "h2":
            self.section = "".join(self._text)
            self.sections[self.section] = []
        if tag == "figcaption":
            self.captions.append("".join(self._text))

    def handle_data(self, data):
        self._text.append(data)
        if self._cell is not None:
            self._cell.append(data)
        if self._in and self._in[-1] in ("style", "title"):
            return
        self.sections.setdefault(self.section, []).append(data)

    def text(self, section: str) -> str:
        return " ".join(" ".join(self.sections.get(section, [])).split())

    def table(self, first_cell: str) -> dict[str, str]:
        """The two-column table whose first row starts with `first_cell`, as a dict."""
        for table in self.tables:
            if table and table[0] and table[0][0] == first_cell:
                return {row[0]: row[1] for row in table if len(row) >= 2}
        raise AssertionError(f"no table starting with {first_cell!r}")

    def rows_table(self) -> list[list[str]]:
        for table in self.tables:
            if table and table[0] and table[0][0] == "#":
                return table
        raise AssertionError("no table of first rows")


def png_size(image: dict) -> tuple[int, int]:
    """Width and height of an inline PNG image (checks the data URI and the signature)."""
    src = image["src"]
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix), src[:40]
    data = base64.b64decode(src[len(prefix) :], validate=True)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])
