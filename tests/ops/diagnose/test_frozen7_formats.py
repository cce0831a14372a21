"""Message formats found while tuning on frozen7/ (#16), each from real models and real loads.

A size mismatch quoted in a title, a version buffer named in a sentence, a re-id loader's
``mismatch:`` print and CenterNet's skip message: each text is what the real ``load_state_dict``
(or the code base's own loader, as it is written) prints, and each printed fix runs on a copy of
the real model and the file it failed on.
"""

from __future__ import annotations

import io
from collections import OrderedDict
from contextlib import redirect_stdout
from pathlib import Path

import torch
from torch import nn

from ckpttools.ops.diagnose.diagnosis import diagnose_text
from tests.ops.diagnose.generated_corpus import load_error
from tests.ops.diagnose.test_frozen7_relations import _run_fix, _same

# -- texts that named a key or a buffer in a sentence (realesrgan540, colorization54) ---------

class Upscaler(nn.Module):
    """RRDBNet's entry: scale 2 unshuffles pixels into 4x the channels before conv_first."""

    def __init__(self, scale: int) -> None:
        super().__init__()
        self.conv_first = nn.Conv2d(3 * (4 if scale == 2 else 1), 16, 3, padding=1)
        self.body = nn.Conv2d(16, 16, 3, padding=1)


def test_a_size_mismatch_quoted_in_a_title_is_read(tmp_path: Path) -> None:
    trained = Upscaler(2)
    path = tmp_path / "x2.pth"
    torch.save(trained.state_dict(), path)
    error = load_error(Upscaler(4), torch.load(path, weights_only=True))
    key = error.split("size mismatch for ")[1].split(":")[0]
    assert key == "conv_first.weight"
    title = f'Trying to run x2 model causes RuntimeError in torch "size mismatch for {key}"'
    result = diagnose_text(title)
    assert result.found and not result.decided
    assert result.causes[0].label == "architecture_variant"  # an input layer: not a head by name
    # every candidate's printed code runs (the head's drops the named layer and loads the rest)
    for cause in result.causes:
        if "load_state_dict" in cause.fix_code:
            loaded = _run_fix(cause.fix_code, Upscaler(4), path)
            assert _same(loaded, trained.state_dict(), "body.")


def _pre_04(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state_dict without BatchNorm's num_batches_tracked (PyTorch < 0.4 had none), its
    layers' versions kept: today's torch fills the buffer only for files without versions, so
    this is the load that fails as PyTorch 0.4.0's did."""
    out = OrderedDict((k, v) for k, v in state.items() if not k.endswith("num_batches_tracked"))
    out._metadata = state._metadata  # type: ignore[attr-defined]
    return out


class Colorizer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3)
        self.norm = nn.BatchNorm2d(8)


def test_a_version_buffer_named_in_a_sentence_is_a_candidate(tmp_path: Path) -> None:
    trained = Colorizer()
    path = tmp_path / "released.pth"
    torch.save(_pre_04(trained.state_dict()), path)
    error = load_error(Colorizer(), torch.load(path, weights_only=True))
    assert '"norm.num_batches_tracked"' in error  # the real error; the thread tells it in words
    prose = ("The pre-trained model won't work in PyTorch 0.4 because normalization layers now "
             "track the number of batches with the tensor `num_batches_tracked`. When loading a "
             "`state_dict`, it then expects these tensors and crashes on a `KeyError`.")
    result = diagnose_text(prose)
    top = result.causes[0]
    assert top.label == "version_buffers" and not result.decided  # layer paths unseen
    loaded = _run_fix(top.fix_code, Colorizer(), path)
    assert _same(loaded, _pre_04(trained.state_dict()), "")


def test_a_sentence_naming_a_buffer_without_a_failure_is_no_error() -> None:
    result = diagnose_text("BatchNorm keeps num_batches_tracked since PyTorch 0.4.")
    assert not result.found


# -- a re-id code base's own loader print (instructreid20) ------------------------------------

def _copy_state_dict(state: dict[str, torch.Tensor], model: nn.Module) -> str:
    """open-reid's ``copy_state_dict`` (kept by its forks), printing what it prints."""
    out, target, copied = io.StringIO(), model.state_dict(), set()
    with redirect_stdout(out):
        for name, param in state.items():
            if name not in target:
                continue
            if param.size() != target[name].size():
                print("mismatch:", name, param.size(), target[name].size())
                continue
            target[name].copy_(param)
            copied.add(name)
        missing = set(target) - copied
        if missing:
            print("missing keys in state_dict:", missing)
    return out.getvalue()


class ReId(nn.Module):
    def __init__(self, ids: int) -> None:
        super().__init__()
        self.base = nn.Linear(12, 16)
        self.classifier = nn.Linear(16, ids, bias=False)
        self.classifier_f = nn.Linear(16, ids, bias=False)


