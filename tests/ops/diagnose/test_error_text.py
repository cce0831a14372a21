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
    # quotes lost in a paste: dotted and dotless keys, not the words of a sentence or a header
    ("Unexpected key(s) in state_dict: epoch, optimizer, state_dict.\n", (),
     ("epoch", "optimizer", "state_dict")),
    ("Missing key(s) in state_dict: cls_token, pos_embed\n", ("cls_token", "pos_embed"), ()),
    ("Missing key(s) in state_dict:\ncls_token, pos_embed\n", ("cls_token", "pos_embed"), ()),
    ("Missing key(s) in state_dict: conv1.weight is not in the file\n", ("conv1.weight",), ()),
    ("Missing key(s) in state_dict error after training on 4 GPUs\n", (), ()),
    ("Missing key(s) in state_dict: \n\tUnexpected key(s) in state_dict: \n", (), ()),
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


@pytest.mark.parametrize("text,missing,unexpected,mismatched", [
    # detectron2 / fvcore checkpointer warnings, brace groups per module
    ("WARNING [01/02 10:00:00 fvcore.common.checkpoint]: Some model parameters or buffers are not "
     "found in the checkpoint:\nroi_heads.box_predictor.{bias, weight}\nproposal_generator.conv.weight\n\n",
     ("roi_heads.box_predictor.bias", "roi_heads.box_predictor.weight", "proposal_generator.conv.weight"),
     (), ()),
    ("The checkpoint state_dict contains keys that are not used by the model:\n  pixel_mean\n  pixel_std\n",
     (), ("pixel_mean", "pixel_std"), ()),
    ("Skip loading parameter 'roi_heads.box_predictor.cls_score.weight' to the model due to incompatible "
     "shapes: (81, 1024) in the checkpoint but (11, 1024) in the model! You might want to double check",
     (), (), (("roi_heads.box_predictor.cls_score.weight", (81, 1024), (11, 1024)),)),
    # fvcore before 2020, and detectron2's Caffe2 weight conversion
    ("Unable to load 'roi_heads.box_predictor.cls_score.bias' to the model due to incompatible shapes: "
     "(81,) in the checkpoint but (18,) in the model!",
     (), (), (("roi_heads.box_predictor.cls_score.bias", (81,), (18,)),)),
    ("WARNING [09/30 17:22:31 d2.checkpoint.c2_model_loading]: Shape of roi_heads.box_predictor.bbox_pred"
     ".bias in checkpoint is torch.Size([8]), while shape of roi_heads.box_predictor.bbox_pred.bias in "
     "model is torch.Size([320]).",
     (), (), (("roi_heads.box_predictor.bbox_pred.bias", (8,), (320,)),)),
    # PyTorch <= 0.3 names the model's shape first
    ("While copying the parameter named fc.weight, whose dimensions in the model are "
     "torch.Size([10, 512]) and whose dimensions in the checkpoint are torch.Size([1000, 512]).",
     (), (), (("fc.weight", (1000, 512), (10, 512)),)),
    ("ValueError: Received 1 parameters not in model: \nlm_head.weight.", (), ("lm_head.weight",), ()),
    # the middle of a key list, pasted without its header
    ('ers.0.attn.v_proj.weight", "layers.1.attn.q_proj.weight", "layers.1.attn.k_proj.weight", '
     '"layers.1.attn.v_proj.weight", "lay',
     ("layers.1.attn.q_proj.weight", "layers.1.attn.k_proj.weight", "layers.1.attn.v_proj.weight"), (), ()),
    ("When I load the checkpoint, the keys `encoder.norm.weight` and `encoder.norm.bias` are missing.",
     ("encoder.norm.weight", "encoder.norm.bias"), (), ()),
    # both sides in one sentence, side named first or keys first
    ("When I load the checkpoint I get missing keys like `conv1.weight`, `bn1.bias` and unexpected keys "
     "like `module.conv1.weight`.", ("conv1.weight", "bn1.bias"), ("module.conv1.weight",), ()),
    ("Loading the weights, `conv1.weight` is missing and `module.conv1.weight`, `module.bn1.bias` are "
     "unexpected.", ("conv1.weight",), ("module.conv1.weight", "module.bn1.bias"), ()),
    # a size mismatch in words, either order
    ("It says size mismatch for fc.weight: the checkpoint has torch.Size([1000, 512]) and my model "
     "torch.Size([10, 512])", (), (), (("fc.weight", (1000, 512), (10, 512)),)),
    ("size mismatch for `fc.weight`: torch.Size([10, 512]) in the model but torch.Size([1000, 512]) in "
     "the checkpoint", (), (), (("fc.weight", (1000, 512), (10, 512)),)),
])
def test_other_loaders_and_prose(text: str, missing: tuple[str, ...], unexpected: tuple[str, ...],
                                 mismatched: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...]) -> None:
    r = parse_error_text(text)
    assert r.found
    assert r.missing == missing and r.unexpected == unexpected
    assert tuple((m.key, m.checkpoint_shape, m.model_shape) for m in r.mismatched) == mismatched


