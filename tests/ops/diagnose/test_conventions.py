"""Relations read from message formats, class names and libraries' key conventions (conventions.py,
prose_names.py), on errors the real ``load_state_dict`` raises for real models built here.

Each test builds the failure the way it happens (a class count fed back into an attention decoder,
weight_norm layers, a module added under DataParallel, a ViT token removed, torchvision's old
DenseNet names, a super-resolution network's scale, a video model's frame table, a quantized file,
BasicSR's ``params_ema`` file, a pruned network, a multi-level detection head, another variant of a
network family), cuts the text as people paste it, and checks the first answer and that nothing
wrong is stated at confidence >= 0.8.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
import torch
from torch import nn

from ckpttools.ops.diagnose.diagnosis import DECIDED, DiagnoseResult, diagnose_text
from ckpttools.ops.diagnose.error_text import parse_error_text
from tests.ops.diagnose.gen_presentations import pytorch03
from tests.ops.diagnose.generated_corpus import _other_side, load_error
from tests.ops.diagnose.scoring import rules_first

pytestmark = [
    pytest.mark.filterwarnings("ignore:.torch.nn.utils.weight_norm. is deprecated:FutureWarning"),
    pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor, torch.quantize_per_channel:UserWarning"),
]


def _top(text: str) -> tuple[str | None, float]:
    r = diagnose_text(text)
    return (r.causes[0].label, r.causes[0].confidence) if r.causes else (None, 0.0)


def _never_confidently_wrong(r: DiagnoseResult, label: str) -> None:
    assert all(c.label == label for c in r.causes if c.confidence >= DECIDED), \
        [(c.label, c.confidence) for c in r.causes]


def _first_lines(text: str, n: int) -> str:
    return "\n".join(text.split("\n")[:n + 1])


class AttentionDecoder(nn.Module):
    """An attention text recogniser's decoder (deep-text-recognition-benchmark's ``Attention``):
    the LSTM cell reads the previous character as a one-hot of ``num_classes``."""

    def __init__(self, num_classes: int, hidden: int = 8, inputs: int = 6) -> None:
        super().__init__()
        self.attention_cell = nn.Module()
        self.attention_cell.rnn = nn.LSTMCell(inputs + num_classes, hidden)
        self.generator = nn.Linear(hidden, num_classes)


@pytest.mark.parametrize("cut", [None, 2], ids=["whole", "first_two_lines"])
def test_class_count_fed_back_into_the_decoder_is_a_head(cut: int | None) -> None:
    text = load_error(AttentionDecoder(37), AttentionDecoder(38).state_dict())
    shown = _first_lines(text, cut) if cut else text
    r = diagnose_text(shown)
    assert r.causes[0].label == "head_size_mismatch"
    _never_confidently_wrong(r, "head_size_mismatch")


def test_a_wider_decoder_stays_a_width() -> None:
    text = load_error(AttentionDecoder(37, hidden=16), AttentionDecoder(37).state_dict())
    assert _top(text)[0] == "architecture_variant"


def _wn_stack(convs: int, inserted: bool = False) -> nn.Module:
    layers: list[nn.Module] = [nn.Conv1d(4, 4, 3)]
    for _ in range(convs):
        layers += [nn.LeakyReLU()] * (2 if inserted else 1) + [torch.nn.utils.weight_norm(nn.Conv1d(4, 4, 3))]
    net = nn.Module()
    net.generator = nn.Sequential(*layers)
    return net


def test_weight_norm_parameters_on_one_side_abstain() -> None:
    """HiFi-GAN-style stacks: an activation inserted moved every weight_norm layer; with only the
    missing line pasted, weight_g/weight_v cannot tell a torch version from changed code."""
    text = load_error(_wn_stack(2, inserted=True), _wn_stack(2).state_dict())
    shown = "\n".join(line for line in text.split("\n") if "Unexpected" not in line)
    r = diagnose_text(shown)
    assert not r.decided and r.causes[0].label != "version_buffers"
    assert {"model_code_changed", "version_buffers"} <= {c.label for c in r.causes}
    whole = diagnose_text(text)  # the moved indices show: changed code, decided
    assert (whole.causes[0].label, rules_first(text).confidence >= 0.8) == ("model_code_changed", True)


def test_weight_norm_removed_before_saving_is_still_decided() -> None:
    plain = _wn_stack(2)
    for mod in plain.generator:
        if hasattr(mod, "weight_g"):
            torch.nn.utils.remove_weight_norm(mod)
    label, conf = _top(load_error(_wn_stack(2), plain.state_dict()))
    assert (label, conf >= DECIDED) == ("version_buffers", True)


class DeepLabLike(nn.Module):
    def __init__(self, representation: bool) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8))
        self.classifier = nn.Conv2d(8, 4, 1)
        if representation:
            self.representation = nn.Sequential(nn.Conv2d(8, 8, 3, bias=False), nn.BatchNorm2d(8),
                                                nn.ReLU(), nn.Conv2d(8, 4, 1))


def test_module_added_under_dataparallel_is_not_a_missing_prefix() -> None:
    """The message names DataParallel, so its own keys carry module.; a list that starts inside
    the model (a new module) is changed code, not a file without the prefix."""
    ckpt = nn.DataParallel(DeepLabLike(False)).state_dict()
    r = diagnose_text(load_error(nn.DataParallel(DeepLabLike(True)), ckpt))
    assert r.causes[0].label == "model_code_changed"
    _never_confidently_wrong(r, "model_code_changed")


def test_dataparallel_model_missing_everything_is_still_a_missing_prefix() -> None:
    # the first candidate; undecided with only the model's keys shown (test_thin_evidence.py)
    text = load_error(nn.DataParallel(DeepLabLike(False)), DeepLabLike(False).state_dict())
    shown = "\n".join(line for line in text.split("\n") if "Unexpected" not in line)
    assert _top(shown)[0] == "prefix_missing"
    first = rules_first(text)  # the report bounds it by held-out outcomes (test_reliability.py)
    assert (first.label, first.confidence) == ("prefix_missing", pytest.approx(0.97))


class PatchEmbedding(nn.Module):
    def __init__(self, cls_token: bool) -> None:
        super().__init__()
        self.patch_embeddings = nn.Conv2d(1, 8, 4, stride=4)
        self.position_embeddings = nn.Parameter(torch.zeros(1, 4, 8))
        if cls_token:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, 8))


class ViTAutoEnc(nn.Module):
    def __init__(self, cls_token: bool) -> None:
        super().__init__()
        self.patch_embedding = PatchEmbedding(cls_token)
        self.norm = nn.LayerNorm(8)


def test_a_removed_token_parameter_is_not_a_buffer() -> None:
    """MONAI removed ViTAutoEnc's cls_token: a learned parameter by its name, not a buffer."""
    text = load_error(ViTAutoEnc(False), ViTAutoEnc(True).state_dict())
    assert 'Unexpected key(s) in state_dict: "patch_embedding.cls_token"' in text
    r = diagnose_text(text)
    assert r.causes[0].label == "model_code_changed"
    assert "version_buffers" not in [c.label for c in r.causes]


