"""Model specs: ``package.module:attr`` / ``path/file.py:attr`` plus arguments -> ``nn.Module``,
built on the meta device, and the state_dict signature a model expects.

A model can also be given as a JSON signature file (``ckpttools inspect --format json`` of a
reference checkpoint), so CI can compare without importing user code.
"""

from __future__ import annotations

import math
import json
import os
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ckpttools.errors import SpecError
from ckpttools.ops.spec_import import import_target

if TYPE_CHECKING:
    from torch import nn

Kind = Literal["parameter", "buffer", "extra_state"]
# the state_dict entry of a module overriding get_extra_state (torch.nn.modules.module)
EXTRA_STATE = "_extra_state"


@dataclass(frozen=True)
class ModelKey:
    """One key of the state_dict a model expects."""

    key: str
    shape: tuple[int, ...]
    dtype: str
    kind: Kind

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class ModelSignature:
    """What ``model.load_state_dict`` expects.

    Attributes:
        name: the spec or file it came from.
        keys: the model's state_dict keys in order (persistent parameters and buffers).
        non_persistent: buffers that are not in the state_dict (never "missing").
        ties: groups of state_dict keys that are one shared parameter (``lm_head.weight`` tied
            to ``embed.weight``); the first of each group is the owner.
        frozen: the parameters' state_dict keys with ``requires_grad=False``; None when the
            signature does not say (one read from JSON).
    """

    name: str
    keys: tuple[ModelKey, ...]
    non_persistent: tuple[str, ...] = ()
    ties: tuple[tuple[str, ...], ...] = ()
    frozen: tuple[str, ...] | None = None

    def by_key(self) -> dict[str, ModelKey]:
        """The keys as a dict."""
        return {k.key: k for k in self.keys}


def parse_model_args(pairs: Iterable[str]) -> dict[str, Any]:
    """``["num_classes=10", "name=resnet"]`` -> ``{"num_classes": 10, "name": "resnet"}``.

    Values are parsed as JSON, else taken as strings.

    Raises:
        SpecError: an item has no ``=``.
    """
    out: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise SpecError(f"-a {pair}: expected NAME=VALUE; e.g. -a num_classes=10")
        try:
            out[name.strip()] = json.loads(value)
        except ValueError:
            out[name.strip()] = value
    return out


