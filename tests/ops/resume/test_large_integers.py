"""verify-resume's comparison of integers past 2**53 (seeds, step counters, sample ids)."""

from __future__ import annotations

import torch

from ckpttools.ops.resume.compare import compare_states


def _saved(tmp_path, name, value):
    path = tmp_path / name
    torch.save({"sampler": {"seed": torch.tensor([value, 7], dtype=torch.int64)}, "step": value},
               path)
    return torch.load(path, weights_only=True)


def test_integers_one_apart_past_2_53_differ(tmp_path):
    a = _saved(tmp_path, "a.pt", 2**62)
    b = _saved(tmp_path, "b.pt", 2**62 + 1)
    diffs = {d.key: d for d in compare_states(a, b, atol=1e-6)}
    assert diffs["sampler.seed"].status == "differs"
    assert diffs["step"].status == "differs"
    assert diffs["step"].max_abs == 1.0


def test_equal_large_integers_are_identical(tmp_path):
    a = _saved(tmp_path, "a.pt", 2**62)
    b = _saved(tmp_path, "b.pt", 2**62)
    assert {d.status for d in compare_states(a, b, atol=0.0)} == {"identical"}