class DenseLayer(nn.Module):
    """torchvision's ``_DenseLayer`` naming since 0.2.1 (norm1, relu1, conv1, norm2, ...)."""

    def __init__(self) -> None:
        super().__init__()
        self.norm1, self.conv1 = nn.BatchNorm2d(4), nn.Conv2d(4, 8, 1, bias=False)
        self.norm2, self.conv2 = nn.BatchNorm2d(8), nn.Conv2d(8, 4, 3, bias=False)


def _densenet() -> nn.Module:
    net = nn.Module()
    net.features = nn.Module()
    net.features.denseblock1 = nn.Module()
    net.features.denseblock1.denselayer1 = DenseLayer()
    net.features.denseblock1.denselayer2 = DenseLayer()
    return net


def _old_torchvision(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of torchvision's densenet ``_load_state_dict`` pattern: norm1 -> norm.1."""
    return {re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", k): v for k, v in sd.items()}


@pytest.mark.parametrize("present", [lambda t: t, _other_side,
                                     lambda t: pytorch03([], [re.findall(r'"([^"]+norm\.1[^"]*)"', t)[0]], [])],
                         ids=["whole", "unexpected_line", "pytorch03_keyerror"])
def test_old_torchvision_densenet_names_are_a_rename(present: Callable[[str], str]) -> None:
    model = _densenet()
    text = load_error(model, _old_torchvision(dict(model.state_dict())))
    r = diagnose_text(present(text))
    assert r.causes[0].label == "renamed_keys"
    _never_confidently_wrong(r, "renamed_keys")


def test_old_densenet_rename_fix_loads() -> None:
    model = _densenet()
    old = _old_torchvision(dict(model.state_dict()))
    renames = diagnose_text(load_error(model, old)).causes[0].evidence["facts"]["renames"]
    fixed = {k: v for k, v in old.items()}
    for a, b in renames:
        fixed = {re.sub(rf"(^|\.){re.escape(a)}(?=\.|$)", rf"\g<1>{b}", k): v for k, v in fixed.items()}
    assert not model.load_state_dict(fixed).missing_keys


class SuperResolution(nn.Module):
    """EDSR's layout: ``head``, ``body``, an ``upsample`` of one conv + PixelShuffle(2) per x2."""

    def __init__(self, scale: int) -> None:
        super().__init__()
        self.head = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        stages: list[nn.Module] = []
        for _ in range(scale.bit_length() - 1):
            stages += [nn.Conv2d(8, 32, 3, padding=1), nn.PixelShuffle(2)]
        self.upsample = nn.Sequential(*stages)
        self.tail_conv = nn.Conv2d(8, 3, 3, padding=1)


@pytest.mark.parametrize("model, ckpt", [(1, 2), (2, 4), (4, 2)])
def test_another_scale_factor_is_a_variant(model: int, ckpt: int) -> None:
    r = diagnose_text(load_error(SuperResolution(model), SuperResolution(ckpt).state_dict()))
    assert r.causes[0].label == "architecture_variant"
    _never_confidently_wrong(r, "architecture_variant")


class VideoGrounding(nn.Module):
    def __init__(self, max_video_len: int) -> None:
        super().__init__()
        self.encoder = nn.Module()
        self.encoder.time_embed = nn.Module()
        self.encoder.time_embed.te = nn.Parameter(torch.zeros(max_video_len + 1, 1, 8))
        self.encoder.proj = nn.Linear(8, 8)


def test_a_frame_table_of_another_length_is_a_variant() -> None:
    r = diagnose_text(load_error(VideoGrounding(200), VideoGrounding(300).state_dict()))
    assert r.causes[0].label == "architecture_variant"
    _never_confidently_wrong(r, "architecture_variant")


def _quantized_into_float() -> str:
    model = nn.Sequential(nn.Conv2d(4, 4, 3), nn.Conv2d(4, 4, 3))
    sd = {k: (torch.quantize_per_tensor(v, 0.1, 0, torch.qint8) if k.endswith("weight") else v)
          for k, v in model.state_dict().items()}
    return load_error(model, sd)


@pytest.mark.parametrize("cut", [False, True], ids=["with_reason", "cut_before_reason"])
def test_same_shape_copy_of_a_quantized_file(cut: bool) -> None:
    text = _quantized_into_float()
    assert "quantized Tensor" in text
    shown = re.sub(r", an exception occurred[^\n]*", "", text) if cut else text
    r = diagnose_text(shown)
    assert r.causes[0].label == "adapter_or_quantization"
    _never_confidently_wrong(r, "adapter_or_quantization")


def test_a_dotless_container_name_is_a_wrapped_file() -> None:
    """BasicSR saves {"params": ..., "params_ema": ...}; the EMA entry alone, unknown to the lists."""
    model = SuperResolution(2)
    text = _other_side(load_error(model, {"params_ema": model.state_dict()}))
    assert "Missing" not in text and '"params_ema"' in text
    assert _top(text)[0] == "wrapped_checkpoint"


class BasicBlock(nn.Module):
    """ResNet's block: conv1, bn1, conv2, bn2; a thinned network keeps fewer conv1 channels."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(16, width, 3, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, 16, 3, bias=False), nn.BatchNorm2d(16)


def _pruned(width: int) -> nn.Module:
    net = nn.Module()
    net.layer1 = nn.Sequential(BasicBlock(width), BasicBlock(16))
    return net


def test_a_pruned_width_with_its_norm_is_not_a_head() -> None:
    """Distiller's thinned networks: the first lines show a conv's rows and its BatchNorm's stats."""
    text = load_error(_pruned(16), _pruned(11).state_dict())
    r = diagnose_text(_first_lines(text, 4))
    assert r.causes[0].label == "architecture_variant"
    _never_confidently_wrong(r, "architecture_variant")


class YoloHead(nn.Module):
    """One 1x1 prediction conv per feature level (3 anchors x (5 + classes) outputs) and YOLOv7's
    per-channel implicit term after it."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        out = 3 * (5 + num_classes)
        self.convs_pred = nn.ModuleList()
        for width in (8, 16, 32):
            level = nn.Module()
            level.conv = nn.Conv2d(width, out, 1)
            level.implicit = nn.Parameter(torch.zeros(1, out, 1, 1))
            self.convs_pred.append(level)


def test_parallel_output_layers_of_one_size_are_a_head() -> None:
    r = diagnose_text(load_error(YoloHead(1), YoloHead(80).state_dict()))
    assert r.causes[0].label == "head_size_mismatch"
    _never_confidently_wrong(r, "head_size_mismatch")


class LightCNN(nn.Module):
    """Two variants of one family: v1's ``fc`` is a max-feature-map holding a ``filter`` Linear and
    its classifier has a bias; v2's ``fc`` is a plain Linear and its classifier is bias-free."""

    def __init__(self, v2: bool, classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU())
        if v2:
            self.fc = nn.Linear(16, 8)
        else:
            self.fc = nn.Module()
            self.fc.filter = nn.Linear(16, 8)
        self.fc2 = nn.Linear(8, classes, bias=not v2)


def test_another_variant_of_a_family_is_not_stated_as_changed_code() -> None:
    r = diagnose_text(load_error(LightCNN(False, 10), LightCNN(True, 12).state_dict()))
    _never_confidently_wrong(r, "architecture_variant")


def _dp_keys() -> tuple[str, str]:
    model = DeepLabLike(False)
    inner = next(iter(model.state_dict()))
    return inner, next(iter(nn.DataParallel(model).state_dict()))


@pytest.mark.parametrize("sentence, prefix", [
    ('Upon inspection, all keys in the saved state_dict have a "model." prefix', "model."),
    ('the loader expected "{inner}" but in the pretrained weight I got "{outer}"', "module."),
    ("all model keys are missing when loading; the compiled module is replaced by `_orig_mod`", "_orig_mod."),
    ('Unexpected key(s) in state_dict: "module.\n\n### Reproduction\n\nloading fails due to the "module." prefix of all parameters',
     "module."),
    ('every layer name of the pretrained weights has "module." preprended', "module."),
])
def test_prose_names_a_prefix(sentence: str, prefix: str) -> None:
    inner, outer = _dp_keys()
    parsed = parse_error_text(sentence.format(inner=inner, outer=outer))
    assert (parsed.found, parsed.named_prefix) == (True, prefix)
    assert _top(sentence.format(inner=inner, outer=outer))[0] == "prefix_added"


def test_prose_keys_in_markdown_emphasis() -> None:
    model = _densenet()
    new = next(k for k in model.state_dict() if "norm1.bias" in k)
    old = next(k for k in _old_torchvision(dict(model.state_dict())) if "norm.1.bias" in k)
    text = (f"your parameters are saved under the name:\n_{old}_\n"
            f"while the module is telling me it's missing:\n_{new}_\n")
    assert set(parse_error_text(text).missing) == {old, new}
    assert _top(text)[0] == "renamed_keys"


def test_prose_names_quantization_state() -> None:
    qmodel = torch.ao.nn.quantized.Linear(4, 4)
    leaves = {k.rpartition(".")[2] for k in qmodel.state_dict()}
    assert {"scale", "zero_point"} <= leaves  # what torch.ao saves, and what the sentence names
    text = ("Error(s) in loading state_dict, unexpected keys\nthe quantized model has the "
            "scale and zero_point that the float model definition does not have")
    assert _top(text)[0] == "adapter_or_quantization"


def test_prose_without_a_prefix_or_state_names_nothing() -> None:
    text = "loading the pretrained weights fails with unexpected keys; how do I fix my model?"
    assert parse_error_text(text).named_prefix is None
    assert not diagnose_text(text).causes


@pytest.mark.frameworks
def test_transformers_task_class_reports_its_bias_free_head_as_new() -> None:
    """Llama/Mistral sequence classifiers have a bias-free ``score`` head: from a causal-LM
    checkpoint it is newly initialised, which is expected (not a tied output)."""
    import tempfile

    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    from tests.ops.diagnose.gen_presentations import transformers4_report
    from tests.ops.diagnose.gen_transformers import _report

    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, pad_token_id=0)
    with tempfile.TemporaryDirectory() as lm:
        LlamaForCausalLM(config).save_pretrained(lm)
        report = _report(lambda: LlamaForSequenceClassification.from_pretrained(lm, num_labels=3))
    assert "score.weight" in report
    lm_keys = set(LlamaForCausalLM(config).state_dict())
    missing = [k for k in LlamaForSequenceClassification(config).state_dict() if k not in lm_keys]
    v4 = transformers4_report("LlamaForSequenceClassification", "meta-llama/tiny", missing, [], [])
    for text in (report, v4):
        r = diagnose_text(text)
        assert (r.causes[0].label, r.decided) == ("new_task_head", True), text


class QuantLinear(nn.Module):
    """A weight-only quantized linear in lit-gpt's / gpt-fast's layout: int8 weights and their scales
    (per output channel, or per group of input channels) and zero points as buffers."""

    def __init__(self, cin: int, cout: int, groups: int = 0, zeros: bool = True) -> None:
        super().__init__()
        self.register_buffer("quant_weight", torch.zeros(cout, cin, dtype=torch.int8))
        self.register_buffer("scales", torch.ones((cout, groups) if groups else (cout,)))
        if zeros:
            self.register_buffer("zeros", torch.zeros(cout))


def _lm(linear: Callable[[int, int], nn.Module]) -> nn.Module:
    net = nn.Module()
    net.blocks = nn.ModuleList()
    for _ in range(2):
        block = nn.Module()
        block.attn, block.proj = linear(8, 24), linear(24, 8)
        net.blocks.append(block)
    net.lm_head = linear(8, 16)
    return net


def test_a_quantized_model_and_a_float_file() -> None:
    text = load_error(_lm(QuantLinear), _lm(nn.Linear).state_dict())
    assert diagnose_text(text).causes[0].label == "adapter_or_quantization"
    assert rules_first(text).confidence >= DECIDED  # the report's bound: test_reliability.py
    missing_only = diagnose_text(_first_lines(text, 1))
    assert missing_only.causes[0].label == "adapter_or_quantization"


def test_groupwise_scales_into_a_per_channel_model() -> None:
    """gpt-fast/torchchat: int8 groupwise scales ([out, groups]) where the model has per-channel."""
    model = _lm(lambda i, o: QuantLinear(i, o, zeros=False))
    ckpt = _lm(lambda i, o: QuantLinear(i, o, groups=2, zeros=False)).state_dict()
    r = diagnose_text(load_error(model, ckpt))
    assert r.causes[0].label == "adapter_or_quantization"
    _never_confidently_wrong(r, "adapter_or_quantization")


def test_dynamic_quantized_file_with_the_unexpected_list_cut() -> None:
    from tests.ops.diagnose.gen_models import dynamic_quantized

    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 4))
    text = load_error(model, dynamic_quantized(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 4))).state_dict())
    cut = re.sub(r'(Unexpected key\(s\) in state_dict: "[^"]+",).*', r"\1 ...", text)
    assert cut.count('"', cut.index("Unexpected")) == 2
    r = diagnose_text(cut)
    assert r.causes[0].label == "adapter_or_quantization"
    _never_confidently_wrong(r, "adapter_or_quantization")


