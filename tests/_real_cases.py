"""Real checkpoints written by the real libraries (weights from configs, no downloads), each with
the model spec it is diffed against and what the fix plan must say.

``build(name, dest)`` writes one case under ``dest`` and returns it; the tests and the
before/after comparison in the report use the same builders.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tests import _fw_models as fw
from tests._models import scaled_net, tiny_net

FW = "tests/_fw_models.py"
TINY = "tests/_models.py:TinyNet"
SCALED = "tests/_models.py:ScaledNet"


@dataclass(frozen=True)
class Case:
    """One real checkpoint and the model it should load into.

    Attributes:
        path: the checkpoint (file or folder).
        spec / args: the ``--model`` spec and its ``-a`` arguments.
        kinds: the plan's step kinds, in order.
        strict: the plan makes ``load_state_dict(strict=True)`` succeed.
        left_missing: model keys the plan leaves at their initialisation.
        needs: the library the case needs (``transformers``, ``lightning``, ``timm`` ...).
    """

    path: Path
    spec: str
    args: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()
    strict: bool = True
    left_missing: tuple[str, ...] = ()
    key: str = ""
    framework: str = ""
    needs: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def model(self) -> nn.Module:
        """The model on CPU, built from the spec (what the snippet and the remap output load into)."""
        from ckpttools.ops.model_spec import build_model, parse_model_args

        return build_model(self.spec, parse_model_args(self.args), meta=False)


def _save_pretrained(model: Any, dest: Path) -> Path:
    model.save_pretrained(str(dest))
    return dest


def _bert(dest: Path, name: str) -> Case:
    src, target = name.split("-to-")
    make = {"mlm": fw.bert_mlm, "bare": fw.bert_model, "cls": fw.bert_cls}[src]
    path = _save_pretrained(make(), dest / name)
    spec = f"{FW}:" + {"mlm": "bert_mlm", "bare": "bert_model", "cls": "bert_cls",
                       "cls5": "bert_cls"}[target]
    args = ("num_labels=5",) if target == "cls5" else ()
    table = {
        "mlm-to-bare": (("drop", "strip-prefix"), False, ("pooler.dense.weight", "pooler.dense.bias")),
        "cls-to-bare": (("drop", "strip-prefix"), True, ()),
        "bare-to-mlm": (("drop", "add-prefix", "tie"), False, (
            "cls.predictions.bias", "cls.predictions.transform.dense.weight",
            "cls.predictions.transform.dense.bias", "cls.predictions.transform.LayerNorm.weight",
            "cls.predictions.transform.LayerNorm.bias")),
        "bare-to-cls": (("add-prefix",), False, ("classifier.weight", "classifier.bias")),
        "cls-to-cls5": (("drop",), False, ("classifier.weight", "classifier.bias")),
        "mlm-to-mlm": (("tie",), True, ()),
    }
    kinds, strict, left = table[name]
    return Case(path, spec, args, kinds, strict, left, framework="transformers",
                needs="transformers")


def _lightning(dest: Path) -> Case:
    import lightning

    torch.manual_seed(0)
    lit = fw.lit_net()
    data = torch.utils.data.TensorDataset(torch.randn(8, 3, 4, 4), torch.randint(0, 10, (8,)))
    trainer = lightning.Trainer(max_steps=2, logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False,
                                default_root_dir=str(dest), accelerator="cpu")
    trainer.fit(lit, torch.utils.data.DataLoader(data, batch_size=4))
    path = dest / "lit.ckpt"
    trainer.save_checkpoint(str(path))
    return Case(path, TINY, (), ("drop", "strip-prefix"), True, key="state_dict",
                framework="lightning", needs="lightning")


def _accelerate(dest: Path) -> Case:
    from accelerate import Accelerator

    model = tiny_net()
    opt = torch.optim.AdamW(model.parameters())
    acc = Accelerator(cpu=True)
    model, opt = acc.prepare(model, opt)
    model(torch.randn(2, 3, 4, 4)).sum().backward()
    opt.step()
    out = dest / "accel_state"
    acc.save_state(str(out))
    return Case(out, TINY, (), (), True, needs="accelerate")


def _vit(dest: Path, name: str) -> Case:
    src = fw.tiny_vit()
    path = dest / f"{name}.safetensors"
    from safetensors.torch import save_file

    save_file(src.state_dict(), str(path))
    args = {"vit-classes": ("num_classes=5",), "vit-img": ("img_size=64",),
            "vit-both": ("num_classes=5", "img_size=64")}[name]
    kinds = {"vit-classes": ("drop",), "vit-img": ("resample-pos-embed",),
             "vit-both": ("drop", "resample-pos-embed")}[name]
    left = ("head.weight", "head.bias") if "num_classes=5" in args else ()
    return Case(path, f"{FW}:tiny_vit", args, kinds, not left, left, framework="timm",
                needs="timm")


def _wrapped(dest: Path, name: str) -> Case:
    """compile/ddp, both directions, flat or nested under 'model'."""
    wrapper, direction, layout = name.split("-")
    inner = tiny_net()
    if direction == "ckpt":  # the checkpoint was saved from the wrapped model
        if wrapper == "compile":
            state = torch.compile(inner, backend="eager").state_dict()
        else:
            state = _ddp_state(inner)
        spec, kinds = TINY, ("strip-prefix",)
    else:  # the plain checkpoint goes into a wrapped model
        state = inner.state_dict()
        spec = f"{FW}:" + ("compiled_tiny_net" if wrapper == "compile" else "dataparallel_tiny_net")
        kinds = ("add-prefix",)
    if layout == "nested":
        opt = torch.optim.SGD(inner.parameters(), lr=0.1)
        state = {"model": state, "optimizer": opt.state_dict(), "epoch": 3}
    path = dest / f"{name}.pth"
    torch.save(state, path)
    return Case(path, spec, (), kinds, True, key="model" if layout == "nested" else "",
                framework="torch.compile" if wrapper == "compile" else "ddp")


def _ddp_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state_dict of a real DistributedDataParallel (one gloo process on 127.0.0.1)."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    store = dist.HashStore()
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        return {k: v.clone() for k, v in DistributedDataParallel(model).state_dict().items()}
    finally:
        dist.destroy_process_group()


def _batchnorm_era(dest: Path) -> Case:
    state = dict(tiny_net().state_dict())  # a plain dict, as torch < 0.4.1 wrote it
    del state["bn.num_batches_tracked"]
    path = dest / "bn_era.pth"
    torch.save(state, path)
    return Case(path, TINY, (), ("num-batches-tracked",), True)


def _norm_era(dest: Path, name: str) -> Case:
    """A norm's parameters saved as ``gamma``/``beta`` (TF ports, code before PyTorch 1.0);
    ``layerscale``: beside a LayerScale ``gamma`` that keeps its name."""
    model = scaled_net() if name == "norm-era-layerscale" else tiny_net()
    norm = "ln" if name == "norm-era-layerscale" else "bn"
    old = {"weight": "gamma", "bias": "beta"}
    state = {(f"{norm}.{old[k.rpartition('.')[2]]}" if k.rpartition(".")[0] == norm and
              k.rpartition(".")[2] in old else k): v for k, v in model.state_dict().items()}
    path = dest / f"{name}.pth"
    torch.save(state, path)
    return Case(path, SCALED if norm == "ln" else TINY, (), ("rename",), True,
                extra={"norm": norm})


BUILDERS: dict[str, Callable[[Path], Case]] = {
    **{n: (lambda d, n=n: _bert(d, n)) for n in (
        "mlm-to-bare", "cls-to-bare", "bare-to-mlm", "bare-to-cls", "cls-to-cls5", "mlm-to-mlm")},
    "lightning": _lightning,
    "accelerate": _accelerate,
    **{n: (lambda d, n=n: _vit(d, n)) for n in ("vit-classes", "vit-img", "vit-both")},
    **{n: (lambda d, n=n: _wrapped(d, n)) for n in (
        f"{w}-{d}-{lay}" for w in ("compile", "ddp") for d in ("ckpt", "model")
        for lay in ("flat", "nested"))},
    "batchnorm-era": _batchnorm_era,
    **{n: (lambda d, n=n: _norm_era(d, n)) for n in ("norm-era", "norm-era-layerscale")},
}
VISION = ("vit-classes", "vit-img", "vit-both")


def build(name: str, dest: Path) -> Case:
    """Write case ``name`` under ``dest``."""
    os.makedirs(dest, exist_ok=True)
    return BUILDERS[name](dest)
