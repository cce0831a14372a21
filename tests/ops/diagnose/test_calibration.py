"""Calibration on the relations behind frozen3's confident misses, on real load errors.

A confident wrong answer is the worst outcome: a tensor-parallel rank's piece must not read as a
head of another size, an inner layer's width must not read as a classifier, and a layer class
whose weight moved into a submodule is a rename only when every instance moved alike.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from ckpttools.ops.diagnose.diagnosis import diagnose_text
from tests.ops.diagnose.gen_models import ARCHS, vocab_parallel_shard
from tests.ops.diagnose.generated_corpus import load_error
from tests.ops.diagnose.scoring import rules_first

_ARCH = {a.name: a for a in ARCHS}
_MEGATRON_LOG = ("using world size: 1 and model-parallel size: {k}\n"
                 "global rank 0 is loading checkpoint ckpt/iter_0001000/mp_rank_00/model_optim_rng.pt\n")


class _Attention(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.dense = nn.Linear(d, d)


def _row_parallel_piece(k: int) -> str:
    """Rank 0's row-parallel ``dense`` (1/k of the input columns) loaded into the whole layer."""
    model, piece = _Attention(1024), _Attention(1024)
    sd = dict(piece.state_dict())
    sd["dense.weight"] = sd["dense.weight"][:, : 1024 // k].clone()
    return load_error(model, sd)


def _top(text: str):  # type: ignore[no-untyped-def]
    causes = diagnose_text(text).causes
    return causes[0], {c.label: c.confidence for c in causes}


def test_a_row_parallel_piece_with_parallelism_named_is_partitioned() -> None:
    text = _MEGATRON_LOG.format(k=16) + _row_parallel_piece(16)
    cause, _ = _top(text)
    # decided by the rules (the report bounds it by held-out outcomes: test_reliability.py)
    assert cause.label == "partitioned_checkpoint" and rules_first(text).confidence >= 0.8


def test_a_sixteenth_of_a_wide_layer_is_never_a_confident_width() -> None:
    cause, ranked = _top(_row_parallel_piece(16))
    assert cause.confidence < 0.8 and ranked.get("architecture_variant", 0) < 0.8


def test_a_vocabulary_parallel_rank_file_is_not_another_vocabulary() -> None:
    arch = _ARCH["tinylm"]
    text = load_error(arch.make(vocab=1024), vocab_parallel_shard(arch.make(vocab=1024), 8))
    cause, ranked = _top(text)
    assert cause.label == "partitioned_checkpoint" and ranked["head_size_mismatch"] < 0.8
    cause, _ = _top(_MEGATRON_LOG.format(k=8) + text)
    assert cause.label == "partitioned_checkpoint"
    assert rules_first(_MEGATRON_LOG.format(k=8) + text).confidence >= 0.8


def test_eight_times_fewer_classes_in_a_small_head_is_still_a_head() -> None:
    arch = _ARCH["convnet"]
    cause, _ = _top(load_error(arch.make(num_classes=80), arch.make(num_classes=10).state_dict()))
    assert cause.label == "head_size_mismatch" and cause.confidence >= 0.8


class _RelHead(nn.Module):
    """Features Sequential, then the classifier: ``cls_feats`` with one or two layers."""

    def __init__(self, hidden: tuple[int, ...], classes: int = 5) -> None:
        super().__init__()
        sizes, layers = (16, *hidden), []
        for a, b in zip(sizes, sizes[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.cls_feats = nn.Sequential(*layers)
        self.cls_score = nn.Linear(sizes[-1], classes)


def test_an_inner_layer_is_not_a_head() -> None:
    # The checkpoint's features have one layer (16 -> 10), the code builds two (16 -> 12 -> 10).
    text = load_error(_RelHead((12, 10)), _RelHead((10,)).state_dict())
    assert "cls_feats.2.weight" in text
    cause, ranked = _top(text)
    assert cause.label != "head_size_mismatch" and ranked["head_size_mismatch"] < 0.8
    mismatches_only = "\n".join(ln for ln in text.splitlines() if "size mismatch" in ln)
    cause, ranked = _top(mismatches_only)
    assert cause.confidence < 0.8 and ranked["head_size_mismatch"] < 0.8


def test_the_last_layer_is_still_a_head() -> None:
    cause, _ = _top(load_error(_RelHead((12, 10), classes=7), _RelHead((12, 10)).state_dict()))
    assert cause.label == "head_size_mismatch" and cause.confidence >= 0.8


class _Classifier(nn.Module):
    """torchvision's ViT layout: ``heads`` is a Sequential holding ``head``, or a plain Linear."""

    def __init__(self, sequential: bool) -> None:
        super().__init__()
        self.encoder = nn.Linear(6, 8)
        self.heads = nn.Sequential(OrderedDict(head=nn.Linear(8, 5))) if sequential else nn.Linear(8, 5)


def test_one_module_wrapped_is_changed_code_not_a_rename() -> None:
    # heads.weight -> heads.head.weight: the code wrapped one module, not a layer class's layout.
    cause, ranked = _top(load_error(_Classifier(True), _Classifier(False).state_dict()))
    assert cause.label == "model_code_changed" and ranked.get("renamed_keys", 0) < 0.8


def test_prose_naming_the_compile_prefix_is_a_candidate_not_a_decision() -> None:
    cause, _ = _top("Loading the checkpoint gives an error because of the prefix '_orig_mod.' that "
                    "torch.compile adds when saving.")
    assert cause.label == "prefix_added" and cause.confidence < 0.8
    assert 'removeprefix("_orig_mod.")' in cause.fix_code
