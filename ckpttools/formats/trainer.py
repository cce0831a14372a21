"""Trainer layouts: what HF Trainer, accelerate, Lightning, DeepSpeed and DCP write, as one checkpoint.

``describe_trainer(reader)`` recognises a layout from its files and keys (never from a folder
name alone) and returns a ``TrainerLayout``: the framework, step, epoch, best metric and every
piece with its kind (model, optimizer, scheduler, scaler, rng per rank, dataloader state,
trainer state), plus what a resume needs that is missing. Everything comes from metadata;
a Lightning ``best_model_score`` (a 0-d tensor) is read from its 4 or 8 bytes without torch.
"""

from __future__ import annotations

import json
import os
import re
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ckpttools.entries import TensorEntry, TensorRef

if TYPE_CHECKING:
    from ckpttools.formats.base import CheckpointReader

HF_TRAINER, ACCELERATE, LIGHTNING, DEEPSPEED, DCP = (
    "hf-trainer", "accelerate", "lightning", "deepspeed", "dcp")
# what resuming needs, per framework; a piece the framework never writes is not listed
RESUME_NEEDS = {
    HF_TRAINER: ("model", "optimizer", "scheduler", "rng", "trainer_state"),
    ACCELERATE: ("model", "optimizer", "rng"),
    LIGHTNING: ("model", "optimizer", "loops"),
    DEEPSPEED: ("model", "optimizer", "scheduler"),
    DCP: ("model",),
}
# where each kind lives, to name what is missing ("rng: missing (no rng_state.pth)")
EXPECTED = {
    HF_TRAINER: {"model": "model.safetensors", "optimizer": "optimizer.pt",
                 "scheduler": "scheduler.pt", "scaler": "scaler.pt", "rng": "rng_state.pth",
                 "trainer_state": "trainer_state.json"},
    ACCELERATE: {"model": "model.safetensors", "optimizer": "optimizer.bin",
                 "scheduler": "scheduler.bin", "scaler": "scaler.pt",
                 "rng": "random_states_0.pkl"},
    LIGHTNING: {"model": "state_dict", "optimizer": "optimizer_states", "scheduler": "lr_schedulers",
                "loops": "loops", "rng": "Lightning saves no RNG state in a .ckpt"},
    DEEPSPEED: {"optimizer": "zero_pp_rank_*_optim_states.pt", "scheduler": "lr_scheduler",
                "rng": "DeepSpeed saves no RNG state"},
    # dcp.save stores the dict it is given: name what that dict lacked, not a file
    DCP: {k: f"no {k} state among the top-level keys dcp.save was given"
          for k in ("optimizer", "scheduler", "rng", "scaler", "dataloader")},
}


def unsaved_rng(framework: str) -> str | None:
    """Why a framework's checkpoint holds no RNG state (Lightning, DeepSpeed never write it), so
    that randomness after a resume restarts from the seed; None where it saves the RNG."""
    if "rng" in RESUME_NEEDS.get(framework, ("rng",)):
        return None
    return EXPECTED.get(framework, {}).get("rng")
# file name patterns of HF Trainer and accelerate pieces -> kind; the rank is group "rank"
_FILE_KINDS = (
    (r"(model|pytorch_model)(_\d+)?(-\d+-of-\d+)?\.(safetensors|bin)", "model"),
    (r"optimizer(_\d+)?\.(pt|bin)", "optimizer"),
    (r"scheduler(_\d+)?\.(pt|bin)", "scheduler"),
    (r"scaler\.pt", "scaler"),
    (r"rng_state(_(?P<rank>\d+))?\.pth", "rng"),
    (r"random_states_(?P<rank>\d+)\.pkl", "rng"),
    (r"(sampler|dl_state_dict)(_\d+)?\.bin", "dataloader"),
    (r"custom_checkpoint_\d+\.pkl", "custom"),
    (r"trainer_state\.json", "trainer_state"),
    (r"training_args\.bin", "training_args"),
    (r"(generation_)?config\.json", "config"),
)
DS_FILE = re.compile(r"(zero_pp_rank_(?P<rank>\d+)_)?mp_rank_(?P<mp>\d+)_(?P<what>model|optim)_states\.pt")