class ScalingLayer(nn.Module):
    """LPIPS' input normalisation: constant ``shift`` and ``scale`` buffers, not quantization."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("shift", torch.zeros(1, 3, 1, 1))
        self.register_buffer("scale", torch.ones(1, 3, 1, 1))


def test_a_scale_buffer_alone_is_not_quantization() -> None:
    old = nn.Module()
    old.scaling_layer, old.conv = ScalingLayer(), nn.Conv2d(3, 4, 1)
    new = nn.Module()
    new.conv = nn.Conv2d(3, 4, 1)
    r = diagnose_text(load_error(new, old.state_dict()))
    assert "adapter_or_quantization" not in [c.label for c in r.causes]


class GPTModel(nn.Module):
    """LLMs-from-scratch/nanoGPT naming: ``tok_emb``/``pos_emb`` first, then the blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.tok_emb, self.pos_emb = nn.Embedding(16, 8), nn.Embedding(4, 8)
        self.trf_blocks = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))
        self.out_head = nn.Linear(8, 16, bias=False)


def test_a_compiled_gpt_file_missing_from_tok_emb_on() -> None:
    """The whole model missing from its first key (``tok_emb``), the ``_orig_mod.`` keys not
    pasted: a prefix on the file first, abstaining with the other readings."""
    text = load_error(GPTModel(), torch.compile(GPTModel()).state_dict())
    r = diagnose_text(_first_lines(text, 1))
    assert (r.causes[0].label, r.decided) == ("prefix_added", False)
    assert len(r.causes) > 1


def test_state_names_without_a_failure_are_not_an_error() -> None:
    text = "I load the pretrained weights of a GPTQ model; its layers hold qweight and qzeros."
    assert not parse_error_text(text).found