def test_a_reid_loaders_mismatch_print_is_a_head_of_another_size(tmp_path: Path) -> None:
    trained = ReId(28)
    path = tmp_path / "checkpoint.pth.tar"
    torch.save(trained.state_dict(), path)
    text = _copy_state_dict(torch.load(path, weights_only=True), ReId(9))
    assert "mismatch: classifier.weight torch.Size([28, 16]) torch.Size([9, 16])" in text
    result = diagnose_text(text)
    top = result.causes[0]
    assert top.label == "head_size_mismatch" and result.decided
    assert result.to_dict()["counts"] == {"missing": 0, "unexpected": 0, "mismatched": 2,
                                          "matched": None}  # a skipped tensor is counted once
    loaded = _run_fix(top.fix_code, ReId(9), path)
    assert _same(loaded, trained.state_dict(), "base.")


# -- CenterNet's loader message, whole and retold (fairmot239) ---------------------------------

_CENTERNET_MSG = ("If you see this, your model does not fully load the pre-trained weight. Please "
                  "make sure you have correctly specified --arch xxx or set the correct "
                  "--num_classes for your own dataset.")


def _centernet_load(model: nn.Module, state: dict[str, torch.Tensor]) -> str:
    """CenterNet's ``load_model`` (kept by FairMOT, CenterTrack ...), printing what it prints."""
    out, own = io.StringIO(), model.state_dict()
    with redirect_stdout(out):
        for k in state:
            if k in own and state[k].shape != own[k].shape:
                print("Skip loading parameter {}, required shape{}, loaded shape{}. {}".format(
                    k, own[k].shape, state[k].shape, _CENTERNET_MSG))
                state[k] = own[k]
        model.load_state_dict(state, strict=False)
    return out.getvalue()


class CenterNet(nn.Module):
    def __init__(self, classes: int) -> None:
        super().__init__()
        self.base = nn.Conv2d(3, 8, 3)
        self.hm = nn.Sequential(nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Conv2d(8, classes, 1))
        self.wh = nn.Sequential(nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Conv2d(8, 2, 1))


def test_centernets_skip_message_is_read_with_its_shapes(tmp_path: Path) -> None:
    trained = CenterNet(80)
    path = tmp_path / "ctdet_coco.pth"
    torch.save(trained.state_dict(), path)
    text = _centernet_load(CenterNet(2), torch.load(path, weights_only=True))
    assert "Skip loading parameter hm.2.weight, required shapetorch.Size([2, 8, 1, 1])" in text
    result = diagnose_text(text)
    top = result.causes[0]
    assert top.label == "head_size_mismatch" and "80 in the checkpoint, 2 in the model" in top.summary
    loaded = _run_fix(top.fix_code, CenterNet(2), path)
    assert _same(loaded, trained.state_dict(), "wh.")
    # retold in a sentence, the key alone: a candidate, no exit "no error found"
    retold = diagnose_text("it gave me: Skip loading parameter hm.2.weight and so on...")
    assert retold.found and retold.causes and not retold.decided


# -- PyTorch 0.1's copy error, no key named (crnn23) -------------------------------------------

def _load_01(model: nn.Module, state: dict[str, torch.Tensor]) -> str:
    """What PyTorch 0.1's ``load_state_dict`` printed for ``model``: it copied every tensor in
    place and TH refused one of another size, naming neither the key nor the shapes."""
    own = model.state_dict()
    for name, param in state.items():
        if own[name].shape != param.shape:
            return ('Traceback (most recent call last):\n  File "crnn_main.py", line 98, in <module>\n'
                    "    crnn.load_state_dict(torch.load(opt.crnn))\n  File \"/home/u/anaconda3/lib/"
                    "python2.7/site-packages/torch/nn/modules/module.py\", line 335, in "
                    "load_state_dict\n    own_state[name].copy_(param)\nRuntimeError: inconsistent "
                    "tensor size at /py/conda-bld/pytorch/work/torch/lib/TH/generic/THTensorCopy.c:51")
        own[name].copy_(param)
    return ""


class Crnn(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.cnn = nn.Conv2d(1, 8, 3)
        self.rnn = nn.LSTM(8, hidden, bidirectional=True)
        self.embedding = nn.Linear(2 * hidden, 37)


def test_pytorch_01s_copy_error_is_a_size_mismatch_without_a_key() -> None:
    text = _load_01(Crnn(100), Crnn(256).state_dict())
    assert "inconsistent tensor size" in text
    result = diagnose_text(text)
    assert result.found and not result.decided  # was "no load_state_dict error found" (exit 2)
    labels = [c.label for c in result.causes]
    assert labels[:2] == ["architecture_variant", "head_size_mismatch"]
    assert all(not c.fix_code for c in result.causes)  # no key to drop, no code to guess


def test_an_inconsistent_size_outside_a_load_is_no_load_error() -> None:
    assert not diagnose_text("RuntimeError: inconsistent tensor size at THTensorMath.c:87").found
