"""Parsing load_state_dict error texts in the formats people paste."""

from __future__ import annotations

import pytest

from ckpttools.ops.diagnose.error_text import parse_error_text


def test_pytorch_format_with_class_and_shapes() -> None:
    text = ('RuntimeError: Error(s) in loading state_dict for ResNet:\n'
            '\tMissing key(s) in state_dict: "fc.weight", "fc.bias". \n'
            '\tUnexpected key(s) in state_dict: "module.fc.weight". \n'
            '\tsize mismatch for conv1.weight: copying a param with shape torch.Size([64, 3, 7, 7]) '
            'from checkpoint, the shape in current model is torch.Size([64, 1, 7, 7]).')
    r = parse_error_text(text)
    assert r.found and r.class_name == "ResNet" and not r.truncated
    assert r.missing == ("fc.weight", "fc.bias") and r.unexpected == ("module.fc.weight",)
    assert r.mismatched[0].checkpoint_shape == (64, 3, 7, 7)
    assert r.mismatched[0].model_shape == (64, 1, 7, 7)


@pytest.mark.parametrize("text,missing,unexpected", [
    ("Missing key(s) in state_dict: 'a.w', 'b.w'", ("a.w", "b.w"), ()),
    ("Missing key(s) in state_dict: \u201ca.w\u201d, \u201cb.w\u201d.", ("a.w", "b.w"), ()),
    ("KeyError: 'unexpected key \"module.x.w\" in state_dict'", (), ("module.x.w",)),
    ("KeyError: 'missing keys in state_dict: \"{'a.w', 'b.w'}\"'", ("a.w", "b.w"), ()),
    ("_IncompatibleKeys(missing_keys=['a.w'], unexpected_keys=['b.w'])", ("a.w",), ("b.w",)),
    ("missing keys in source state_dict: a.w, b.w\n", ("a.w", "b.w"), ()),
    ("unexpected key in source state_dict: ema_a_w, ema_b_w\n", (), ("ema_a_w", "ema_b_w")),
    ("Some weights of BertModel were not initialized from the model checkpoint at bert and are "
     "newly initialized: ['pooler.w']\n", ("pooler.w",), ()),
    ("Some weights of the model checkpoint at bert were not used when initializing BertModel: "
     "['cls.w', 'cls.b']\n", (), ("cls.w", "cls.b")),
    ('{"evalue": "Error(s) in loading state_dict for Net:\\n\\tMissing key(s) in state_dict: '
     '\\"a.w\\". "}', ("a.w",), ()),
    ('Missing key(s) in state_dict: "a.w", "a.b"\r\nUnexpected key(s) in state_dict: "x.w"\r\n',
     ("a.w", "a.b"), ("x.w",)),
])
def test_formats(text: str, missing: tuple[str, ...], unexpected: tuple[str, ...]) -> None:
    r = parse_error_text(text)
    assert r.found
    assert r.missing == missing and r.unexpected == unexpected


def test_transformers_shape_list() -> None:
    text = ("Some weights of X were not initialized from the model checkpoint at y and are newly "
            "initialized because the shapes did not match:\n- classifier.weight: found shape "
            "torch.Size([2, 8]) in the checkpoint and torch.Size([5, 8]) in the model instantiated\n")
    (m,) = parse_error_text(text).mismatched
    assert (m.key, m.checkpoint_shape, m.model_shape) == ("classifier.weight", (2, 8), (5, 8))


@pytest.mark.parametrize("text", [
    'Missing key(s) in state_dict: "a.w", "a.b"...',
    'Missing key(s) in state_dict: "a.w", [...]',
    'Missing key(s) in state_dict: "a.w", "a.',
])
def test_cut_lists_are_flagged(text: str) -> None:
    r = parse_error_text(text)
    assert r.truncated and r.missing[0] == "a.w"


def test_several_errors_merge_without_repeats() -> None:
    one = 'Error(s) in loading state_dict for Net:\n\tMissing key(s) in state_dict: "a.w". \n'
    r = parse_error_text(f"[rank0]: {one}[rank1]: {one}")
    assert r.missing == ("a.w",)


def test_wrapped_key_lines_and_quote_prefixes() -> None:
    r = parse_error_text('> Missing key(s) in state_dict: "backbone.la\n> yer1.w", "c.w".')
    assert r.missing == ("backbone.layer1.w", "c.w")


def test_no_error_in_text() -> None:
    assert not parse_error_text("epoch 3: loss 0.12\nall good").found
