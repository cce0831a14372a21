"""Relations found while tuning on frozen7/ (#16), each on real models and their real errors.

Every text is the error a real ``load_state_dict`` raises (cut the way the thread pasted it where
the relation is about a cut); every fix a new rule prints is run on a copy of the real model and
the file it failed on.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from ckpttools.ops.diagnose.diagnosis import diagnose_text
from tests.ops.diagnose.generated_corpus import load_error
from tests.ops.diagnose.printed import run_fix as _run_fix
from tests.ops.diagnose.scoring import rules_first


def _same(a: nn.Module, b: dict[str, torch.Tensor], prefix: str) -> bool:
    own = a.state_dict()
    return all(torch.equal(own[k], v) for k, v in b.items() if k.startswith(prefix))


# -- a head's size beside whole modules on one side only (cascadetabnet74) ---------------------

class Rpn(nn.Module):
    def __init__(self, anchors: int) -> None:
        super().__init__()
        self.rpn_cls = nn.Conv2d(16, anchors, 1)
        self.rpn_reg = nn.Conv2d(16, 4 * anchors, 1)


def _box_head() -> nn.ModuleDict:
    return nn.ModuleDict({"fc_cls": nn.Linear(16, 5), "fc_reg": nn.Linear(16, 16),
                          "shared_fcs": nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 16))})


class OldDetector(nn.Module):
    """A cascade detector as an older library version lays it out: box heads at the top level."""

    def __init__(self, anchors: int = 3, box_heads: int = 3) -> None:
        super().__init__()
        self.backbone = nn.Conv2d(3, 16, 3)
        self.rpn_head = Rpn(anchors)
        self.bbox_head = nn.ModuleList(_box_head() for _ in range(box_heads))


class NewDetector(nn.Module):
    """The same detector in newer code: another anchor layout, no top-level box heads."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Conv2d(3, 16, 3)
        self.rpn_head = Rpn(9)


def test_a_head_size_beside_a_whole_module_on_one_side_is_no_decided_head(tmp_path: Path) -> None:
    old = OldDetector()
    path = tmp_path / "old.pth"
    torch.save(old.state_dict(), path)
    text = load_error(NewDetector(), torch.load(path, weights_only=True))
    assert "Unexpected key(s)" in text and "size mismatch for rpn_head.rpn_cls.weight" in text
    result = diagnose_text(text)
    assert not result.decided, [(c.label, c.confidence) for c in result.causes]
    top, labels = result.causes[0], [c.label for c in result.causes]
    assert top.label == "model_code_changed" and "head_size_mismatch" in labels
    # the printed fix (load what fits) runs and loads the backbone both layouts share
    loaded = _run_fix(top.fix_code, NewDetector(), path)
    assert _same(loaded, old.state_dict(), "backbone.")


def test_a_head_size_beside_fewer_one_sided_keys_than_it_explains_still_decides() -> None:
    # a classifier of another size and one small extra module: the head explains most of the text
    class Net(nn.Module):
        def __init__(self, classes: int, extra: bool) -> None:
            super().__init__()
            self.features = nn.Conv2d(3, 16, 3)
            self.fc_cls = nn.Linear(16, classes)
            self.fc_reg = nn.Linear(16, 4 * classes)
            if extra:
                self.scale = nn.Linear(1, 1, bias=False)

    text = load_error(Net(5, extra=False), Net(9, extra=True).state_dict())
    result = diagnose_text(text)  # decided by the rules; the report bounds it (test_reliability.py)
    assert result.causes[0].label == "head_size_mismatch" and rules_first(text).confidence >= 0.8


# -- an inner layer whose input differs by a few channels (hrnetbu3) ---------------------------

