"""Parameters by module (``inspect --plot``), from real models' state_dicts."""

from __future__ import annotations

from pathlib import Path

import torch

from ckpttools.formats.registry import open_checkpoint
from ckpttools.ops.inspect import inspect_checkpoint
from ckpttools.ops.module_sizes import module_sizes
from tests.render._real import TinyLM


def sizes_of(state: dict[str, torch.Tensor], folder: Path) -> list[tuple[str, int]]:
    torch.save(state, folder / "m.pt")
    with open_checkpoint(str(folder / "m.pt")) as reader:
        result = inspect_checkpoint(reader)
    assert sum(m.params for m in result.module_sizes) == sum(v.numel() for v in state.values())
    return [(m.module, m.params) for m in result.module_sizes]


def test_top_level_modules_in_file_order(tmp_path: Path) -> None:
    model = TinyLM()
    got = sizes_of(model.state_dict(), tmp_path)
    expected = [(name, sum(p.numel() for p in child.state_dict().values()))
                for name, child in model.named_children()]
    assert got == expected


def test_shared_wrapper_prefix_is_left_out(tmp_path: Path) -> None:
    state = {f"model_state_dict.{k}": v for k, v in TinyLM().state_dict().items()}
    assert [m for m, _ in sizes_of(state, tmp_path)] == ["embed", "encoder", "norm", "head"]


def test_a_module_holding_most_is_split_once(tmp_path: Path) -> None:
    # GPT-2's layout: 'transformer' holds nearly everything, 'lm_head' the rest
    big = torch.nn.ModuleDict({"wte": torch.nn.Embedding(64, 32),
                               "h": torch.nn.ModuleList(torch.nn.Linear(32, 32) for _ in range(6))})
    state = {**{f"transformer.{k}": v for k, v in big.state_dict().items()},
             "lm_head.weight": torch.zeros(4, 32)}
    assert [m for m, _ in sizes_of(state, tmp_path)] == ["transformer.wte", "transformer.h", "lm_head"]


def test_many_modules_are_capped() -> None:
    from ckpttools.entries import TensorEntry

    entries = [TensorEntry(f"block{i}.weight", "float32", (i + 1,), 4 * (i + 1)) for i in range(20)]
    sizes = module_sizes(entries)
    assert len(sizes) == 12 and sizes[-1].module == "(other: 9 modules)"
    assert sizes[-1].params == sum(range(1, 10)) and sum(s.params for s in sizes) == sum(range(1, 21))
