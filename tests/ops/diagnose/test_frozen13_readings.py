"""Readings found while tuning on frozen13/ and frozen14/ (#16).

A vocabulary is carried by several tensors, so a whole message that lists one of them alone says the
others loaded: a masked-LM bias alone a few rows apart is the code sizing the bias, a transducer
joint's outputs alone are another joint configuration as much as another tokenizer, and an input
table alone an order of magnitude apart is another frontend as much as another dictionary. A ViT's
final norm against its pooled norm is the pooling it was built with, and keys under a transformers
base-model name (``bert.``) alone were saved from a task class. Every text here is the error a real
``load_state_dict`` raises between two real modules; the printed fix is run on a copy of the model.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ckpttools.ops.diagnose.diagnosis import diagnose_text
from tests.ops.diagnose.generated_corpus import load_error
from tests.ops.diagnose.printed import labels as _labels, run_fix as _run_fix


# -- BERT's masked-LM head: the decoder tied to the word embeddings, a bias of its own ----------

class MaskedLM(nn.Module):
    def __init__(self, vocab: int, bias_rows: int) -> None:
        super().__init__()
        self.embeddings = nn.Module()
        self.embeddings.word_embeddings = nn.Embedding(vocab, 8)
        self.cls = nn.Module()
        self.cls.predictions = nn.Module()
        self.cls.predictions.transform = nn.Linear(8, 8)
        self.cls.predictions.decoder = nn.Linear(8, vocab, bias=False)
        self.cls.predictions.decoder.weight = self.embeddings.word_embeddings.weight  # tied
        self.cls.predictions.bias = nn.Parameter(nn.init.zeros_(nn.Linear(1, bias_rows).bias))


def test_a_masked_lm_bias_alone_a_row_apart_is_the_code_sizing_it() -> None:
    # the saving code resized the tables and the bias for one added token; the loading code
    # resizes the tables only: the bias alone differs
    text = load_error(MaskedLM(31, 31), MaskedLM(31, 32).state_dict())
    assert text.count("size mismatch") == 1 and "cls.predictions.bias" in text
    result = diagnose_text(text)
    assert [label for label, _ in _labels(result)][:2] == ["model_code_changed", "head_size_mismatch"]
    assert not result.decided
    assert result.causes[0].fix_code == ""  # words: the library version, which the text does not name


def test_another_vocabulary_changes_the_tables_too_and_stays_a_head() -> None:
    result = diagnose_text(load_error(MaskedLM(31, 31), MaskedLM(40, 40).state_dict()))
    assert result.causes[0].label == "head_size_mismatch"


def test_a_masked_lm_bias_alone_far_apart_is_not_read_as_added_tokens() -> None:
    result = diagnose_text(load_error(MaskedLM(31, 31), MaskedLM(31, 64).state_dict()))
    assert result.causes[0].label == "head_size_mismatch"


# -- a transducer's joint network: tokens + blank (+ durations for TDT) ---------------------------

class Transducer(nn.Module):
    def __init__(self, tokens: int, durations: int) -> None:
        super().__init__()
        self.decoder = nn.Module()
        self.decoder.prediction = nn.Module()
        self.decoder.prediction.embed = nn.Embedding(tokens + 1, 8)
        self.joint = nn.Module()
        self.joint.joint_net = nn.Sequential(nn.ReLU(), nn.Dropout(0.0), nn.Linear(8, tokens + 1 + durations))


def test_a_joint_output_alone_is_another_joint_configuration_as_much_as_a_tokenizer() -> None:
    text = load_error(Transducer(24, 0), Transducer(24, 5).state_dict())  # TDT file, RNNT model
    assert "joint.joint_net.2.weight" in text and "prediction" not in text
    result = diagnose_text(text)
    labels = [label for label, _ in _labels(result)]
    assert labels[:2] == ["architecture_variant", "head_size_mismatch"]
    assert not result.decided


def test_a_tokenizer_of_another_size_changes_the_prediction_table_too() -> None:
    result = diagnose_text(load_error(Transducer(24, 0), Transducer(30, 0).state_dict()))
    assert result.causes[0].label == "head_size_mismatch"


# -- an input table alone: added tokens, or another frontend ----------------------------------

class Frontend(nn.Module):
    def __init__(self, symbols: int) -> None:
        super().__init__()
        self.seq2seq = nn.Module()
        self.seq2seq.encoder = nn.Module()
        self.seq2seq.encoder.embed_tokens = nn.Embedding(symbols, 8)
        self.seq2seq.encoder.conv = nn.Conv1d(8, 8, 3)


def test_an_input_table_an_order_of_magnitude_apart_lists_another_frontend() -> None:
    result = diagnose_text(load_error(Frontend(15), Frontend(600).state_dict()))
    labels = [label for label, _ in _labels(result)]
    assert labels[0] == "head_size_mismatch" and "architecture_variant" in labels
    assert not result.decided


def test_an_input_table_a_few_tokens_apart_is_still_decided_as_the_vocabulary() -> None:
    result = diagnose_text(load_error(Frontend(600), Frontend(603).state_dict()))
    assert result.causes[0].label == "head_size_mismatch" and result.decided


# -- timm's VisionTransformer: norm before pooling (class token), fc_norm after it (avg) -----------

class ViT(nn.Module):
    def __init__(self, global_pool: str) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, 8, 4, 4)
        self.blocks = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8))
        avg = global_pool == "avg"
        self.norm = nn.Identity() if avg else nn.LayerNorm(8)
        self.fc_norm = nn.LayerNorm(8) if avg else nn.Identity()
        self.head = nn.Linear(8, 10)


def test_the_pooled_norm_against_the_final_norm_is_the_pooling_not_a_rename() -> None:
    text = load_error(ViT("token"), ViT("avg").state_dict())
    assert '"norm.weight"' in text and '"fc_norm.weight"' in text
    result = diagnose_text(text)
    top = result.causes[0]
    assert top.label == "architecture_variant" and result.decided, _labels(result)
    assert "global_pool='avg'" in top.summary and "the checkpoint was built with average" in top.summary
    assert "renamed_keys" in [label for label, _ in _labels(result)]
    # the other way round
    back = diagnose_text(load_error(ViT("avg"), ViT("token").state_dict())).causes[0]
    assert back.label == "architecture_variant" and "the model was built with average" in back.summary


def test_a_final_norm_under_another_name_is_still_a_rename() -> None:
    class Renamed(ViT):
        def __init__(self) -> None:
            super().__init__("token")
            self.final_norm = self.norm
            del self.norm

    result = diagnose_text(load_error(ViT("token"), Renamed().state_dict()))
    assert result.causes[0].label == "renamed_keys"


# -- transformers' base-model prefix on the checkpoint's keys, the other list cut away -------------

def _tiny_bert_config():  # type: ignore[no-untyped-def]
    from transformers import BertConfig

    return BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=32, max_position_embeddings=32)


def test_unexpected_keys_under_a_task_models_base_prefix_are_a_prefix(tmp_path: Path) -> None:
    from transformers import BertForPreTraining, BertModel

    torch.manual_seed(0)
    pretraining = BertForPreTraining(_tiny_bert_config())
    path = tmp_path / "pytorch_model.bin"
    torch.save(pretraining.state_dict(), path)
    text = load_error(BertModel(_tiny_bert_config()), torch.load(path, weights_only=True))
    # the paste starts at the unexpected list and ends inside it, after ten keys (bert.* alone)
    start = text.index("Unexpected key(s)")
    quotes = [start + i for i, ch in enumerate(text[start:]) if ch == '"']
    paste = text[start:quotes[20] + 8]
    assert "cls." not in paste and "Missing" not in paste
    result = diagnose_text(paste)
    top = result.causes[0]
    assert top.label == "prefix_added" and "removeprefix(\"bert.\")" in top.fix_code, _labels(result)
    assert not result.decided  # one list: another model under that name stays a candidate
    # the printed fix loads the base model's weights and leaves the pretraining heads out
    loaded = _run_fix(top.fix_code, BertModel(_tiny_bert_config()), path)
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, pretraining.state_dict()["bert." + key]), key


# -- a prefix encoder's table: one row per virtual token (P-Tuning v2, PEFT prefix tuning) ----------

def _prefix_encoder(tokens: int) -> nn.Module:
    from peft import PrefixTuningConfig
    from peft.tuners.prefix_tuning.model import PrefixEncoder

    return PrefixEncoder(PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=tokens, token_dim=16,
                                            num_layers=2, num_transformer_submodules=1,
                                            num_attention_heads=2))


def test_a_prefix_encoders_table_is_the_prefix_length() -> None:
    text = load_error(_prefix_encoder(8), _prefix_encoder(32).state_dict())
    assert "for PrefixEncoder" in text and "size mismatch for embedding.weight" in text
    result = diagnose_text(text)
    assert result.causes[0].label == "architecture_variant", _labels(result)
    assert "virtual tokens" in result.causes[0].summary and result.causes[0].fix_code == ""

    class Transformer(nn.Module):  # ChatGLM's layout: the encoder inside the model
        def __init__(self, tokens: int) -> None:
            super().__init__()
            self.prefix_encoder = _prefix_encoder(tokens)

    class ChatModel(nn.Module):
        def __init__(self, tokens: int) -> None:
            super().__init__()
            self.transformer = Transformer(tokens)

    inside = diagnose_text(load_error(ChatModel(128), ChatModel(8).state_dict()))
    assert inside.causes[0].label == "architecture_variant", _labels(inside)


def test_an_embedding_table_of_another_class_is_not_read_as_a_prefix() -> None:
    class Tagger(nn.Module):
        def __init__(self, tags: int) -> None:
            super().__init__()
            self.embedding = nn.Embedding(tags, 16)

    result = diagnose_text(load_error(Tagger(8), Tagger(32).state_dict()))
    assert result.causes[0].label != "architecture_variant" or "virtual tokens" not in result.causes[0].summary


# -- a detector's file into the classifier it was built on ---------------------------------------

class Classifier(nn.Module):
    """torchvision's ResNet layout: a stem, stages, an fc."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3)
        self.bn1 = nn.BatchNorm2d(8)
        self.layer1 = nn.Sequential(nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8))
        self.fc = nn.Linear(8, 10)


