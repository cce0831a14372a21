"""The ``--html`` page on its own: escaping, sort values a browser can read, no reference out."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ckpttools.formats.registry import open_checkpoint
from ckpttools.ops.inspect import inspect_checkpoint
from ckpttools.render.html import inline_svg, inspect_html
from ckpttools.render.plots.inspect import plot_inspect
from tests.render._checks import parse_page

NUMBER = re.compile(r"^-?(\d+(\.\d*)?(e[-+]?\d+)?|Infinity)$")


def test_nonfinite_stats_and_hostile_keys(tmp_path: Path) -> None:
    state = {"<script>alert(1)</script>.weight": torch.tensor([1.0, float("nan"), float("inf")]),
             "ok.bias": torch.tensor([float("-inf"), 2.0]), "zeros": torch.zeros(3)}
    torch.save(state, tmp_path / "odd.pt")
    with open_checkpoint(str(tmp_path / "odd.pt")) as reader:
        result = inspect_checkpoint(reader, with_stats=True)
    page = tmp_path / "odd.html"
    page.write_text(inspect_html(result, "ckpttools inspect odd.pt --stats --html odd.html",
                                 plot_inspect(result, "svg")))
    parsed = parse_page(page)
    text = page.read_text()
    assert "<script>alert" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;.weight" in text
    assert parsed.tags.count("script") == 1  # the page's own sort script only
    values = re.findall(r'data-v="([^"]*)"', text)
    assert values and all(NUMBER.match(v) for v in values), values


def test_inline_svg_drops_what_names_urls() -> None:
    svg = ('<?xml version="1.0"?>\n<!DOCTYPE svg PUBLIC "-//W3C//DTD SVG 1.1//EN" '
           '"http://www.w3.org/Graphics/SVG/1.1/DTD/svg11.dtd">\n<svg xmlns:xlink="http://www.w3.org/1999/xlink" '
           'xmlns="http://www.w3.org/2000/svg"><metadata><rdf:RDF xmlns:dc="http://purl.org/dc/elements/1.1/">'
           '</rdf:RDF></metadata><use xlink:href="#a"/></svg>')
    assert inline_svg(svg) == '<svg><use xlink:href="#a"/></svg>'
