"""The generated diagnose corpus: real models, each cause applied for real, the real load error.

For every architecture in :mod:`gen_models` and every cause, a checkpoint and a model are made by
the transformation that causes it (wrap in DataParallel, torch.compile, add a head, change depth or
width, rename an attribute, insert a norm layer, save a backbone only, wrap in a training dict, add
LoRA or dynamic quantization, drop ``num_batches_tracked``, tie weights, profile with thop, put a
backbone's weights into a detector, ...). The installed torch's ``load_state_dict`` makes the text,
which is then presented as people paste it: whole, inside a traceback or a log, JSON-escaped,
truncated after a few keys, or with one side cut; and as PyTorch <= 0.3, mmcv and detectron2 print
the same failure (:mod:`gen_presentations`). The corpus is deterministic: same torch, same texts.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

from tests.ops.diagnose.gen_models import (
    ARCHS, Arch, Detector, add_lora, add_profiler_buffers, dynamic_quantized, modified_network,
    tensor_parallel_shard, to_conv1d, vocab_parallel_shard, weights_in_submodule)
from tests.ops.diagnose.gen_presentations import other_loaders, pasted, printed_result

Pair = tuple[nn.Module, Any]  # (the model loaded into, what was passed to load_state_dict)


@dataclass(frozen=True)
class GeneratedCase:
    """One generated text: ``decidable`` is false when the presentation cut the deciding evidence."""

    name: str
    label: str
    text: str
    decidable: bool = True


def _sd(model: nn.Module) -> dict[str, Any]:
    return dict(model.state_dict())


def _rename(sd: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    return {re.sub(rf"(^|\.){old}(?=\.)", rf"\g<1>{new}", k): v for k, v in sd.items()}


def _trained_optimizer(model: nn.Module) -> dict[str, Any]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    return opt.state_dict()


def _first_module(arch: Arch, model: nn.Module) -> str:
    return next(k for k in _sd(model)).split(".")[0]


def _shift(sd: dict[str, Any]) -> dict[str, Any]:
    """Keys as an older model code wrote them, before a layer was inserted into a Sequential."""
    return {re.sub(r"\.(\d+)\.(?=[a-z_]+$)", lambda m: f".{int(m.group(1)) + 1}.", k): v
            for k, v in sd.items()}


def _index_shift(arch: Arch) -> Pair | None:
    """The checkpoint's Sequential layers sit one index further (a layer the code since removed)."""
    sd = _sd(arch.make())
    shifted = _shift(sd)
    return (arch.make(), shifted) if shifted.keys() != sd.keys() else None


def _legacy_norm_names(arch: Arch) -> Pair | None:
    """Norm layers saved as ``gamma``/``beta`` (TF ports, pre-1.0 code) where torch says weight/bias."""
    model = arch.make()
    norms = {n for n, mod in model.named_modules()
             if isinstance(mod, (nn.LayerNorm, nn.BatchNorm1d, nn.BatchNorm2d))}
    if not norms:
        return None
    old = {"weight": "gamma", "bias": "beta"}
    return model, {(k.rpartition(".")[0] + "." + old[k.rpartition(".")[2]]
                    if k.rpartition(".")[0] in norms and k.rpartition(".")[2] in old else k): v
                   for k, v in _sd(model).items()}


def _detector_variant(arch: Arch, **change: int) -> Pair | None:
    """Another number of feature levels or another box-head width: not a classifier of another size."""
    return (arch.make(**change), _sd(arch.make())) if arch.name == "detr" else None


def _conv1d(arch: Arch) -> Pair | None:
    m = arch.make
    return (m(), _sd(to_conv1d(m()))) if arch.name in ("mlp", "convnet", "encoder") else None


def _norm_inserted(arch: Arch) -> Pair | None:
    if not arch.has_norm_arg:
        return None
    return arch.make(), _sd(arch.make(norm=False))  # the norm layers came after the checkpoint


