"""The relative L2 change ``||B - A|| / ||A||`` that ``diff A B`` measures per tensor while it
streams the pairs (the data of ``diff --plot``), against torch computing it from whole tensors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from ckpttools.formats.registry import open_checkpoint
from ckpttools.ops.diff import pair
from ckpttools.ops.diff.pair import diff_checkpoints
from tests.render._real import TRAINED, tuned_pair


def expected_change(a: torch.Tensor, b: torch.Tensor) -> float:
    a64, b64 = a.double(), b.double()
    return float((b64 - a64).norm() / a64.norm()) if a64.norm() > 0 else (0.0 if torch.equal(a, b) else math.inf)


def test_fine_tuned_layers_change_the_rest_does_not(tmp_path: Path) -> None:
    path_a, path_b, a, b = tuned_pair(tmp_path)
    with open_checkpoint(str(path_a)) as ra, open_checkpoint(str(path_b)) as rb:
        result = diff_checkpoints(ra, rb)
    changes = {t.key: t.rel_l2_change for t in result.tensors}
    assert list(changes) == list(a)  # model order
    for key, change in changes.items():
        trained = key.startswith(TRAINED)
        assert (change > 0) == trained, key
        assert change == pytest.approx(expected_change(a[key], b[key]), rel=1e-5, abs=1e-12), key
    assert result.to_dict()["tensors"][0]["rel_l2_change"] == changes["embed.weight"]


def test_chunks_equal_and_changed_in_one_tensor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # SGD on a few tokens changes only their embedding rows: with small chunks, one tensor has
    # chunks equal on both sides (they still count toward ||A||) and chunks that changed
    torch.manual_seed(0)
    emb = torch.nn.Embedding(512, 64)
    before = emb.weight.detach().clone()
    opt = torch.optim.SGD(emb.parameters(), lr=0.5)
    emb(torch.tensor([3, 200, 201, 500])).pow(2).sum().backward()
    opt.step()
    after = emb.weight.detach().clone()
    assert torch.equal(before[:3], after[:3]) and not torch.equal(before, after)
    torch.save({"w": before}, tmp_path / "a.pt")
    torch.save({"w": after}, tmp_path / "b.pt")
    monkeypatch.setattr(pair, "CHUNK_BYTES", 4096)
    with open_checkpoint(str(tmp_path / "a.pt")) as ra, open_checkpoint(str(tmp_path / "b.pt")) as rb:
        assert ra.raw_source("w") is not None  # the chunked path, 32 chunks of 4 KB
        (t,) = diff_checkpoints(ra, rb).tensors
    assert not t.bitwise_equal
    assert t.rel_l2_change == pytest.approx(expected_change(before, after), rel=1e-5)


def test_zero_tensor_that_changes_has_no_ratio(tmp_path: Path) -> None:
    # a bias initialised to zero and then trained: the change has no finite ratio
    torch.save({"bias": torch.zeros(4), "same": torch.ones(2)}, tmp_path / "a.pt")
    torch.save({"bias": torch.tensor([0.0, 0.1, 0.0, 0.0]), "same": torch.ones(2)}, tmp_path / "b.pt")
    with open_checkpoint(str(tmp_path / "a.pt")) as ra, open_checkpoint(str(tmp_path / "b.pt")) as rb:
        bias, same = diff_checkpoints(ra, rb).tensors
    assert bias.rel_l2_change == math.inf and same.rel_l2_change == 0.0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.int64])
def test_other_dtypes(tmp_path: Path, dtype: torch.dtype) -> None:
    a = (torch.arange(1, 41) * 3).to(dtype)
    b = a.clone()
    b[5] += 7
    torch.save({"t": a}, tmp_path / "a.pt")
    torch.save({"t": b}, tmp_path / "b.pt")
    with open_checkpoint(str(tmp_path / "a.pt")) as ra, open_checkpoint(str(tmp_path / "b.pt")) as rb:
        (t,) = diff_checkpoints(ra, rb).tensors
    assert t.rel_l2_change == pytest.approx(expected_change(a, b), rel=1e-3)
