"""Prefixes, rename rules, rules files and mapping inference."""

from __future__ import annotations

from pathlib import Path

import pytest

from ckpttools.errors import SpecError
from ckpttools.ops.model_spec import ModelKey, ModelSignature
from ckpttools.ops.keymatch import (
    apply_rules,
    format_rules,
    rename_table,
    search_moves,
    parse_rule,
    prefix_rules,
    read_rules,
)


def test_parse_rule_splits_on_first_unescaped_equals() -> None:
    assert parse_rule(r"^enc\.(\d+)=blocks.\1") == (r"^enc\.(\d+)", r"blocks.\1")
    assert parse_rule(r"a\=b=c") == ("a=b", "c")
    with pytest.raises(SpecError, match="REGEX=REPLACEMENT"):
        parse_rule("nothing")
    with pytest.raises(SpecError, match="bad regular expression"):
        parse_rule("(=x")


def test_rules_file_round_trip(tmp_path: Path) -> None:
    rules = [(r"^layers\.(\d+)\.", r"blocks.\1."), ("a=b", "c")]
    path = tmp_path / "rules.txt"
    path.write_text(format_rules(rules, "made by a test\nsecond line"))
    assert read_rules(str(path)) == rules
    path.write_text("# comment\n\nbad line\n")
    with pytest.raises(SpecError, match="rules.txt:3"):
        read_rules(str(path))
    with pytest.raises(SpecError, match="cannot read"):
        read_rules(str(tmp_path / "absent.txt"))


def test_prefix_rules_leave_other_keys_alone() -> None:
    rules = prefix_rules("module.", "model.")
    assert apply_rules("module.fc.weight", rules) == "model.fc.weight"
    assert apply_rules("fc.weight", rules) == "model.fc.weight"
    assert apply_rules("module_x.w", prefix_rules("module.")) == "module_x.w"


def _sig(keys: dict[str, tuple[int, ...]]) -> ModelSignature:
    return ModelSignature("m", tuple(ModelKey(k, s, "float32", "parameter") for k, s in keys.items()))


def _table(keys: dict[str, tuple[int, ...]]) -> dict[str, tuple[tuple[int, ...], str]]:
    return {k: (s, "float32") for k, s in keys.items()}


def _apply(ckpt: dict[str, tuple[int, ...]], model: dict[str, tuple[int, ...]]) -> dict[str, str]:
    rules = [r for m in search_moves(_table(ckpt), _sig(model)) for r in m.rules]
    return {k: apply_rules(k, rules) for k in ckpt}


def test_module_renames_keep_leaf_names() -> None:
    ckpt, model = {}, {}
    for i in range(3):
        ckpt |= {f"encoder.layers.{i}.attn.q.weight": (8, 8), f"encoder.layers.{i}.attn.q.bias": (8,),
                 f"encoder.layers.{i}.ln.gamma": (8,), f"encoder.layers.{i}.ln.beta": (8,)}
        model |= {f"blocks.{i}.attention.query.weight": (8, 8),
                  f"blocks.{i}.attention.query.bias": (8,),
                  f"blocks.{i}.norm.weight": (8,), f"blocks.{i}.norm.bias": (8,)}
    mapped = _apply(ckpt, model)
    # gamma/beta never become weight/bias: a rename does not change a leaf name
    assert all(v.rpartition(".")[2] == k.rpartition(".")[2] for k, v in mapped.items())
    assert mapped["encoder.layers.1.attn.q.weight"] == "blocks.1.attention.query.weight"


def test_prefix_on_a_subset_at_depth() -> None:
    ckpt = {"model.enc.0.weight": (4, 4), "model.enc.0.bias": (4,), "model.head.weight": (2, 4),
            "target_scale": (1,)}
    model = {"enc.0.weight": (4, 4), "enc.0.bias": (4,), "head.weight": (2, 4)}
    moves = search_moves(_table(ckpt), _sig(model))
    assert [(m.kind, m.old, m.new) for m in moves] == [("prefix", "model.", "")]


def test_index_shift_in_a_sequential() -> None:
    ckpt = {"layers.0.weight": (4, 3), "layers.2.weight": (5, 4), "layers.4.weight": (2, 5)}
    model = {"layers.0.weight": (4, 3), "layers.1.weight": (5, 4), "layers.2.weight": (2, 5)}
    assert _apply(ckpt, model) == {"layers.0.weight": "layers.0.weight",
                                   "layers.2.weight": "layers.1.weight",
                                   "layers.4.weight": "layers.2.weight"}


def test_ambiguous_shapes_are_not_guessed() -> None:
    ckpt = {"a.weight": (4, 4), "b.weight": (4, 4), "c.weight": (4, 4)}
    model = {"x.weight": (4, 4), "y.weight": (4, 4)}
    assert search_moves(_table(ckpt), _sig(model)) == []
    assert rename_table(_table(ckpt), [("^[ab]", "z")]) is None  # a collision is refused
