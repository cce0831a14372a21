"""What a written figure or page must be: a real PNG or SVG, a self-contained HTML page."""

from __future__ import annotations

import re
import struct
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EXTERNAL = re.compile(r"(https?:)?//", re.I)


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from the IHDR chunk, after checking the signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR", path
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def svg_root(path: Path) -> ET.Element:
    root = ET.parse(path).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    return root


class PageParser(HTMLParser):
    """Collects tags, the attributes that load things, inline scripts and the text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.loads: list[tuple[str, str, str]] = []  # (tag, attribute, value)
        self.text: list[str] = []
        self.scripts_with_src = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        for name, value in attrs:
            if name in ("src", "href", "xlink:href", "action", "data", "poster") and value:
                self.loads.append((tag, name, value))
            if tag == "script" and name == "src":
                self.scripts_with_src += 1

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse_page(path: Path) -> PageParser:
    """The page parsed; it references nothing outside itself."""
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    parser = PageParser()
    parser.feed(text)
    parser.close()
    assert parser.scripts_with_src == 0 and "link" not in parser.tags and "@import" not in text
    assert not EXTERNAL.search(text), EXTERNAL.search(text)
    # the only references are to the page's own elements (SVG <use href="#...">)
    assert all(value.startswith("#") for _, _, value in parser.loads), parser.loads
    return parser
