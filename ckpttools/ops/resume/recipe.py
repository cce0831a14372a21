"""Training recipes for ``verify-resume``: loading, validating and running them.

A recipe is a small Python file or module that describes training (see ``load_recipe``). This
module builds its objects, runs its steps, captures and restores the default checkpoint layout,
and reads and writes checkpoints. It imports torch only inside functions.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from ckpttools.errors import (CheckpointNotFoundError, CorruptCheckpointError, SpecError,
                              UnsafeCheckpointError, UnsupportedError)
from ckpttools.formats.sniff import check_readable
from ckpttools.ops.resume.step import default_step
from ckpttools.ops.spec_import import import_target
from ckpttools.units import with_article

REQUIRED = ("build_model", "build_optimizer", "batch")
OPTIONAL = ("build_scheduler", "build_scaler", "save_checkpoint", "load_checkpoint")
SIGNATURES = {
    "build_model": "build_model()", "build_optimizer": "build_optimizer(model)", "batch": "batch(i)",
    "loss": "loss(model, batch)", "train_step": "train_step(model, optimizer, scheduler, batch)",
}

# Well-known keys of the default checkpoint layout (the one PyTorch tutorials teach).
STEP, EPOCH, LOSS = "step", "epoch", "loss"
MODEL = "model_state_dict"
OPTIMIZER = "optimizer_state_dict"
SCHEDULER = "scheduler_state_dict"
SCALER = "scaler_state_dict"
RNG = "rng_state"
PIECES = {"optimizer": OPTIMIZER, "scheduler": SCHEDULER, "scaler": SCALER, "rng": RNG}
DEFAULT_SEED = 0


@dataclass
class TrainObjects:
    """What a recipe builds: model, optimizer, optional scheduler and scaler."""

    model: Any
    optimizer: Any
    scheduler: Any | None
    scaler: Any | None


@dataclass(frozen=True)
class Recipe:
    """A validated recipe.

    Attributes:
        spec: how it was named (path or module), or ``""`` for an object passed in directly.
        namespace: the module (or object) holding the recipe's functions.
    """

    spec: str
    namespace: Any

    def fn(self, name: str) -> Callable[..., Any] | None:
        value = getattr(self.namespace, name, None)
        return value if callable(value) else None

    @property
    def name(self) -> str:
        return self.spec or getattr(self.namespace, "__name__", "recipe")

    @property
    def has_scheduler(self) -> bool:
        return self.fn("build_scheduler") is not None

    @property
    def has_scaler(self) -> bool:
        return self.fn("build_scaler") is not None

    def pieces(self) -> tuple[str, ...]:
        """The optional pieces of state this recipe has, in report order."""
        out = ["optimizer"]
        if self.has_scheduler:
            out.append("scheduler")
        if self.has_scaler:
            out.append("scaler")
        return (*out, "rng")


def load_recipe(spec: str | ModuleType | object) -> Recipe:
    """Load and validate a recipe.

    Args:
        spec: ``path/to/recipe.py``, ``package.module``, or an object (module, namespace) that
            already holds the functions.

    Returns:
        The validated recipe.

    Raises:
        SpecError: the recipe cannot be imported or lacks a required function.

    Example:
        >>> recipe = load_recipe("examples/tutorial_linear.py")
    """
    if isinstance(spec, str):
        recipe = Recipe(spec, _import(spec))
    else:
        recipe = Recipe("", spec)
    for name in REQUIRED:
        if recipe.fn(name) is None:
            raise SpecError(f"{recipe.name}: recipe has no {SIGNATURES[name]}; define it "
                            "(see ckpttools verify-resume --help)")
    if recipe.fn("loss") is None and recipe.fn("train_step") is None:
        raise SpecError(f"{recipe.name}: recipe has neither loss(model, batch) nor "
                        "train_step(model, optimizer, scheduler, batch); define one of them")
    return recipe


def _import(spec: str) -> ModuleType:
    # a recipe is a whole module: package.module or path/to/recipe.py, imported as model specs are
    return import_target(spec, spec, "recipe")


def _call(recipe: Recipe, name: str, *args: Any) -> Any:
    """Call a recipe function; its own exceptions become a one-line SpecError."""
    try:
        return recipe.fn(name)(*args)  # type: ignore[misc]
    except SpecError:
        raise
    except Exception as e:
        # the whole message on one line: the cause is often on a later line
        raise SpecError(f"{recipe.name}: {name}() raised {type(e).__name__}: "
                        f"{' '.join(str(e).split())}") from e


def seed_all(seed: int = DEFAULT_SEED) -> None:
    """Seed torch, numpy (when installed) and python's RNGs, so fresh objects are reproducible."""
    import torch

    torch.manual_seed(seed)
    random.seed(seed)
    np = _numpy()
    if np is not None:
        np.random.seed(seed)


def _numpy() -> Any | None:
    try:
        import numpy
    except ImportError:
        return None
    return numpy


