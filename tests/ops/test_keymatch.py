"""Prefixes, rename rules, rules files and mapping inference."""

from __future__ import annotations

from pathlib import Path

import pytest

from ckpttools.errors import SpecError
from ckpttools.ops.keymatch import (
    apply_rules,
    common_prefixes,
    format_rules,
    infer_mapping,
    parse_rule,
    prefix_rules,
    read_rules,
)


def test_common_prefixes_tolerate_a_stray_key() -> None:
    keys = [f"module.layer.{i}.weight" for i in range(19)] + ["num_batches"]
    assert common_prefixes(keys) == ["module.", "module.layer."]
    assert common_prefixes(["a.x", "b.y"]) == []


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


def test_infer_mapping_by_module_order_and_leaf_position() -> None:
    ckpt = {}
    model = {}
    for i in range(3):
        ckpt |= {f"encoder.layers.{i}.attn.q.weight": (8, 8), f"encoder.layers.{i}.attn.q.bias": (8,),
                 f"encoder.layers.{i}.ln.gamma": (8,), f"encoder.layers.{i}.ln.beta": (8,)}
        model |= {f"blocks.{i}.attention.query.weight": (8, 8),
                  f"blocks.{i}.attention.query.bias": (8,),
                  f"blocks.{i}.norm.weight": (8,), f"blocks.{i}.norm.bias": (8,)}
    ckpt["fc.weight"], model["head.weight"] = (10, 8), (10, 8)
    ckpt["extra.weight"] = (3, 3)
    mapping = infer_mapping(ckpt, model)
    assert len(mapping.pairs) == 13
    assert mapping.unmatched_checkpoint == ("extra.weight",) and mapping.unmatched_model == ()
    # one rule per module kind, generalised over layer numbers
    assert (r"^encoder\.layers\.(\d+)\.attn\.q\.", r"blocks.\1.attention.query.") in mapping.rules
    assert len(mapping.rules) == 4
    assert all(apply_rules(c, mapping.rules) == m for c, m in mapping.pairs)


def test_infer_mapping_refuses_ambiguous_shapes() -> None:
    ckpt = {"a.weight": (4, 4), "b.weight": (4, 4), "c.weight": (4, 4)}
    model = {"x.weight": (4, 4), "y.weight": (4, 4)}
    mapping = infer_mapping(ckpt, model)
    assert mapping.pairs == ()  # counts differ and no suffix decides: nothing is guessed