def _load_attr(spec: str) -> Any:
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise SpecError(f"{spec}: model spec must be package.module:attr or path/file.py:attr")
    module = import_target(target, spec, "model spec")
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise SpecError(f"{spec}: {target} has no attribute {attr}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise SpecError(f"{spec}: {attr} is not a class or callable")
    return obj


def _call(factory: Any, spec: str, kwargs: Mapping[str, Any]) -> nn.Module:
    from torch import nn

    try:
        model = factory(**kwargs)
    except TypeError as e:
        raise SpecError(f"{spec}: {e}; pass arguments with -a NAME=VALUE") from e
    if not isinstance(model, nn.Module):
        raise SpecError(f"{spec}: returned {type(model).__name__}, not an nn.Module")
    return model


def build_model(spec: str, kwargs: Mapping[str, Any] | None = None, *,
                meta: bool = True) -> nn.Module:
    """Build the model a spec names, on the meta device so that its size costs no memory.

    Args:
        spec: ``package.module:attr`` or ``path/to/file.py:attr``; ``attr`` is an ``nn.Module``
            class or a callable returning one.
        kwargs: keyword arguments for ``attr``.
        meta: build on the meta device with the weight initialisers skipped (``meta_build``);
            when that fails the model is built on CPU, initialisers and all, with a warning.

    Returns:
        The model.

    Raises:
        SpecError: the spec cannot be imported, called, or does not give an ``nn.Module``.

    Example:
        >>> model = build_model("torchvision.models:resnet18", {"num_classes": 10})
    """
    from ckpttools.ops.meta_build import meta_build

    factory = _load_attr(spec)
    kwargs = dict(kwargs or {})
    if meta:
        try:
            with meta_build():
                return _call(factory, spec, kwargs)
        except SpecError:
            raise
        except Exception as e:
            warnings.warn(f"{spec}: cannot be built on the meta device ({type(e).__name__}: {e}); "
                          "building it on CPU", stacklevel=2)
    try:
        return _call(factory, spec, kwargs)
    except SpecError:
        raise
    except Exception as e:
        raise SpecError(f"{spec}: building the model failed: {type(e).__name__}: {e}") from e


def signature_of_model(model: nn.Module, name: str = "") -> ModelSignature:
    """The state_dict signature of a model: keys, shapes, dtypes, kinds, ties, non-persistent
    buffers. Reads no tensor data (works on the meta device)."""
    state = model.state_dict(keep_vars=True)
    params = dict(model.named_parameters(remove_duplicate=False))
    groups: dict[int, list[str]] = {}
    for key, p in params.items():
        # meta tensors have no storage address; the Parameter object itself is what is shared
        groups.setdefault(id(p), []).append(key)
    keys = tuple(
        ModelKey(k, tuple(t.shape), str(t.dtype).removeprefix("torch."),
                 "parameter" if k in params else "buffer")
        if hasattr(t, "shape") else ModelKey(k, (), "object", "extra_state")
        for k, t in state.items()
        if hasattr(t, "shape") or (t is not None and k.rpartition(".")[2] == EXTRA_STATE))
    buffers = {k for k, _ in model.named_buffers(remove_duplicate=False)}
    non_persistent = tuple(sorted(buffers - set(state)))
    ties = tuple(tuple(g) for g in groups.values() if len([k for k in g if k in state]) > 1)
    frozen = tuple(k for k, p in params.items() if not p.requires_grad and k in state)
    return ModelSignature(name or type(model).__name__, keys, non_persistent, ties, frozen)


def _signature_items(data: Any) -> list[Mapping[str, Any]]:
    if isinstance(data, Mapping) and isinstance(data.get("tensors"), list):
        return list(data["tensors"])
    if isinstance(data, Mapping) and isinstance(data.get("keys"), list):
        return list(data["keys"])
    if isinstance(data, list):
        return list(data)
    if isinstance(data, Mapping) and all(isinstance(v, Mapping) for v in data.values()):
        return [{"key": k, **v} for k, v in data.items()]
    raise ValueError("expected a 'tensors' list")


def signature_from_json(path: str) -> ModelSignature:
    """A model signature from JSON: ``ckpttools inspect --format json`` of a reference checkpoint
    (its ``tensors`` list of ``{"key", "dtype", "shape"}``), or ``{key: {"shape", "dtype"}}``.

    Raises:
        SpecError: the file is missing or not such JSON.
    """
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        items = _signature_items(data)
        keys = tuple(ModelKey(str(it["key"]), tuple(int(d) for d in it["shape"]),
                              str(it.get("dtype", "float32")).removeprefix("torch."),
                              "buffer" if it.get("kind") == "buffer" else "parameter")
                     for it in items)
    except OSError as e:
        raise SpecError(f"{path}: cannot read the signature file: {e.strerror}") from e
    except (ValueError, KeyError, TypeError) as e:
        raise SpecError(f"{path}: not a model signature ({e}); "
                        "write one with ckpttools inspect REF --format json") from e
    return ModelSignature(path, _strip_container(keys))


def _strip_container(keys: tuple[ModelKey, ...]) -> tuple[ModelKey, ...]:
    """A signature of a training checkpoint holds its optimizer too: keep the state_dict."""
    from ckpttools.ops.state_dict import NON_MODEL_KEYS, STATE_DICT_KEYS

    firsts = {k.key.split(".", 1)[0] for k in keys}
    if not firsts & set(NON_MODEL_KEYS):
        return keys
    for name in STATE_DICT_KEYS:
        if name in firsts:
            return tuple(ModelKey(k.key[len(name) + 1:], k.shape, k.dtype, k.kind)
                         for k in keys if k.key.startswith(name + "."))
    return keys


def load_model_signature(spec: str, kwargs: Mapping[str, Any] | None = None) -> ModelSignature:
    """The signature for a ``--model`` value: a JSON signature file or a model spec.

    Raises:
        SpecError: see ``build_model`` and ``signature_from_json``.
    """
    if spec.endswith(".json") and ":" not in os.path.basename(spec):
        return signature_from_json(spec)
    return signature_of_model(build_model(spec, kwargs), spec)


def load_model(spec: str, kwargs: Mapping[str, Any] | None = None) -> nn.Module | ModelSignature:
    """The model for a ``--model`` value: a JSON signature file, or the module a spec builds on
    the meta device (its classes tell which framework's advice applies).

    Raises:
        SpecError: see ``build_model`` and ``signature_from_json``.
    """
    if spec.endswith(".json") and ":" not in os.path.basename(spec):
        return signature_from_json(spec)
    return build_model(spec, kwargs)