def build_objects(recipe: Recipe) -> TrainObjects:
    """Build model, optimizer, scheduler and scaler, in that order."""
    model = _call(recipe, "build_model")
    optimizer = _call(recipe, "build_optimizer", model)
    scheduler = _call(recipe, "build_scheduler", optimizer) if recipe.has_scheduler else None
    scaler = _call(recipe, "build_scaler") if recipe.has_scaler else None
    return TrainObjects(model, optimizer, scheduler, scaler)


def run_step(recipe: Recipe, objs: TrainObjects, i: int) -> float:
    """Run training step ``i`` (the recipe's ``train_step`` or the default) and return its loss."""
    data = _call(recipe, "batch", i)
    if recipe.fn("train_step") is not None:
        loss = _call(recipe, "train_step", objs.model, objs.optimizer, objs.scheduler, data)
    else:
        loss = default_step(objs, lambda: _call(recipe, "loss", objs.model, data), recipe.name)
    return float(loss.detach().item() if hasattr(loss, "detach") else loss)


def rng_state() -> dict[str, Any]:
    """The current torch, numpy and python RNG states, in the default layout."""
    import torch

    np = _numpy()
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if np is not None:
        state["numpy"] = np.random.get_state()
    return state


def capture_state(objs: TrainObjects, step: int, loss: float | None, *, copy: bool = True) -> dict[str, Any]:
    """The default checkpoint layout for ``objs`` after ``step`` completed steps.

    With ``copy`` (the default) the tensors are deep copies; without, they are the live tensors,
    for a state that is written out at once or taken after the last step.
    """
    import copy as copying

    keep = copying.deepcopy if copy else (lambda x: x)
    state: dict[str, Any] = {
        STEP: step,
        MODEL: keep(objs.model.state_dict()),
        OPTIMIZER: keep(objs.optimizer.state_dict()),
    }
    if objs.scheduler is not None:
        state[SCHEDULER] = keep(objs.scheduler.state_dict())
    if objs.scaler is not None:
        state[SCALER] = keep(objs.scaler.state_dict())
    state[RNG] = rng_state()
    state[LOSS] = loss
    return state


def checkpoint_step(state: dict[str, Any], where: str) -> int:
    """Completed steps recorded in ``state`` (``step``, else ``epoch``)."""
    for key in (STEP, EPOCH):
        value = state.get(key)
        if isinstance(value, int) or (hasattr(value, "item") and getattr(value, "numel", lambda: 0)() == 1):
            return int(value)
    raise CorruptCheckpointError(f"{where}: checkpoint has no integer 'step' or 'epoch'; save the number of "
                                 "completed steps under 'step'")


def missing_pieces(recipe: Recipe, state: dict[str, Any]) -> tuple[str, ...]:
    """The recipe's optional pieces of state that ``state`` lacks."""
    return tuple(p for p in recipe.pieces() if state.get(PIECES[p]) is None)


def apply_state(recipe: Recipe, objs: TrainObjects, state: dict[str, Any], where: str,
                reset: frozenset[str] = frozenset(), seed: int = DEFAULT_SEED, *, copy: bool = True) -> None:
    """Load ``state`` into freshly built ``objs``; pieces in ``reset`` or absent stay fresh.

    Objects are built before any state is loaded, because building a scheduler rewrites the
    optimizer's learning rate. Without ``copy`` the optimizer may keep ``state``'s tensors.
    """
    if not isinstance(state.get(MODEL), dict):
        raise CorruptCheckpointError(f"{where}: checkpoint has no '{MODEL}' (the model state); "
                                     "save model.state_dict() under that key")
    import copy as copying

    keep = copying.deepcopy if copy else (lambda x: x)
    _load(objs, MODEL, state[MODEL], where)
    # Deep copies: Optimizer.load_state_dict keeps the given tensors when dtype and device fit,
    # and training would then change the caller's state in place.
    for piece in ("optimizer", "scheduler", "scaler"):
        key = PIECES[piece]
        if getattr(objs, piece) is not None and piece not in reset and state.get(key) is not None:
            _load(objs, key, keep(state[key]), where)
    seed_all(seed)  # a piece of RNG state that is absent or reset starts from the fixed seed
    if "rng" not in reset and isinstance(state.get(RNG), dict):
        _set_rng(state[RNG], where)


# Which recipe function built each piece, and so what the user changes when a piece does not fit.
BUILDERS = {MODEL: ("model", "build_model()"), OPTIMIZER: ("optimizer", "build_optimizer(model)"),
            SCHEDULER: ("scheduler", "build_scheduler(optimizer)"), SCALER: ("scaler", "build_scaler()")}


def _load(objs: TrainObjects, key: str, value: Any, where: str) -> None:
    """Load one piece; when it does not fit, say which piece and which recipe function to change.

    The file is fine then: the recipe builds other objects than the run that saved it did.
    """
    attr, builder = BUILDERS[key]
    try:
        getattr(objs, attr).load_state_dict(value)
    except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as e:
        detail = _first_sentence(e).replace("Error(s) in loading state_dict for ", "")
        if key == OPTIMIZER and isinstance(value, dict) and isinstance(value.get("param_groups"), list):
            detail = (f"its param groups hold {_group_sizes(value['param_groups'])} parameters, "
                      f"the optimizer {builder} returns {_group_sizes(objs.optimizer.param_groups)}")
        why = " (param groups added during training, parameters frozen since)" if key == OPTIMIZER else ""
        raise SpecError(f"{where}: {key} does not fit the recipe's {builder}: {detail}; make {builder} "
                        f"build what the checkpoint was saved from{why}") from e