class RetinaNet(nn.Module):
    """pytorch-retinanet's layout: the ResNet's layers at the top, an FPN and two subnets, no fc."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3)
        self.bn1 = nn.BatchNorm2d(8)
        self.layer1 = nn.Sequential(nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8))
        self.fpn = nn.ModuleDict({"P5_1": nn.Conv2d(8, 8, 1), "P4_1": nn.Conv2d(8, 8, 1)})
        self.regressionModel = nn.Sequential(nn.Conv2d(8, 8, 3), nn.Conv2d(8, 36, 3))
        self.classificationModel = nn.Sequential(nn.Conv2d(8, 8, 3), nn.Conv2d(8, 9 * 80, 3))


def test_a_detectors_file_in_its_backbones_classifier_is_the_wrong_file() -> None:
    text = load_error(Classifier(), RetinaNet().state_dict())
    assert 'Missing key(s) in state_dict: "fc.weight", "fc.bias"' in text
    for paste in (text, text[:text.index('"fpn.P5_1.bias"') + 16]):  # whole, and cut as pasted
        result = diagnose_text(paste)
        top = result.causes[0]
        assert top.label == "wrong_model", _labels(result)
        assert "detection or segmentation" in top.summary and "fpn" in top.summary
    assert not diagnose_text(text[:text.index('"fpn.P5_1.bias"') + 16]).decided


def test_a_classifier_missing_its_fc_beside_other_modules_is_not_a_detectors_file() -> None:
    class Other(Classifier):
        def __init__(self) -> None:
            super().__init__()
            del self.fc
            self.projection = nn.Linear(8, 4)

    result = diagnose_text(load_error(Classifier(), Other().state_dict()))
    assert "detection or segmentation" not in result.causes[0].summary


# -- an auxiliary head the model was built with and the checkpoint trained without -----------------

class Segmenter(nn.Module):
    """awesome-semantic-segmentation's layout: ``aux=True`` adds an ``auxlayer`` head."""

    def __init__(self, aux: bool) -> None:
        super().__init__()
        self.pretrained = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8))
        self.head = nn.Conv2d(8, 5, 1)
        if aux:
            self.auxlayer = nn.Module()
            self.auxlayer.block = nn.Sequential(nn.Conv2d(8, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                                                nn.Dropout(0.1), nn.Conv2d(4, 5, 1))


def test_an_auxiliary_head_only_the_model_has_is_the_aux_option(tmp_path: Path) -> None:
    torch.manual_seed(0)
    trained = Segmenter(aux=False)
    path = tmp_path / "segmenter.pth"
    torch.save(trained.state_dict(), path)
    text = load_error(Segmenter(aux=True), torch.load(path, weights_only=True))
    assert "Unexpected" not in text and '"auxlayer.block.0.weight"' in text
    result = diagnose_text(text)
    top = result.causes[0]
    assert top.label == "architecture_variant" and "exist in the model only" in top.summary, _labels(result)
    assert not result.decided and top.fix_code == ""
    # new code stays a candidate; its printed fix loads what fits and leaves the head untrained
    code = next(c for c in result.causes if c.label == "model_code_changed").fix_code
    loaded = _run_fix(code, Segmenter(aux=True), path)
    for key, value in trained.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    # and the other way round, as before: heads in the checkpoint only
    back = diagnose_text(load_error(Segmenter(aux=False), Segmenter(aux=True).state_dict())).causes[0]
    assert back.label == "architecture_variant" and "checkpoint only" in back.summary


# -- the input layer under a detector's holder names (YOLOX's backbone.backbone.stem) -------------

class BaseConv(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, bias=False)
        self.bn = nn.BatchNorm2d(cout)


class Yolox(nn.Module):
    """YOLOX's layout: PAFPN.backbone (CSPDarknet) whose Focus stem reads 12 channels (3 x 4)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.backbone = nn.Module()
        self.backbone.backbone = nn.Module()
        self.backbone.backbone.stem = nn.Module()
        self.backbone.backbone.stem.conv = BaseConv(12, width)
        self.backbone.backbone.dark2 = nn.Sequential(BaseConv(width, 2 * width))


def test_a_stem_under_holder_names_is_the_input_layer_a_width_not_a_count() -> None:
    text = load_error(Yolox(24), Yolox(32).state_dict())  # a nano file in a tiny model
    lines = text.splitlines()
    # the header, one size mismatch and the next cut inside its line, as the thread pasted it
    paste = "\n".join([*lines[:2], lines[2][:lines[2].index("from checkpoint")]])
    assert "backbone.backbone.stem.conv.conv.weight" in lines[1] and "stem.conv.bn.weight" in lines[2]
    result = diagnose_text(paste)
    assert result.causes[0].label == "architecture_variant", _labels(result)


# -- a CRF tagger of another tag set: the scorer's rows and the transitions count the tags --------

class CRF(nn.Module):
    """pytorch-crf's parameters: one score per tag to start and end, one per tag pair."""

    def __init__(self, num_tags: int) -> None:
        super().__init__()
        self.start_transitions = nn.Parameter(torch.randn(num_tags))
        self.end_transitions = nn.Parameter(torch.randn(num_tags))
        self.transitions = nn.Parameter(torch.randn(num_tags, num_tags))


class Tagger(nn.Module):
    def __init__(self, num_tags: int) -> None:
        super().__init__()
        self.encoder = nn.LSTM(8, 8, batch_first=True)
        self.linear = nn.Linear(8, num_tags)
        self.crf = CRF(num_tags)


def test_a_crf_taggers_other_tag_set_is_a_head_not_a_width(tmp_path: Path) -> None:
    torch.manual_seed(0)
    trained = Tagger(33)
    path = tmp_path / "tagger.pt"
    torch.save(trained.state_dict(), path)
    text = load_error(Tagger(25), torch.load(path, weights_only=True))
    assert "crf.transitions" in text and "linear.weight" in text
    result = diagnose_text(text)
    top = result.causes[0]
    assert top.label == "head_size_mismatch" and result.decided, _labels(result)
    # the printed fix loads everything but the tag layers, which are trained anew
    model = _run_fix(top.fix_code, Tagger(25), path)
    for key, value in model.state_dict().items():
        if key.startswith("encoder."):
            assert torch.equal(value, trained.state_dict()[key]), key
