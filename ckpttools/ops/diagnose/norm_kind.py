"""Another kind of norm layer: the same network built with another ``norm_layer``.

A network that takes its norm layer as a setting (``norm_layer=nn.BatchNorm2d``, ``norm='gn'``,
``group_norm=8``) changes its keys in a fixed way when that setting differs. BatchNorm keeps
running statistics, GroupNorm and LayerNorm do not, and InstanceNorm keeps neither statistics nor
(by default) an affine weight and bias. Convolutions followed by an affine norm are usually built
without a bias (the norm's bias replaces it), so the convolution before each such norm has a
bias on the other side only (pix2pix/CycleGAN's ``use_bias = norm_layer == nn.InstanceNorm2d``).
"""

from __future__ import annotations

import re

from ckpttools.ops.diagnose.evidence import Evidence, Finding

__all__ = ["norm_kind"]

_STATS = frozenset({"running_mean", "running_var", "num_batches_tracked"})
_AFFINE = frozenset({"weight", "bias"})
_LAYER = re.compile(r"(.+)\.(\d+)")
# From text the keys cannot tell a norm-layer setting from code that changed its norms.
_CONFIDENCE = 0.75
# BatchNorm layers by name on one side only, across the network (RAFT's small model built
# without --small: norm_fn 'none' against 'batch'); one module's norm alone is the code's (a
# layer added), so three modules at least; a candidate, the code reads the same (frozen10 raft121)
_NAMED_CONFIDENCE = 0.6
_NAMED_NORM = re.compile(r"(^|\.)(norm\d*|bn\d*|\w*_(norm|bn)\d*|(norm|bn)_\w+)$")
_FEW_NORMS = 3


def _modules(keys: tuple[str, ...]) -> dict[str, set[str]] | None:
    """Module path -> leaves, when every key is a norm layer's tensor in a numbered layer."""
    out: dict[str, set[str]] = {}
    for key in keys:
        module, _, leaf = key.rpartition(".")
        if leaf not in _STATS | _AFFINE or not _LAYER.fullmatch(module):
            return None
        out.setdefault(module, set()).add(leaf)
    return out


def _named_norms(keys: tuple[str, ...]) -> list[str] | None:
    """The modules, when every key is a BatchNorm's tensor in a module named as a norm, with
    affine weights and running statistics, in three modules or more."""
    modules: dict[str, set[str]] = {}
    for key in keys:
        module, _, leaf = key.rpartition(".")
        if leaf not in _STATS | _AFFINE or not _NAMED_NORM.search(module):
            return None
        modules.setdefault(module, set()).add(leaf)
    leaves = set().union(*modules.values()) if modules else set()
    if len(modules) < _FEW_NORMS or not {"weight", "running_mean"} <= leaves:
        return None
    return sorted(modules)


def _previous(module: str) -> str:
    """``model.3`` -> ``model.2``: the layer before a numbered layer in its Sequential."""
    seq, _, index = module.rpartition(".")
    return f"{seq}.{int(index) - 1}"


def _norm_side(norms: tuple[str, ...], biases: tuple[str, ...]) -> list[str] | None:
    """The norm modules, when ``norms`` are norm tensors of two layers or more and ``biases``
    are exactly the biases of the layers just before them (or absent, if each norm layer shows
    running statistics: a norm with statistics against one without)."""
    modules = _modules(norms)
    if not modules or len(modules) < 2:
        return None
    if biases:
        before = {_previous(m) + ".bias" for m in modules if int(m.rpartition(".")[2]) > 0}
        return sorted(modules) if set(biases) == before and len(before) == len(modules) else None
    stats = all(leaves & {"running_mean", "running_var"} and not leaves & _AFFINE
                for leaves in modules.values())
    return sorted(modules) if stats else None


def norm_kind(ev: Evidence) -> Finding | None:
    """The norm layers are of another kind on one side (BatchNorm against InstanceNorm or
    GroupNorm): the same network built with another norm-layer setting.

    Read from the keys alone: on one side, the tensors of numbered norm layers (statistics,
    or affine weight and bias) and nothing else; on the other, nothing or exactly the biases
    of the layers just before them. No size mismatch may be shown (a width changes shapes), and
    not PyTorch 0.4's InstanceNorm message (its statistics are a version's, ``version_buffers``).
    """
    if ev.mismatched or ev.legacy_norm_stats:
        return None
    for side, norms, biases in (("model", ev.missing, ev.unexpected),
                                ("checkpoint", ev.unexpected, ev.missing)):
        modules = _norm_side(norms, biases)
        named = None if modules or biases else _named_norms(norms)
        if named:
            return Finding("architecture_variant", _NAMED_CONFIDENCE, frozenset(norms), {
                "kind": "config", "norm_side": side, "modules": named, "setting": (
                    f"BatchNorm layers ({', '.join(named[:3])}{', ...' if len(named) > 3 else ''}) "
                    f"have tensors in the {side} only and nothing else differs, so the network was "
                    "built with another norm setting (norm_fn, norm_layer: BatchNorm against none)")})
        if modules is None:
            continue
        other = "checkpoint" if side == "model" else "model"
        setting = (f"the norm layers ({', '.join(modules[:3])}{', ...' if len(modules) > 3 else ''}) "
                   f"have tensors in the {side} only"
                   + (f" and the layers before them have biases in the {other} only" if biases else "")
                   + ", so the network was built with another norm_layer (BatchNorm against "
                   "InstanceNorm or GroupNorm)")
        return Finding("architecture_variant", _CONFIDENCE, frozenset(norms) | frozenset(biases),
                       {"kind": "config", "setting": setting, "norm_side": side,
                        "modules": modules})
    return None