class Pose(nn.Module):
    """Bottom-up pose: the regression branch reads the features concatenated with the heatmaps."""

    def __init__(self, joints: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3)
        self.final_layers = nn.ModuleList([nn.Conv2d(16, joints, 1)])
        self.transition_reg = nn.Sequential(nn.Conv2d(16 + joints, 32, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.stem(x)
        return self.transition_reg(torch.cat([f, self.final_layers[0](f)], 1))


def _cut_like_the_thread(text: str) -> str:
    """The fed layer's line first, then the head's line cut inside the model's shape."""
    lines = text.splitlines()
    kept = [lines[0]] + [ln for ln in lines if "transition_reg.0.weight" in ln] + [
        ln for ln in lines if "final_layers.0.weight" in ln]
    cut = "\n".join(kept)
    return cut[:cut.rindex("torch.Size([17") + len("torch.Size([17")]


def test_an_inner_layer_fed_a_changed_count_is_no_input_channel_setting(tmp_path: Path) -> None:
    trained = Pose(14)
    path = tmp_path / "crowdpose.pth"
    torch.save(trained.state_dict(), path)
    text = _cut_like_the_thread(load_error(Pose(17), torch.load(path, weights_only=True)))
    assert "[32, 30, 1, 1]" in text and text.endswith("torch.Size([17")
    result = diagnose_text(text)
    assert not result.decided
    top = result.causes[0]
    assert top.label == "head_size_mismatch", [(c.label, c.confidence) for c in result.causes]
    assert "final_layers.0.weight" in top.summary and "concatenated" in top.summary
    assert all("first layer" not in c.summary for c in result.causes)  # no in_chans reading
    # the printed fix drops the head and the layer it feeds, and loads the rest
    loaded = _run_fix(top.fix_code, Pose(17), path)
    assert _same(loaded, trained.state_dict(), "stem.")
    assert loaded(torch.zeros(1, 3, 8, 8)).shape == (1, 32, 6, 6)


def test_a_first_layer_of_other_image_channels_is_still_an_input_channel_setting() -> None:
    class Stem(nn.Module):
        def __init__(self, chans: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(chans, 16, 3)

    text = load_error(Stem(4), Stem(3).state_dict())
    result = diagnose_text(text)  # decided by the rules; the report bounds it (test_reliability.py)
    assert "the first layer takes 3 input channels" in result.causes[0].summary
    assert rules_first(text).confidence >= 0.8


def test_an_inner_layer_of_another_round_width_is_no_concatenated_count() -> None:
    class Inner(nn.Module):
        def __init__(self, width: int) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, width, 3)
            self.block = nn.Sequential(nn.Conv2d(width, 64, 1))

    # the stem's rows and the block's input change together, by a ratio, in multiples of 8
    text = load_error(Inner(48), Inner(32).state_dict())
    result = diagnose_text(text)
    assert all("concatenated" not in c.summary for c in result.causes)


# -- a pretraining file (MAE) into the fine-tuning model (dmae3, retfound25) --------------------

class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, 16, 4, stride=4)
        self.blocks = nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 16))