def _tied(arch: Arch) -> Pair | None:
    if arch.name != "tinylm":
        return None
    return arch.make(), {k: v for k, v in _sd(arch.make()).items() if k != "output.weight"}


def _fused(arch: Arch) -> Pair | None:
    return (arch.make(fused=True), _sd(arch.make())) if arch.name == "tinylm" else None


def _position_ids(arch: Arch) -> Pair | None:
    # transformers 4.31 made position_ids non-persistent: older files carry it, newer ones not
    old = arch.make()
    first = next(mod for mod in old.modules() if isinstance(mod, (nn.Embedding, nn.Linear, nn.Conv2d)))
    first.register_buffer("position_ids", torch.arange(8)[None])
    return arch.make(), _sd(old)


def _backbone_only(arch: Arch) -> Pair | None:
    if arch.name == "tinylm":
        return None  # a headless decoder reads exactly as a tied output: see tied_output
    return arch.make(), {k: v for k, v in _sd(arch.make()).items() if not k.startswith(arch.head + ".")}


def _spectral(arch: Arch) -> Pair | None:
    src = arch.make()
    nn.utils.spectral_norm(dict(src.named_modules())[arch.head])
    return arch.make(), _sd(src)


class _Holder(nn.Module):
    """A LightningModule-style task module holding the network as ``self.model``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.model = net


def _parametrized(arch: Arch) -> Pair | None:
    """The head saved under ``torch.nn.utils.parametrizations.weight_norm`` (torch >= 2.1 keys
    ``parametrizations.weight.original0/1``), loaded into the plain model."""
    src = arch.make()
    head = dict(src.named_modules())[arch.head]
    torch.nn.utils.parametrizations.weight_norm(head)
    return arch.make(), _sd(src)


def _tensor_parallel(arch: Arch) -> Pair | None:
    # only where several Linear layers are cut: a lone classifier cut in two reads as fewer classes
    if arch.name not in ("mlp", "tinylm", "encoder"):
        return None
    return arch.make(), tensor_parallel_shard(arch.make())


def _in_submodule(arch: Arch, newer_file: bool) -> Pair | None:
    """Every Linear's weight moved into a ``lin`` submodule (PyG's GCNConv layout change): an older
    file into the newer code, or the newer file into the older code."""
    newer = weights_in_submodule(arch.make())
    if newer is None:
        return None
    return (arch.make(), _sd(newer)) if newer_file else (newer, _sd(arch.make()))


def _vocab_parallel(arch: Arch) -> Pair | None:
    """Rank 0's file of an 8-way vocabulary-parallel decoder (1024 rows, 128 in the file)."""
    if arch.name != "tinylm":
        return None
    return arch.make(vocab=1024), vocab_parallel_shard(arch.make(vocab=1024), 8)


def _modified(arch: Arch) -> Pair | None:
    """A network modified for training (new modules, 11 input channels) loaded by the original code."""
    if arch.name not in ("convnet", "unet", "vit", "detr"):
        return None
    return arch.make(), _sd(modified_network(arch.make()))


