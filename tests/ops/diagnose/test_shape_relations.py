"""Relations and message formats found on frozen5/ (#16), each on real models.

Each case builds real models and takes the real ``load_state_dict`` error (or the loader's own
log): a layer built with a count of zero is no partitioned save, a 4-bit packed column is
quantization and no width, one count changed by the same difference in several heads is a head,
a one-off module beside a width is other code, an odd computed inner width does not decide a
variant, a frame table of another length is another input length; then the formats: an empty
weight with its model shape cut, fvcore lists with the missing header cut, a lone small bias,
listings of both sides' sizes, SlowFast's "not loaded" log, a trainer's file.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ckpttools.ops.diagnose.diagnosis import DECIDED, diagnose_text
from tests.ops.diagnose.generated_corpus import load_error
from tests.ops.diagnose.scoring import rules_first


class Tagger(nn.Module):
    def __init__(self, classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 32, 3)
        self.fc_out = nn.Linear(32, classes)


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors is a no-op:UserWarning")
def test_a_layer_built_with_zero_outputs_is_a_head_not_a_partitioned_save() -> None:
    # [527, 32] -> [0, 32]: the other axis stays, so the layer was built with 0 classes
    causes = diagnose_text(load_error(Tagger(0), Tagger(527).state_dict())).causes
    assert causes[0].label == "head_size_mismatch" and causes[0].confidence >= DECIDED
    assert all(c.label != "partitioned_checkpoint" for c in causes)


def test_zero3_placeholders_are_still_a_partitioned_save() -> None:
    # ZeRO-3 saves a partitioned parameter as torch.Size([0]), whatever its rank
    state = {k: torch.empty(0) for k in Tagger(527).state_dict()}
    text = load_error(Tagger(527), state)
    cause = diagnose_text(text).causes[0]  # the report bounds it (test_reliability.py)
    assert cause.label == "partitioned_checkpoint" and rules_first(text).confidence >= DECIDED


class Projector(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mm_projector = nn.Linear(64, 128)


def _packed_4bit(model: Projector) -> Projector:
    """The layout bitsandbytes' ``Params4bit`` gives a weight: uint8, two values a byte, one column."""
    w = model.mm_projector.weight
    model.mm_projector.weight = nn.Parameter(torch.zeros(w.numel() // 2, 1, dtype=torch.uint8),
                                             requires_grad=False)
    return model


def test_a_float_file_into_a_4bit_packed_model_is_quantization_not_a_width() -> None:
    text = load_error(_packed_4bit(Projector()), Projector().state_dict())
    assert "torch.Size([4096, 1])" in text
    cause = diagnose_text(text).causes[0]
    assert cause.label == "adapter_or_quantization" and rules_first(text).confidence >= DECIDED
    assert "4-bit" in cause.summary


class RoIHead(nn.Module):
    """A cascade detector's heads: three box classifiers with a background class, a mask head without."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.bbox_head = nn.ModuleList(nn.ModuleDict({"fc_cls": nn.Linear(64, classes + 1)})
                                       for _ in range(3))
        self.mask_head = nn.ModuleList([nn.ModuleDict({"conv_logits": nn.Conv2d(16, classes, 1)})])


class Cascade(nn.Module):
    def __init__(self, classes: int) -> None:
        super().__init__()
        self.backbone = nn.Conv2d(3, 16, 3)
        self.roi_head = RoIHead(classes)


def test_one_count_changed_by_the_same_difference_in_several_heads_is_a_head() -> None:
    # 81 -> 4 in the box heads, 80 -> 3 in the mask head: 8 tensors, two sizes, one difference
    text = load_error(Cascade(3), Cascade(80).state_dict())
    cause = diagnose_text(text).causes[0]
    assert cause.label == "head_size_mismatch" and cause.confidence >= DECIDED


class GraphClassifier(nn.Module):
    def __init__(self, width: int, weighted_loss: bool) -> None:
        super().__init__()
        self.conv1 = nn.Linear(64, width)
        self.conv2 = nn.Linear(width, 32)
        if weighted_loss:  # a loss with class weights registers them as a buffer
            self.criterion_bonds = nn.CrossEntropyLoss(weight=torch.ones(4))


def test_a_one_off_module_beside_a_width_is_other_code_and_undecided() -> None:
    text = load_error(GraphClassifier(64, False), GraphClassifier(96, True).state_dict())
    assert '"criterion_bonds.weight"' in text
    causes = diagnose_text(text).causes
    assert causes[0].label == "model_code_changed"
    assert all(c.confidence < DECIDED for c in causes)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(dim, hidden, 1), nn.Conv2d(hidden, dim, 1)


class Stage(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(nn.ModuleDict({"mlp": Mlp(64, hidden)}) for _ in range(2))


def test_an_odd_computed_inner_width_does_not_decide_a_variant() -> None:
    # int(64 * 3.4) = 217 against 4 * 64: the code computing the width may have changed
    causes = diagnose_text(load_error(Stage(256), Stage(int(64 * 3.4)).state_dict())).causes
    assert causes[0].label == "architecture_variant" and causes[0].confidence < DECIDED


def test_an_even_inner_width_is_still_a_variant() -> None:
    text = load_error(Stage(256), Stage(192).state_dict())
    cause = diagnose_text(text).causes[0]  # the report bounds it (test_reliability.py)
    assert cause.label == "architecture_variant" and rules_first(text).confidence >= DECIDED


class Video(nn.Module):
    """A video transformer's learned frame table and per-class tokens, added beside the input."""

    def __init__(self, frames: int, classes: int = 4) -> None:
        super().__init__()
        self.time_embed = nn.Parameter(torch.zeros(1, frames, 64))
        self.temporal_token = nn.Parameter(torch.zeros(1, classes, 64))


def test_a_frame_table_of_another_length_is_another_input_length() -> None:
    cause = diagnose_text(load_error(Video(16), Video(8).state_dict())).causes[0]
    assert cause.label == "architecture_variant" and cause.confidence >= DECIDED
    assert "length" in cause.summary


def test_tokens_one_per_class_are_still_a_count() -> None:
    cause = diagnose_text(load_error(Video(8, classes=20), Video(8, classes=19).state_dict())).causes[0]
    assert cause.label == "head_size_mismatch"


def test_an_empty_weight_whose_model_shape_was_cut_is_a_partitioned_save_first() -> None:
    # ZeRO-3 saved the embedding as torch.Size([0]); the paste stops before the model's shape
    model = nn.ModuleDict({"embed_tokens": nn.Embedding(100, 16)})
    text = load_error(model, {"embed_tokens.weight": torch.empty(0)})
    text = text[: text.index("from checkpoint, the shape") + len("from checkpoint, the shape")]
    causes = diagnose_text(text).causes
    assert causes[0].label == "partitioned_checkpoint" and causes[0].confidence < DECIDED


class Detector(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.ModuleDict({f"fpn_lateral{i}": nn.Conv2d(8, 8, 1) for i in range(2, 6)})
        self.roi_heads = nn.ModuleDict({"cls_score": nn.Linear(8, 4)})


class TeacherStudent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.modelTeacher, self.modelStudent = Detector(), Detector()


def test_an_fvcore_missing_list_whose_header_was_cut_is_still_read() -> None:
    # fvcore's checkpointer lists, as its presentation prints them; the paste starts inside the
    # missing list (its header and first lines cut)
    from tests.ops.diagnose.gen_presentations import _lists, detectron2

    text = detectron2(*_lists(Detector(), TeacherStudent().state_dict()))
    lines = text.split("\n")
    assert lines[0].startswith("Some model parameters or buffers are not found")
    cut = "\n".join(lines[3:])
    cause = diagnose_text(cut).causes[0]
    assert cause.label == "prefix_added" and cause.confidence < DECIDED  # the lists are cut
    assert cause.evidence["facts"]["prefix"] == "modelTeacher."


def test_a_lone_bias_of_a_few_outputs_is_a_count_not_a_norm_width() -> None:
    # a classifier built for 2 labels given a 3-label file; the paste keeps the bias line only
    text = load_error(nn.Linear(16, 2), nn.Linear(16, 3).state_dict())
    line = next(x for x in text.split("\n") if "size mismatch for bias" in x)
    causes = diagnose_text(line.strip()).causes
    assert causes[0].label == "head_size_mismatch" and causes[0].confidence < DECIDED


def test_a_lone_norm_of_another_width_is_still_a_width() -> None:
    model = nn.Sequential(nn.Linear(8, 64), nn.LayerNorm(64))
    other = nn.Sequential(nn.Linear(8, 96), nn.LayerNorm(96))
    text = load_error(model, other.state_dict())
    lines = [x.strip() for x in text.split("\n") if "size mismatch for 1." in x]
    causes = diagnose_text("\n".join(lines)).causes
    assert causes[0].label == "architecture_variant"


class Encoder(nn.Module):
    def __init__(self, words: int, phonemes: int) -> None:
        super().__init__()
        self.emb, self.word_emb = nn.Embedding(phonemes, 16), nn.Embedding(words, 16)
        self.proj = nn.Linear(16, 16)


def test_keys_listed_with_sizes_once_per_side_are_read_as_mismatches() -> None:
    # a reporter prints both state_dicts' sizes, each under a line that names its side
    def listing(sd: dict[str, torch.Tensor]) -> str:
        return "\n".join(f"{k} {v.shape}" for k, v in sd.items() if "emb" in k)

    model, saved = Encoder(4500, 4135).state_dict(), Encoder(8000, 4136).state_dict()
    text = (f"When I train from scratch, I get a model with :\n{listing(model)}\n\n"
            f"but in the pretrained model, it is:\n{listing(saved)}\n\nAnd so it does not load.")
    assert "emb.weight torch.Size([4135, 16])" in text
    result = diagnose_text(text)
    assert {m.key: (m.checkpoint_shape, m.model_shape) for m in result.evidence.mismatched} == {
        "emb.weight": ((4136, 16), (4135, 16)), "word_emb.weight": ((8000, 16), (4500, 16))}
    assert result.causes[0].label == "head_size_mismatch"


class ActionNet(nn.Module):
    def __init__(self, classes: int) -> None:
        super().__init__()
        self.s1 = nn.Conv3d(3, 8, 1)
        self.head = nn.ModuleDict({"projection": nn.Linear(8, classes)})


def test_slowfasts_not_loaded_log_of_a_head_reads_as_a_head_candidate() -> None:
    # SlowFast's loader keeps the tensors of the same shape, logs every other model key as
    # "Network weights K not loaded." and loads the rest with strict=False
    model, saved = ActionNet(6), ActionNet(60).state_dict()
    own = model.state_dict()
    match = {k: v for k, v in saved.items() if k in own and v.size() == own[k].size()}
    log = "\n".join(f"[11/20 08:58:46][INFO] checkpoint.py: 336: Network weights {k} not loaded."
                    for k in own if k not in match)
    model.load_state_dict(match, strict=False)
    causes = diagnose_text(f"the log says\n```\n{log}\n```").causes
    assert causes[0].label == "head_size_mismatch" and causes[0].confidence < DECIDED


def test_a_trainers_file_with_optimizer_entries_of_any_name_is_a_training_checkpoint() -> None:
    # a GAN trainer's file: the model, an EMA copy and optimizers named discr_optim, *_optimizer_N
    model = Tagger(4)
    opt = torch.optim.Adam(model.parameters())
    trainer = {"model": model.state_dict(), "optim": opt.state_dict(), "discr_optim": opt.state_dict(),
               "ema_model": model.state_dict(), "multiscale_discr_optimizer_0": opt.state_dict()}
    text = load_error(Tagger(4), trainer)
    cut = text[text.index('"conv.bias"'):]  # the paste starts inside the missing list
    cause = diagnose_text(cut).causes[0]
    assert cause.label == "wrapped_checkpoint" and cause.evidence["facts"]["container"] == "model"


def test_headers_pasted_without_their_lists_name_no_key() -> None:
    # each header pasted in its own code block, the keys left out ("both followed by dozens of keys")
    text = load_error(Tagger(4), nn.Sequential(nn.Linear(3, 3)).state_dict())
    missing, unexpected = (line.split(":")[0] + ":" for line in text.split("\n")[1:3])
    assert missing.strip().startswith("Missing key(s)") and unexpected.strip().startswith("Unexpected")
    paste = (f"Didn't work.\n```\n{text.split(chr(10))[0]}\n{missing}\n```\nand\n```\n{unexpected}\n```\n"
             "both followed by dozens of keys.")
    result = diagnose_text(paste)
    assert result.evidence.missing == () and result.evidence.unexpected == ()
    assert not result.causes


def test_a_heads_sizes_told_in_a_sentence_are_a_head_candidate() -> None:
    # the reporter tells the sizes of the real error in words, without a key
    from ckpttools.ops.diagnose.error_text import parse_error_text

    parsed = parse_error_text(load_error(Tagger(41), Tagger(81).state_dict()))
    weight = next(m for m in parsed.mismatched if m.key == "fc_out.weight")
    told = (f"While the current model detection head has {weight.model_shape[0]} channels, the "
            f"checkpoint detection head has {weight.checkpoint_shape[0]} channels. What should I do?")
    cause = diagnose_text(told).causes[0]
    assert cause.label == "head_size_mismatch" and cause.confidence < DECIDED
    assert (cause.evidence["facts"]["checkpoint_size"], cause.evidence["facts"]["model_size"]) == (81, 41)
    assert not diagnose_text("The current model head has 41 channels. What should I do?").causes
