"""Figures of a transformers model: a tiny GPT-2 from its config, saved with save_pretrained, and
a copy fine-tuned (real AdamW steps) on its last block only."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from ckpttools.cli.main import cli
from ckpttools.formats.registry import open_checkpoint
from ckpttools.ops.diff.pair import diff_checkpoints
from ckpttools.ops.inspect import inspect_checkpoint
from tests.frameworks.writers import tiny_gpt2
from tests.render._checks import png_size, svg_root

pytestmark = pytest.mark.frameworks


def _pair(tmp_path: Path) -> tuple[Path, Path]:
    base = tiny_gpt2()
    tuned = copy.deepcopy(base)
    for name, p in tuned.named_parameters():
        p.requires_grad_(name.startswith("transformer.h.1."))
    opt = torch.optim.AdamW([p for p in tuned.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.randint(0, 64, (4, 8), generator=torch.Generator().manual_seed(2))
    for _ in range(4):
        loss = tuned(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    base.save_pretrained(tmp_path / "base")
    tuned.save_pretrained(tmp_path / "tuned")
    return tmp_path / "base" / "model.safetensors", tmp_path / "tuned" / "model.safetensors"


def test_gpt2_fine_tune_changes_only_its_last_block(tmp_path: Path) -> None:
    a, b = _pair(tmp_path)
    with open_checkpoint(str(a)) as ra, open_checkpoint(str(b)) as rb:
        result = diff_checkpoints(ra, rb)
        sizes = [m.module for m in inspect_checkpoint(ra).module_sizes]
    changed = [t.key for t in result.tensors if t.rel_l2_change > 0]
    trainable = [k for k, p in tiny_gpt2().named_parameters() if k.startswith("transformer.h.1.")]
    assert sorted(changed) == sorted(trainable)
    # every key starts 'transformer.' (lm_head is tied, not saved): left out; 'h' holds over 80%,
    # so it is split into its blocks; safetensors keeps keys sorted, the figure keeps file order
    assert sizes == ["h.0", "h.1", "ln_f", "wpe", "wte"]
    out = tmp_path / "changes.svg"
    run = CliRunner().invoke(cli, ["diff", str(a), str(b), "--plot", str(out)])
    assert run.exit_code == 1 and "wrote the layer-change chart" in run.stderr
    svg_root(out)
    page, png = tmp_path / "gpt2.html", tmp_path / "gpt2.png"
    run = CliRunner().invoke(cli, ["inspect", str(b), "--stats", "--plot", str(png), "--html", str(page)])
    assert run.exit_code == 0, run.stderr
    png_size(png)
    assert "transformer.h.1.mlp.c_fc.weight" in page.read_text()