@dataclass(frozen=True)
class Piece:
    """One part of a trainer checkpoint.

    Attributes:
        name: the file name (``optimizer.pt``) or key (``optimizer_states.0``) it lives in.
        kind: ``model``, ``optimizer``, ``scheduler``, ``scaler``, ``rng``, ``dataloader``,
            ``loops``, ``callbacks``, ``trainer_state``, ``training_args``, ``config``, ``custom``.
        key: the reader key of the piece ("" when the reader does not show it, e.g. a JSON file).
        rank: the process rank it belongs to, when the framework writes one per rank.
    """

    name: str
    kind: str
    key: str = ""
    rank: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "key": self.key, "rank": self.rank}


@dataclass(frozen=True)
class TrainerLayout:
    """What a trainer wrote, read as one checkpoint.

    Attributes:
        framework: ``hf-trainer``, ``accelerate``, ``lightning``, ``deepspeed`` or ``dcp``.
        path: the checkpoint as given.
        step: the optimizer step it was saved at, when recorded.
        epoch: the epoch (fractional for HF Trainer), when recorded.
        best_metric: the best monitored value so far, when recorded.
        best_checkpoint: where the best checkpoint is, when recorded.
        pieces: every piece, in a stable order.
        missing: the kinds a resume needs that no piece provides.
        ranks: how many processes wrote it (1 for single-process layouts).
        notes: facts about the layout a user should know (a stage, a monitored metric).
    """

    framework: str
    path: str
    step: int | None
    epoch: float | None
    best_metric: float | None
    best_checkpoint: str | None
    pieces: tuple[Piece, ...]
    missing: tuple[str, ...]
    ranks: int = 1
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """True when every piece a resume needs is present."""
        return not self.missing

    def kinds(self) -> tuple[str, ...]:
        """The kinds present, sorted."""
        return tuple(sorted({p.kind for p in self.pieces}))

    def pieces_of(self, kind: str) -> tuple[Piece, ...]:
        return tuple(p for p in self.pieces if p.kind == kind)

    @property
    def model_key(self) -> str | None:
        """The reader key of the model weights (the default state_dict), if one piece holds them."""
        keys = [p.key for p in self.pieces_of("model") if p.key]
        return keys[0] if len(keys) == 1 else None

    def to_dict(self) -> dict[str, Any]:
        return {"framework": self.framework, "step": self.step, "epoch": self.epoch,
                "best_metric": self.best_metric, "best_checkpoint": self.best_checkpoint,
                "ranks": self.ranks, "pieces": [p.to_dict() for p in self.pieces],
                "kinds": list(self.kinds()), "missing": list(self.missing),
                "notes": list(self.notes)}


