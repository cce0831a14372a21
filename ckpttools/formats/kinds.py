"""What a subtree of a checkpoint is for, from its keys and name: model weights, an optimizer
state, an LR scheduler, a grad scaler, RNG states, data-loader state or trainer bookkeeping.

Structure wins over names: ``{"state": ..., "param_groups": [...]}`` is an optimizer state
whatever its file is called, so ``optimizer.pt`` inspected alone is never taken for a model.
"""

from __future__ import annotations

from typing import Any

from ckpttools.entries import TensorRef

# keys torch.optim.lr_scheduler state_dicts always carry
_SCHEDULER_KEYS = ({"last_epoch", "base_lrs"}, {"last_batch_iteration"})
# keys of RNG snapshots: HF Trainer rng_state.pth, accelerate random_states_N.pkl, torch's own
_RNG_KEYS = {"cpu", "cuda", "python", "numpy", "torch_manual_seed", "random_state",
             "numpy_random_seed", "torch_cuda_manual_seed", "xla", "mps"}
_SCALER_KEYS = {"scale", "growth_factor", "backoff_factor", "growth_interval"}
# bookkeeping subtrees of trainers, never model weights
BOOKKEEPING = {"callbacks": "callbacks", "loops": "loops", "hyper_parameters": "config",
               "datamodule_hyper_parameters": "config", "hparams": "config"}


def structure_kind(node: Any) -> str | None:
    """The kind a subtree's keys prove, or None when its keys say nothing."""
    if not isinstance(node, dict):
        return None
    keys = set(map(str, node))
    if {"state", "param_groups"} <= keys:
        return "optimizer"
    if any(s <= keys for s in _SCHEDULER_KEYS):
        return "scheduler"
    if keys and keys <= _SCALER_KEYS | {"_growth_tracker"} and "scale" in keys:
        return "scaler"
    if keys and len(keys & _RNG_KEYS) >= 2 and not any(isinstance(v, TensorRef) and "." in k
                                                       for k, v in node.items()):
        return "rng"
    return None


def name_kind(name: str) -> str | None:
    """The kind a subtree's name suggests (``optimizer_states``, ``lr_scheduler``), or None."""
    lowered = name.lower()
    if lowered in BOOKKEEPING:
        return BOOKKEEPING[lowered]
    if "optim" in lowered:
        return "optimizer"
    if "sched" in lowered:
        return "scheduler"
    if "scaler" in lowered or lowered == "native_amp_scaling_state":
        return "scaler"
    if "rng" in lowered or "random_state" in lowered:
        return "rng"
    if "sampler" in lowered or "dataloader" in lowered or lowered == "dl_state_dict":
        return "dataloader"
    return None


def subtree_kind(name: str, node: Any) -> str | None:
    """The kind of a named subtree: its structure first, then its name; None if neither tells."""
    return structure_kind(node) or name_kind(name)