def _causes(arch: Arch) -> dict[str, tuple[str, Callable[[], Pair | None]]]:
    """name -> (label, make (model, state)) for one architecture; ``None`` when it does not apply."""
    m = arch.make
    count = {"num_classes": 7, "vocab": 48}[arch.count]
    other = next(a for a in ARCHS if a.name != arch.name and a.name != "tinylm")
    conv1d, shift, tied, fused = (partial(f, arch) for f in (_conv1d, _norm_inserted, _tied, _fused))
    buffers, backbone_only, spectral = (partial(f, arch) for f in (_position_ids, _backbone_only, _spectral))
    return {
        "dataparallel_checkpoint": ("prefix_added", lambda: (m(), _sd(nn.DataParallel(m())))),
        "compiled_checkpoint": ("prefix_added", lambda: (m(), _sd(torch.compile(m())))),
        "load_into_dataparallel": ("prefix_missing", lambda: (nn.DataParallel(m()), _sd(m()))),
        "load_into_compiled": ("prefix_missing", lambda: (torch.compile(m()), _sd(m()))),
        "training_dict": ("wrapped_checkpoint", lambda: (m(), {
            "epoch": 7, "state_dict": _sd(m()), "optimizer": _trained_optimizer(m()), "best_acc1": 0.5})),
        "training_dict_model": ("wrapped_checkpoint", lambda: (m(), {
            "model": _sd(m()), "iteration": 900, "scheduler": {"last_epoch": 3}})),
        "optimizer_file": ("optimizer_state_passed", lambda: (m(), _trained_optimizer(m()))),
        "other_count": ("head_size_mismatch", lambda: (m(**{arch.count: count}), _sd(m()))),
        "deeper_model": ("architecture_variant", lambda: (m(depth=4), _sd(m()))),
        "shallower_model": ("architecture_variant", lambda: (m(depth=1), _sd(m(depth=3)))),
        "wider_model": ("architecture_variant", lambda: (m(width=16), _sd(m()))),
        "renamed_attribute": ("renamed_keys", lambda: (m(), _rename(_sd(m()), arch.head, "last_layer"))),
        "renamed_first": ("renamed_keys",
                          lambda: (m(), _rename(_sd(m()), _first_module(arch, m()), "input_layer"))),
        "norm_inserted": ("model_code_changed", shift),
        "position_ids_buffer": ("version_buffers", buffers),
        "spectral_norm_head": ("version_buffers", spectral),
        "weight_norm_head": ("version_buffers", partial(_parametrized, arch)),
        "task_module_checkpoint": ("prefix_added", lambda: (m(), _sd(_Holder(m())))),
        "load_into_task_module": ("prefix_missing", lambda: (_Holder(m()), _sd(m()))),
        "tied_output": ("tied_weights", tied),
        "lora_checkpoint": ("adapter_or_quantization", lambda: (m(), _sd(add_lora(m())))),
        "ema_copy": ("ema_weights", lambda: (m(), {**_sd(m()), **{f"model_ema.{k}": v for k, v in _sd(m()).items()}})),
        "fused_qkv": ("fused_projection", fused),
        "conv1d_weights": ("transposed_weights", conv1d),
        "zero3_placeholders": ("partitioned_checkpoint", lambda: (m(), {k: torch.empty(0) for k in _sd(m())})),
        "other_model": ("wrong_model", lambda: (m(), _sd(other.make()))),
        "backbone_only": ("new_task_head", backbone_only),
        "thop_profiled": ("profiler_buffers", lambda: (add_profiler_buffers(m()), _sd(m()))),
        "backbone_into_detector": ("wrong_model", lambda: (Detector(m(), arch.head), _sd(m()))),
        "dynamic_quantized": ("adapter_or_quantization", lambda: (m(), _sd(dynamic_quantized(m())))),
        "tensor_parallel_rank0": ("partitioned_checkpoint", partial(_tensor_parallel, arch)),
        "index_shift": ("model_code_changed", partial(_index_shift, arch)),
        "legacy_gamma_beta": ("renamed_keys", partial(_legacy_norm_names, arch)),
        "weights_in_submodule": ("renamed_keys", partial(_in_submodule, arch, False)),
        "weights_out_of_submodule": ("renamed_keys", partial(_in_submodule, arch, True)),
        "vocab_parallel_rank0": ("partitioned_checkpoint", partial(_vocab_parallel, arch)),
        "modified_network": ("model_code_changed", partial(_modified, arch)),
        "other_levels": ("architecture_variant", partial(_detector_variant, arch, num_levels=5)),
        "box_head_width": ("architecture_variant", partial(_detector_variant, arch, head_width=16)),
    }


def load_error(model: nn.Module, state: Any) -> str:
    """The error a strict ``load_state_dict`` raises, as printed; empty when it loads."""
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        return f"RuntimeError: {e}"
    return ""