def test_keyerror_lookup_has_no_side_and_a_log_without_keys_is_not_an_error() -> None:
    r = parse_error_text("    state_dict[new_key] = state_dict.pop(old_key)\nKeyError: 'bert.embeddings.LayerNorm.gamma'")
    assert r.found and r.lookups == ("bert.embeddings.LayerNorm.gamma",) and not r.missing
    plain = parse_error_text("epoch 3: loss 0.12, saved checkpoint to model.encoder.pt\nall done")
    assert not plain.found


def test_megatron_core_global_shape_mismatch() -> None:
    # megatron.core.dist_checkpointing prints the shapes as tuples and stops at the first one.
    r = parse_error_text("CheckpointingException: Global shape mismatch for loaded ((1024, 768)) and "
                         "expected ((512, 768)) tensor for key model.embedding.position_embeddings.weight")
    assert r.found and r.truncated
    (m,) = r.mismatched
    assert (m.key, m.checkpoint_shape, m.model_shape) == (
        "model.embedding.position_embeddings.weight", (1024, 768), (512, 768))


@pytest.mark.parametrize("text,missing,unexpected", [
    ("Issue from recent versions: Unexpected in state_dict: embeddings.position_ids",
     (), ("embeddings.position_ids",)),
    ("Missing keys in state_dict: encoder.fc.weight, encoder.fc.bias after upgrading",
     ("encoder.fc.weight", "encoder.fc.bias"), ()),
])
def test_one_line_titles(text: str, missing: tuple[str, ...], unexpected: tuple[str, ...]) -> None:
    r = parse_error_text(text)
    assert r.found and r.truncated  # a title names examples, not the whole lists
    assert (r.missing, r.unexpected) == (missing, unexpected)


def test_prose_without_a_header_is_not_a_title() -> None:
    assert not parse_error_text("I load the state_dict: it works on torch.load but not model.eval").found


def test_parallelism_named_in_the_text() -> None:
    line = ("size mismatch for a.weight: copying a param with shape torch.Size([4, 2]) from "
            "checkpoint, the shape in current model is torch.Size([32, 2]).")
    assert parse_error_text("> initializing model parallel with size 8\n" + line).parallel
    assert parse_error_text("loading mp_rank_00_model_states.pt\n" + line).parallel
    assert not parse_error_text(line).parallel


def test_prose_naming_a_wrapper_prefix() -> None:
    r = parse_error_text("Resuming fails while loading the checkpoint because of the prefix '_orig_mod.' "
                         "that torch.compile adds to the keys.")
    assert r.found and r.named_prefix == "_orig_mod."
    plain = parse_error_text("The checkpoint loads fine; the 'module.' name is just a folder.")
    assert plain.named_prefix is None
