"""Building a model for metadata work: parameters on the meta device, initialisers skipped.

Only the shapes and dtypes of such a model are read, never its values. Computing on meta tensors
is not free, though: many of torch's meta kernels (``normal_``, ``mul``, ``triu``, ...) are Python
reference implementations that import ``torch._dynamo`` on first use (1-2 s). So the build
follows the two well-kept recipes:

- accelerate's ``init_empty_weights``: a parameter moves to the meta device as it is registered,
  while buffers (a rotary table, a causal mask) are computed on CPU by the ordinary kernels;
- transformers' ``no_init_weights``: the ``torch.nn.init`` functions are no-ops during the build,
  and in-place value writes on meta tensors (``self.weight.data.normal_()`` in a user's
  ``__init__``, transformers' ``_init_weights``) are skipped, as they have nothing to write.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

# transformers' TORCH_INIT_FUNCTIONS: the initialisers of torch.nn.init
INIT_FUNCTIONS = (
    "uniform_", "normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_", "xavier_uniform_",
    "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "trunc_normal_", "orthogonal_",
    "sparse_",
)
# transformers' TORCH_MODULES_TO_PATCH: modules that hold an initialiser under its own name
# (``from torch.nn.init import xavier_uniform_``) besides torch.nn.init itself
MODULES_TO_PATCH = (
    "torch.nn.init", "torch.nn.modules.activation", "torch.nn.modules.transformer",
    "torch.nn.modules.linear", "torch.nn.modules.loss", "torch.nn.modules.batchnorm",
    "torch.nn.modules.conv", "torch.nn.modules.normalization", "torch.nn.modules.rnn",
    "torch.nn.modules.sparse",
)
# Tensor methods that write values in place and never change a tensor's shape, dtype or device:
# on a meta tensor they have nothing to write
VALUE_WRITES = (
    "normal_", "uniform_", "exponential_", "log_normal_", "cauchy_", "geometric_", "bernoulli_",
    "random_", "fill_", "zero_", "copy_", "fill_diagonal_", "masked_fill_", "erfinv_", "clamp_",
    "clamp_min_", "clamp_max_", "clip_", "mul_", "div_", "add_", "sub_", "abs_", "neg_",
    "sqrt_", "exp_",
)


def _skipped_init(tensor: Any, *args: Any, **kwargs: Any) -> Any:
    """An initialiser that leaves ``tensor`` as it is (and returns it, as the real ones do)."""
    return tensor


@contextlib.contextmanager
def _no_init_functions() -> Iterator[None]:
    originals: list[tuple[Any, str, Any]] = []
    try:
        for module_name in MODULES_TO_PATCH:
            module = sys.modules.get(module_name)
            for name in INIT_FUNCTIONS:
                if module is not None and hasattr(module, name):
                    originals.append((module, name, getattr(module, name)))
                    setattr(module, name, _skipped_init)
        yield
    finally:
        for module, name, func in reversed(originals):
            setattr(module, name, func)


@contextlib.contextmanager
def _parameters_on_meta() -> Iterator[None]:
    from torch import nn

    register = nn.Module.register_parameter

    def register_on_meta(module: nn.Module, name: str, param: Any) -> None:
        register(module, name, param)
        if param is not None and not param.is_meta:
            attrs = dict(param.__dict__)
            data = param.detach().to("meta")
            try:
                moved = type(param)(data, requires_grad=param.requires_grad)
            except TypeError:  # a Parameter subclass that wants its attributes, as accelerate has it
                moved = type(param)(data, **{**attrs, "requires_grad": param.requires_grad})
            moved.__dict__.update(attrs)
            module._parameters[name] = moved

    nn.Module.register_parameter = register_on_meta  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = register  # type: ignore[method-assign]


def _skip_meta_writes_mode() -> Any:
    import torch
    from torch.overrides import TorchFunctionMode

    writes = frozenset(getattr(torch.Tensor, name) for name in VALUE_WRITES)

    class SkipMetaWrites(TorchFunctionMode):
        """Skips in-place value writes whose target is a meta tensor; runs everything else."""

        def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
            if func in writes and args and getattr(args[0], "is_meta", False):
                return args[0]
            return func(*args, **(kwargs or {}))

    return SkipMetaWrites()


@contextlib.contextmanager
def meta_build() -> Iterator[None]:
    """Build modules with their parameters on the meta device and no initialiser run.

    Parameters cost no memory and hold no values; buffers are ordinary CPU tensors. A model
    whose ``__init__`` reads a parameter's values back (``.item()``, ``.tolist()``) fails here,
    as it would on the meta device: build that one on CPU.

    Example:
        >>> with meta_build():
        ...     model = torch.nn.Linear(4096, 4096)
        >>> model.weight.is_meta
        True
    """
    with _parameters_on_meta(), _no_init_functions(), _skip_meta_writes_mode():
        yield