def missing_for(framework: str, pieces: list[Piece], extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    have = {p.kind for p in pieces}
    return tuple(k for k in RESUME_NEEDS[framework] + extra if k not in have)


def step_folder(path: str) -> str | None:
    """The ``global_stepN`` folder a ZeRO checkpoint path means (itself, or ``latest``'s tag)."""
    if not os.path.isdir(path):
        return None
    latest = os.path.join(path, "latest")
    if os.path.isfile(latest):
        try:
            with open(latest, encoding="utf-8") as f:
                tag = f.read().strip()
        except (OSError, UnicodeDecodeError):
            return None
        inner = os.path.join(path, tag)
        return inner if tag and _has_states(inner) else None
    return path if _has_states(path) else None


def _has_states(folder: str) -> bool:
    return os.path.isdir(folder) and any(DS_FILE.fullmatch(n) for n in os.listdir(folder))


def is_deepspeed(path: str) -> bool:
    """A ZeRO checkpoint: ``latest`` + tag folder, or a folder of ZeRO optimizer states."""
    return step_folder(path) is not None


def file_kind(name: str) -> tuple[str, int | None] | None:
    """``(kind, rank)`` of an HF Trainer / accelerate file name, or None."""
    for pattern, kind in _FILE_KINDS:
        m = re.fullmatch(pattern, name)
        if m:
            rank = m.groupdict().get("rank")
            return kind, int(rank) if rank is not None else (0 if kind == "rng" else None)
    return None


def is_trainer_folder(path: str) -> bool:
    """A folder a trainer wrote as one checkpoint (HF Trainer, accelerate, DeepSpeed ZeRO)."""
    try:
        names = os.listdir(path)
    except OSError:
        return False
    return "trainer_state.json" in names or _is_accelerate(set(names)) or is_deepspeed(path)


def trainer_children(path: str) -> list[str]:
    """Sub-folders of ``path`` that are trainer checkpoints (an HF ``output_dir``'s
    ``checkpoint-N``), in step order."""
    try:
        names = os.listdir(path)
    except OSError:
        return []
    found = [n for n in names if is_trainer_folder(os.path.join(path, n))]
    return sorted(found, key=lambda n: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", n)])


def _is_accelerate(names: set[str]) -> bool:
    """accelerate's save_state: RNG files per process, or its optimizer.bin beside the model."""
    return any(re.fullmatch(r"random_states_\d+\.pkl", n) for n in names) or (
        "optimizer.bin" in names and any(file_kind(n) == ("model", None) for n in names))


def describe_trainer(reader: CheckpointReader) -> TrainerLayout | None:
    """The trainer layout of an open checkpoint, or None when it is not one a trainer wrote.

    Args:
        reader: an open checkpoint (a folder, a Lightning ``.ckpt``, a DeepSpeed or DCP folder).

    Returns:
        A ``TrainerLayout``, or None for a plain state_dict or training dict.
    """
    path = reader.path
    if os.path.isdir(path):
        names = set(os.listdir(path))
        if getattr(reader, "format", None) is not None and reader.format.value == "dcp":
            return _dcp(reader, names)
        if hasattr(reader, "deepspeed_layout"):
            return reader.deepspeed_layout()  # type: ignore[no-any-return]
        if "trainer_state.json" in names:
            return _hf_trainer(reader, names)
        if _is_accelerate(names):
            return _accelerate(reader, names)
        return None
    tree = reader.tree()
    if isinstance(tree, dict) and "pytorch-lightning_version" in tree:
        return _lightning(reader, tree)
    return None


def _folder_pieces(reader: CheckpointReader, names: set[str]) -> list[Piece]:
    shown = set(getattr(reader, "files", lambda: ())())
    pieces = []
    for name in sorted(names):
        found = file_kind(name)
        if found:
            kind, rank = found
            pieces.append(Piece(name, kind, name if name in shown else "", rank))
    return pieces


def _hf_trainer(reader: CheckpointReader, names: set[str]) -> TrainerLayout:
    pieces = _folder_pieces(reader, names)
    state = _json(os.path.join(reader.path, "trainer_state.json"))
    epoch = state.get("epoch")
    best = state.get("best_metric")
    notes = []
    if state.get("best_model_checkpoint"):
        notes.append(f"best checkpoint {state['best_model_checkpoint']}")
    ranks = max((p.rank or 0) + 1 for p in pieces if p.kind == "rng") if any(
        p.kind == "rng" for p in pieces) else 1
    return TrainerLayout(HF_TRAINER, reader.path, _int(state.get("global_step")),
                         float(epoch) if isinstance(epoch, (int, float)) else None,
                         float(best) if isinstance(best, (int, float)) else None,
                         state.get("best_model_checkpoint"), tuple(pieces),
                         missing_for(HF_TRAINER, pieces), ranks, tuple(notes))


def _accelerate(reader: CheckpointReader, names: set[str]) -> TrainerLayout:
    pieces = _folder_pieces(reader, names)
    step = None
    notes = []
    for p in pieces:
        if p.kind == "scheduler" and p.key:
            # accelerate records no step; the scheduler's own count is the best evidence
            last = _object(reader, f"{p.key}.last_epoch")
            if isinstance(last, int):
                step = last
                notes.append(f"step from {p.name} last_epoch (accelerate records no step)")
                break
    ranks = len([p for p in pieces if p.kind == "rng"]) or 1
    return TrainerLayout(ACCELERATE, reader.path, step, None, None, None, tuple(pieces),
                         missing_for(ACCELERATE, pieces), ranks, tuple(notes))


def _lightning(reader: CheckpointReader, tree: dict[Any, Any]) -> TrainerLayout:
    pieces = [Piece("state_dict", "model", "state_dict")] if "state_dict" in tree else []
    for i, _ in enumerate(tree.get("optimizer_states") or []):
        pieces.append(Piece(f"optimizer_states.{i}", "optimizer", f"optimizer_states.{i}"))
    for i, _ in enumerate(tree.get("lr_schedulers") or []):
        pieces.append(Piece(f"lr_schedulers.{i}", "scheduler", f"lr_schedulers.{i}"))
    for name, kind in (("loops", "loops"), ("callbacks", "callbacks"),
                       ("native_amp_scaling_state", "scaler"), ("hyper_parameters", "config"),
                       ("datamodule_hyper_parameters", "config")):
        if name in tree:
            pieces.append(Piece(name, kind, name))
    best, best_path, notes = _lightning_best(reader, tree.get("callbacks"))
    extra = ("scheduler",) if tree.get("lr_schedulers") else ()
    epoch = tree.get("epoch")
    return TrainerLayout(LIGHTNING, reader.path, _int(tree.get("global_step")),
                         float(epoch) if isinstance(epoch, int) else None, best, best_path,
                         tuple(pieces), missing_for(LIGHTNING, pieces, extra), 1, tuple(notes))


def _lightning_best(reader: CheckpointReader, callbacks: Any) -> tuple[float | None, str | None,
                                                                        list[str]]:
    if not isinstance(callbacks, dict):
        return None, None, []
    for name, state in callbacks.items():
        if str(name).startswith("ModelCheckpoint") and isinstance(state, dict):
            score = state.get("best_model_score")
            value = read_scalar(reader, score.key) if isinstance(score, TensorRef) else None
            path = state.get("best_model_path")
            notes = [f"monitor {state.get('monitor')}"] if state.get("monitor") else []
            return value, path if isinstance(path, str) and path else None, notes
    return None, None, []


def _dcp(reader: CheckpointReader, names: set[str]) -> TrainerLayout:
    from ckpttools.formats.kinds import subtree_kind

    tree = reader.tree()
    pieces = []
    if isinstance(tree, dict):
        for key, node in tree.items():
            kind = subtree_kind(str(key), node) or ("model" if isinstance(node, dict) else None)
            if kind is not None:
                pieces.append(Piece(str(key), kind, str(key)))
    ranks = len([n for n in names if n.endswith(".distcp")]) or 1
    if not pieces:  # a bare model state_dict saved with DCP
        pieces.append(Piece("(root)", "model", ""))
    return TrainerLayout(DCP, reader.path, _int(tree.get("step")) if isinstance(tree, dict) else None,
                         None, None, None, tuple(pieces), missing_for(DCP, pieces), ranks,
                         (f"{ranks} .distcp files (ranks)",))


def read_scalar(reader: CheckpointReader, key: str) -> float | None:
    """A 0-d or 1-element float tensor's value from its raw bytes, without torch; else None."""
    entry = next((e for e in reader.tensor_entries() if e.key == key), None)
    if not isinstance(entry, TensorEntry) or entry.numel != 1:
        return None
    fmt = {"float32": "<f", "float64": "<d"}.get(entry.dtype)
    raw = reader.raw_source(key)
    if fmt is None or raw is None:
        return None
    with open(raw.path, "rb") as f:
        f.seek(raw.offset)
        data = f.read(struct.calcsize(fmt))
    return float(struct.unpack(fmt, data)[0]) if len(data) == struct.calcsize(fmt) else None


def _object(reader: CheckpointReader, key: str) -> Any:
    return next((e.value for e in reader.object_entries() if e.key == key), None)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _json(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}