class MaePretrain(Encoder):
    """The pretraining model: the encoder, its final norm, a mask token and a decoder."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(16)
        self.mask_token = nn.Parameter(torch.randn(1, 1, 16))
        self.decoder_embed = nn.Linear(16, 8)
        self.decoder_pos_embed = nn.Parameter(torch.randn(1, 5, 8))
        self.decoder_blocks = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8))
        self.decoder_pred = nn.Linear(8, 48)


class FineTune(Encoder):
    """The classifier: the same encoder, a pooled norm (fc_norm) and a head."""

    def __init__(self) -> None:
        super().__init__()
        self.fc_norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 10)


def _cut_unexpected(text: str, keep: int) -> str:
    """The paste ends inside the unexpected list, after ``keep`` keys (as the threads cut it)."""
    start = text.index("Unexpected key(s)")
    quotes = [start + i for i, ch in enumerate(text[start:]) if ch == '"']
    return text[:quotes[2 * keep] + 8]


def test_a_pretraining_file_into_its_fine_tuning_model_is_a_new_task_head(tmp_path: Path) -> None:
    pretrained = MaePretrain()
    path = tmp_path / "mae_pretrain.pth"
    torch.save(pretrained.state_dict(), path)
    whole = load_error(FineTune(), torch.load(path, weights_only=True))
    assert 'Missing key(s) in state_dict: "fc_norm.weight"' in whole
    for text in (whole, _cut_unexpected(whole, 6)):
        result = diagnose_text(text)
        top = result.causes[0]
        assert top.label == "new_task_head", [(c.label, c.confidence) for c in result.causes]
        assert not result.decided  # by key sets alone: the files decide
    # the printed fix loads the encoder and leaves the decoder unused
    loaded = _run_fix(diagnose_text(whole).causes[0].fix_code, FineTune(), path)
    assert _same(loaded, pretrained.state_dict(), "patch_embed.")
    assert _same(loaded, pretrained.state_dict(), "blocks.")


def test_a_head_and_one_renamed_module_is_no_other_tasks_file() -> None:
    # the head moved into a Sequential (heads.head.* -> heads.*): a rename, not a pretraining file
    class Old(Encoder):
        def __init__(self) -> None:
            super().__init__()
            self.heads = nn.Linear(16, 10)

    class New(Encoder):
        def __init__(self) -> None:
            super().__init__()
            self.heads = nn.Sequential()
            self.heads.add_module("head", nn.Linear(16, 10))

    result = diagnose_text(load_error(New(), Old().state_dict()))
    assert result.causes[0].label != "new_task_head"


# -- only the model's keys shown, its top modules under names no list knows (rtpose145, sb3) ---

class Policy(nn.Module):
    """An actor-critic policy: three top-level modules, none named like a first layer."""

    def __init__(self) -> None:
        super().__init__()
        self.actor = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        self.critic = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 1))
        self.critic_target = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 1))


def _missing_list_cut(text: str, keep: int) -> str:
    """The paste keeps the first ``keep`` missing keys (the unexpected list never shown)."""
    missing = text.split("Unexpected key(s)")[0]
    quotes = [i for i, ch in enumerate(missing) if ch == '"']
    return missing[:quotes[2 * keep - 1] + 1] + ", ..."


@pytest.mark.parametrize("wrap", ["compile", "dataparallel"])
def test_a_whole_model_missing_under_unknown_names_is_most_likely_a_wrapper(
        tmp_path: Path, wrap: str) -> None:
    torch.manual_seed(0)
    saved = torch.compile(Policy()) if wrap == "compile" else nn.DataParallel(Policy())
    path = tmp_path / "policy.pth"
    torch.save(saved.state_dict(), path)
    text = _missing_list_cut(load_error(Policy(), torch.load(path, weights_only=True)), 10)
    assert '"critic_target.0.weight"' in text and "_orig_mod" not in text and "module." not in text
    result = diagnose_text(text)
    top = result.causes[0]
    assert top.label == "prefix_added", [(c.label, c.confidence) for c in result.causes]
    assert not result.decided and "wrapped_checkpoint" in [c.label for c in result.causes]
    # the guessed fix strips whichever wrapper prefix the file carries and loads strictly
    loaded = _run_fix(top.fix_code, Policy(), path)
    inner = saved._orig_mod if wrap == "compile" else saved.module
    assert _same(loaded, inner.state_dict(), "")


# -- an auxiliary head built or not (torchvision3648) ------------------------------------------

class Inception(nn.Module):
    """Inception3's layout: ``aux_logits`` adds the AuxLogits head (two convs with BN, an fc)."""

    def __init__(self, aux_logits: bool) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = nn.Conv2d(3, 8, 3)
        if aux_logits:
            self.AuxLogits = nn.Sequential(nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8), nn.Flatten(),
                                           nn.Linear(8, 10))
        self.fc = nn.Linear(8, 10)


def test_an_auxiliary_head_in_the_checkpoint_only_is_the_aux_option_not_other_code() -> None:
    text = load_error(Inception(False), Inception(True).state_dict())
    assert 'Unexpected key(s) in state_dict: "AuxLogits.0.weight"' in text
    result = diagnose_text(text)
    top = result.causes[0]
    assert top.label == "architecture_variant" and "auxiliary heads (AuxLogits)" in top.summary
    assert not result.decided


def test_a_new_module_of_another_name_on_one_side_is_still_changed_code() -> None:
    class Net(Inception):
        def __init__(self, extra: bool) -> None:
            super().__init__(False)
            if extra:
                self.attention = nn.Sequential(nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8))

    result = diagnose_text(load_error(Net(False), Net(True).state_dict()))
    assert result.causes[0].label != "architecture_variant"


# -- a learned query table of another count (finetunedetr4) ------------------------------------

class Detr(nn.Module):
    def __init__(self, num_queries: int, classes: int = 5) -> None:
        super().__init__()
        self.query_embed = nn.Embedding(num_queries, 16)
        self.class_embed = nn.Linear(16, classes + 1)


class QFormer(nn.Module):
    """BLIP-2's learned query tokens: a [1, N, D] parameter."""

    def __init__(self, queries: int) -> None:
        super().__init__()
        self.query_tokens = nn.Parameter(torch.zeros(1, queries, 16))
        self.proj = nn.Linear(16, 16)


def test_a_query_table_of_another_count_is_num_queries_not_a_head() -> None:
    for model, saved in ((Detr(50), Detr(10)), (QFormer(32), QFormer(8))):
        result = diagnose_text(load_error(model, saved.state_dict()))
        top = result.causes[0]
        assert top.label == "architecture_variant" and "num_queries" in top.summary, top
        assert not result.decided


def test_a_query_table_beside_a_class_head_is_not_read_alone() -> None:
    # the class head changed too: not every mismatch is a query table
    result = diagnose_text(load_error(Detr(50, classes=9), Detr(10, classes=5).state_dict()))
    assert all("num_queries" not in c.summary for c in result.causes)
