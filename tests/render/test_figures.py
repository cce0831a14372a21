"""Every figure drawn from real checkpoints: PNG and SVG files that are what they say."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ckpttools.formats.registry import open_checkpoint
from ckpttools.ops.diff.pair import diff_checkpoints
from ckpttools.ops.inspect import inspect_checkpoint
from ckpttools.ops.resume.verify import verify_resume
from ckpttools.render.plots import figure_format
from ckpttools.render.plots.diff import change_rows, plot_diff
from ckpttools.render.plots.inspect import plot_inspect
from ckpttools.render.plots.resume import plot_resume
from ckpttools.errors import InvalidArgumentError
from tests.ops.resume.test_verify import example, variant
from tests.render._checks import png_size, svg_root
from tests.render._real import TRAINED, tuned_pair


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def check_both(tmp_path: Path, name: str, draw: object) -> None:
    png = write(tmp_path, f"{name}.png", draw("png"))  # type: ignore[operator]
    width, height = png_size(png)
    assert 600 <= width <= 1200 and 300 <= height <= 900
    assert 5_000 < png.stat().st_size < 200_000
    svg = write(tmp_path, f"{name}.svg", draw("svg"))  # type: ignore[operator]
    root = svg_root(svg)
    assert len(list(root.iter())) > 50  # drawn, not an empty canvas
    assert draw("svg") == svg.read_bytes()  # reproducible: no date, fixed ids  # type: ignore[operator]


def test_layer_change_chart(tmp_path: Path) -> None:
    path_a, path_b, a, _ = tuned_pair(tmp_path)
    # one tensor dropped from B and one added, as a fine-tune that reshaped the head would
    from safetensors.torch import load_file, save_file

    b = load_file(str(path_b))
    del b["norm.bias"]
    b["extra.scale"] = torch.ones(2)
    save_file(b, str(path_b))
    with open_checkpoint(str(path_a)) as ra, open_checkpoint(str(path_b)) as rb:
        result = diff_checkpoints(ra, rb)
    rows = change_rows(result)
    keys = [k for k, _, _ in rows]
    assert keys.index("norm.bias") == keys.index("norm.weight") + 1  # beside its module
    assert rows[keys.index("norm.bias")][2] == "only A" and rows[-1] == ("extra.scale", None, "only B")
    assert [k for k, v, m in rows if v] == [k for k in a if k.startswith(TRAINED)]
    check_both(tmp_path, "diff", lambda fmt: plot_diff(result, fmt))


def test_resume_figure_of_a_diverging_run(tmp_path: Path) -> None:
    result = verify_resume(variant(tmp_path, "tutorial_mlp", "optimizer"), steps=8, resume_at=4,
                           fresh_process=False, drift=True)
    assert result.diverged_step == 4 and result.drift
    check_both(tmp_path, "resume", lambda fmt: plot_resume(result, fmt))


def test_resume_figure_without_drift(tmp_path: Path) -> None:
    result = verify_resume(example("tutorial_linear"), steps=5, resume_at=3, fresh_process=False)
    assert result.drift == ()
    check_both(tmp_path, "resume", lambda fmt: plot_resume(result, fmt))


@pytest.mark.parametrize("stats", [False, True])
def test_inspect_figure(tmp_path: Path, stats: bool) -> None:
    path_a, _, _, _ = tuned_pair(tmp_path)
    with open_checkpoint(str(path_a)) as reader:
        result = inspect_checkpoint(reader, with_stats=stats)
    check_both(tmp_path, "inspect", lambda fmt: plot_inspect(result, fmt))


@pytest.mark.parametrize("name", ["x.jpg", "x", "x.pdf", "x.png.txt"])
def test_only_png_and_svg(name: str) -> None:
    with pytest.raises(InvalidArgumentError, match="name the file .png or .svg"):
        figure_format(name)
    assert figure_format("A.PNG") == "png" and figure_format("dir.v2/a.svg") == "svg"