def _raise(model: nn.Module, state: Any, strict: bool = True) -> str:
    try:
        result = model.load_state_dict(state, strict=strict)
    except RuntimeError as e:
        return f"RuntimeError: {e}"
    return repr(result)


_TRACE = ('Traceback (most recent call last):\n  File "train.py", line 88, in <module>\n'
          '    model.load_state_dict(checkpoint)\n  File "/opt/conda/lib/python3.11/site-packages/torch/'
          'nn/modules/module.py", line 2593, in load_state_dict\n    raise RuntimeError(\n')


def _cut_keys(text: str, n: int) -> str:
    """The text up to the n-th quoted key of its first list, then ``...`` (a shortened paste)."""
    quotes = [m.end() for m in re.finditer(r'"[^"\n]+",', text)]
    return text[:quotes[n - 1]] + " ..." if len(quotes) > n else text


def _one_side(text: str) -> str:
    """Only the first key list or mismatch line: the rest of the message was not pasted."""
    lines = [ln for ln in text.split("\n") if ln.strip()]
    return "\n".join(lines[:2])


def _other_side(text: str) -> str:
    """The header and the unexpected keys only: the missing list was cut from the paste."""
    lines = [ln for ln in text.split("\n") if ln.strip()]
    return "\n".join([lines[0]] + [ln for ln in lines[1:] if "Unexpected key(s)" in ln][:1])


def presentations(text: str) -> Iterator[tuple[str, str, bool]]:
    """(name, text, decidable): the ways a pasted error differs from what torch printed."""
    yield "whole", text, True
    yield "traceback", _TRACE + text, True
    yield "log", "\n".join(f"[rank0]: 2026-01-0{i % 9 + 1} 12:00:0{i % 10} {line}"
                           for i, line in enumerate(("INFO loading checkpoint\n" + text).split("\n"))), True
    yield "json", json.dumps({"ename": "RuntimeError", "evalue": text.removeprefix("RuntimeError: "),
                              "traceback": ["---", text]}), True
    if text.count('",') > 6:
        yield "truncated", _cut_keys(text, 6), False
    if "Missing key(s)" in text and "Unexpected key(s)" in text:
        yield "one_side", _one_side(text), False
        yield "other_side", _other_side(text), False
    if text.count("size mismatch for") > 2:
        yield "first_mismatches", _one_side(text).rstrip() + "\n" + text.split("\n")[2], False
    if (shape := re.search(r"size mismatch for [^:]+: copying a param with shape torch\.Size\(\[\d*", text)):
        # a title or a cut paste: the first mismatch's key, its shapes cut off
        yield "cut_in_shape", text[:shape.end()], False
        # a paste that starts at the first mismatch's key ("size mismatch for" cut off the front)
        yield "from_key", text[shape.start() + len("size mismatch for "):], False


def generate(archs: tuple[Arch, ...] = ARCHS) -> list[GeneratedCase]:
    """Every case for ``archs``: cause x architecture x presentation, deterministic."""
    cases = []
    for arch in archs:
        for cause, (label, make) in _causes(arch).items():
            pair = make()
            if pair is None:
                continue
            text = _raise(*pair)
            if text.startswith("<All keys matched"):
                continue
            for how, shown, decidable in [*presentations(text), *other_loaders(*pair)]:
                cases.append(GeneratedCase(f"{arch.name}-{cause}-{how}", label, shown, decidable))
            for how, shown in pasted(text):
                cases.append(GeneratedCase(f"{arch.name}-{cause}-{how}", label, shown))
            if "size mismatch" not in text:
                repr_text = _raise(*pair, strict=False)  # print(model.load_state_dict(sd, strict=False))
                for how, shown in printed_result(repr_text):
                    cases.append(GeneratedCase(f"{arch.name}-{cause}-{how}", label, shown))
    return cases