def _group_sizes(groups: list[Any]) -> str:
    sizes = [len(g.get("params", ())) if isinstance(g, dict) else "?" for g in groups]
    return f"{len(sizes)} group{'s' if len(sizes) != 1 else ''} of {' + '.join(map(str, sizes))}"


def _set_rng(rng: dict[str, Any], where: str) -> None:
    import torch

    try:
        if rng.get("torch") is not None:
            torch.set_rng_state(rng["torch"])
        if rng.get("python") is not None:
            random.setstate(_as_tuple(rng["python"]))
        np = _numpy()
        if np is not None and rng.get("numpy") is not None:
            np.random.set_state(rng["numpy"])
    except (TypeError, ValueError, RuntimeError) as e:
        raise CorruptCheckpointError(f"{where}: rng_state cannot be restored: {e}") from e


def _as_tuple(value: Any) -> Any:
    """``random.setstate`` needs tuples; some serialisers turn them into lists."""
    if isinstance(value, (list, tuple)):
        return tuple(_as_tuple(v) for v in value)
    return value


@contextmanager
def _numpy_rng_globals() -> Iterator[None]:
    """Allow exactly what ``np.random.get_state()`` pickles into a weights_only load."""
    import torch

    np = _numpy()
    if np is None:
        yield
        return
    core = getattr(np, "_core", None) or np.core  # NOTE(numpy<2): the module was numpy.core
    allowed = [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]
    with torch.serialization.safe_globals(allowed):
        yield


def read_checkpoint(recipe: Recipe, path: str, *, trust: bool = False, lazy: bool = True) -> dict[str, Any]:
    """Read a checkpoint: the recipe's ``load_checkpoint`` when it has one, else ``torch.load``.

    Without ``trust`` the load is ``weights_only=True`` plus numpy's RNG state types. With
    ``lazy``, a zip checkpoint is memory-mapped (tensors paged in when used).

    Raises:
        CheckpointNotFoundError, UnsafeCheckpointError, CorruptCheckpointError, SpecError.
    """
    if not Path(path).exists():
        raise CheckpointNotFoundError(f"{path}: no such file or directory; check the path")
    if recipe.fn("load_checkpoint") is not None:
        state = _call(recipe, "load_checkpoint", path)
    else:
        check_readable(path)  # missing, empty, a FIFO: one line naming the file, before torch
        if Path(path).is_dir():
            raise UnsupportedError(f"{path}: a folder; pass the torch.save file, or give the recipe a "
                                   "load_checkpoint(path) that reads the folder")
        state = _torch_load(path, trust, lazy)
    if not isinstance(state, dict):
        raise CorruptCheckpointError(f"{path}: checkpoint is {with_article(type(state).__name__)}, not a dict of state; "
                                     "save a dict with model_state_dict, optimizer_state_dict, step")
    return state


def _torch_load(path: str, trust: bool, lazy: bool = True) -> Any:
    import pickle
    import zipfile

    import torch

    mmap = lazy and Path(path).is_file() and zipfile.is_zipfile(path)  # torch mmaps zip archives only
    try:
        if trust:
            return torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
        with _numpy_rng_globals():
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:
        _explain_failed_load(path, e)
        if isinstance(e, pickle.UnpicklingError):
            raise UnsafeCheckpointError(f"{path}: torch.load(weights_only=True) refused it "
                                        f"({_first_sentence(e)}); rerun with --trust if you trust "
                                        "the file") from e
        raise CorruptCheckpointError(f"{path}: torch.load failed ({_first_sentence(e)}); "
                                     "check that the file is a complete torch.save file") from e


def _explain_failed_load(path: str, cause: Exception) -> None:
    """When torch.load fails, ckpttools' own reader names what is wrong with the file (not a
    checkpoint, truncated, ...) in one line; it raises that error, else returns."""
    from ckpttools.errors import CkptError
    from ckpttools.formats.registry import open_checkpoint

    try:
        with open_checkpoint(path) as reader:
            reader.entries()
    except CkptError as e:
        raise type(e)(str(e)) from cause


def _first_sentence(e: Exception) -> str:
    """torch's messages run to several lines and sentences; the first says what happened."""
    text = " ".join(str(e).split()) or type(e).__name__
    first = text.split(". ")[0]
    return first if len(first) <= 160 else first[:160].rsplit(" ", 1)[0] + " ..."


def write_checkpoint(recipe: Recipe, path: str, state: dict[str, Any]) -> None:
    """Write ``state`` with the recipe's ``save_checkpoint``, else ``torch.save``."""
    if recipe.fn("save_checkpoint") is not None:
        _call(recipe, "save_checkpoint", path, state)
    else:
        import torch

        torch.save(state, path)
