"""Reader for DeepSpeed ZeRO checkpoints (stage 1-3): one fp32 state_dict from every rank's
partitions, one tensor at a time.

A ZeRO folder holds ``latest`` (the tag) and ``global_stepN/``, whose
``[zero_pp_rank_R_]mp_rank_00_model_states.pt`` record the parameter names and shapes
(``param_shapes``), buffers, frozen and shared parameters, and whose
``zero_pp_rank_R_mp_rank_00_optim_states.pt`` hold each rank's fp32 master weights as flat
partitions (``single_partition_of_fp32_groups`` for stage 1/2, ``fp32_flat_groups`` for stage 3).
The layout follows DeepSpeed's ``zero_to_fp32.py``; unlike it, ``load(name)`` reads only the byte
ranges of that parameter from each rank's file, so converting a model never holds more than one
tensor in memory. Pickles are read with the restricted walker (no DeepSpeed import, no ``--trust``).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ckpttools.entries import Entry, RawSource, TensorEntry, TensorRef
from ckpttools.errors import CorruptCheckpointError, UnsupportedError
from ckpttools.formats.base import CheckpointReader, Format
from ckpttools.formats.ranges import read_pieces
from ckpttools.formats.single_file import open_file
from ckpttools.formats.trainer import DEEPSPEED, Piece, TrainerLayout, missing_for, step_folder
from ckpttools.formats.trainer import DS_FILE as _FILE

if TYPE_CHECKING:
    import torch

ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}


@dataclass(frozen=True)
class _Segment:
    """``count`` elements of a flat partition, as a byte range of one file."""

    path: str
    offset: int
    count: int


class _Flat:
    """A virtual flat vector made of partitions laid end to end."""

    def __init__(self, segments: list[_Segment]) -> None:
        self.segments = segments
        self.numel = sum(s.count for s in segments)

    def ranges(self, start: int, count: int, itemsize: int) -> list[tuple[str, int, int]]:
        """``(path, byte offset, byte length)`` of elements ``[start, start + count)``."""
        out, base = [], 0
        for s in self.segments:
            lo, hi = max(start, base), min(start + count, base + s.count)
            if lo < hi:
                out.append((s.path, s.offset + (lo - base) * itemsize, (hi - lo) * itemsize))
            base += s.count
        if sum(n for *_, n in out) != count * itemsize:
            raise CorruptCheckpointError(f"{self.segments[0].path}: the ZeRO partitions hold "
                                         f"{self.numel} elements, fewer than the parameters need")
        return out


class DeepSpeedReader(CheckpointReader):
    """Reads a DeepSpeed ZeRO checkpoint as the consolidated fp32 state_dict."""

    format = Format.DEEPSPEED

    def __init__(self, path: str | os.PathLike[str], *, trust: bool = False) -> None:
        super().__init__(path, trust=trust)
        folder = step_folder(self.path)
        if folder is None:
            raise CorruptCheckpointError(f"{self.path}: no ZeRO states found; "
                                         "give the global_stepN folder or its parent")
        self.folder = folder
        self._files = self._state_files(folder)
        self._members: dict[str, CheckpointReader] = {}
        self._plan: dict[str, tuple[str, Any]] = {}
        try:
            self._model = self._member(self._files["model"][0]).tree()
            self._optims = [self._member(f).tree().get("optimizer_state_dict") or {}
                            for f in self._files["optim"]]
            self._check_ranks()
            self._entries = self._build()
        except BaseException:
            self.close()  # the member files opened so far
            raise

    def _check_ranks(self) -> None:
        """Every rank's optimizer states are there (a save cut short leaves some out)."""
        count = self._optims[0].get("partition_count") if self._optims else None
        count = max(count) if isinstance(count, list) and count else count
        if isinstance(count, int) and count != len(self._optims):
            raise CorruptCheckpointError(
                f"{self.folder}: ZeRO states of {count} ranks expected (partition_count), "
                f"{len(self._optims)} *_optim_states.pt found; the checkpoint is incomplete")

    # ---- files ---------------------------------------------------------------------------

    @staticmethod
    def _state_files(folder: str) -> dict[str, list[str]]:
        found: dict[str, list[tuple[int, str]]] = {"model": [], "optim": []}
        for name in os.listdir(folder):
            m = _FILE.fullmatch(name)
            if m is None:
                continue
            if int(m["mp"]) != 0:
                raise UnsupportedError(f"{folder}: tensor-parallel ZeRO checkpoints (mp_rank_"
                                       f"{m['mp']}) are not supported; consolidate with DeepSpeed")
            found[m["what"]].append((int(m["rank"] or 0), os.path.join(folder, name)))
        if not found["model"] or not found["optim"]:
            what = "*_model_states.pt" if not found["model"] else "*_optim_states.pt (the fp32 weights)"
            raise CorruptCheckpointError(f"{folder}: no {what}; the ZeRO checkpoint is "
                                         "incomplete")
        return {k: [p for _, p in sorted(v)] for k, v in found.items()}

    def _member(self, path: str) -> CheckpointReader:
        if path not in self._members:
            self._members[path] = open_file(path, trust=self.trust)
        return self._members[path]

    # ---- layout --------------------------------------------------------------------------

    @property
    def stage(self) -> int:
        """The ZeRO stage: 3 when the partitions are ``fp32_flat_groups``, else 2 (or 1)."""
        first = self._optims[0] if self._optims else {}
        if "fp32_flat_groups" in first:
            return 3
        stage = first.get("zero_stage")
        args = getattr(stage, "args", ())
        return int(args[0]) if args and isinstance(args[0], int) else 2

    @property
    def world_size(self) -> int:
        return len(self._files["optim"])

    def _flat(self, path: str, ref: Any) -> _Segment:
        reader = self._member(path)
        key = ref.key if isinstance(ref, TensorRef) else ""
        entry = next((e for e in reader.tensor_entries() if e.key == key), None)
        raw = reader.raw_source(key) if entry else None
        if entry is None or raw is None or entry.dtype != "float32":
            raise UnsupportedError(f"{path}: ZeRO partition {key or '?'} is not a contiguous "
                                   "fp32 tensor; consolidate it with DeepSpeed's zero_to_fp32.py")
        return _Segment(raw.path, raw.offset, entry.numel)

    def _groups(self, name: str) -> list[list[_Segment]]:
        """Per rank, per group: the fp32 partitions."""
        out = []
        for path, osd in zip(self._files["optim"], self._optims):
            refs = osd.get(name)
            if not isinstance(refs, list):
                raise CorruptCheckpointError(f"{path}: no {name}; not a ZeRO stage "
                                             f"{self.stage} optimizer state")
            out.append([self._flat(path, r) for r in refs])
        return out

    def _build(self) -> tuple[Entry, ...]:
        model = self._model
        shapes = [g for g in model.get("param_shapes") or [] if isinstance(g, dict)]
        if not shapes:
            raise CorruptCheckpointError(f"{self._files['model'][0]}: no param_shapes; not a "
                                         "ZeRO model state")
        entries: list[Entry] = self._buffers() + self._frozen()
        if self.stage == 3:
            entries += self._stage3(shapes)
        else:
            entries += self._stage2(shapes)
        names = {e.key for e in entries}
        for alias, target in (model.get("shared_params") or {}).items():
            if target in names:
                entry = next(e for e in entries if e.key == target)
                self._plan[alias] = self._plan[target]
                entries.append(TensorEntry(alias, entry.dtype, entry.shape, entry.nbytes,  # type: ignore[union-attr]
                                           f"shared with {target}"))
        return tuple(entries)

    def _buffers(self) -> list[Entry]:
        module = self._model.get("module") or {}
        path = self._files["model"][0]
        by_key = {e.key: e for e in self._member(path).tensor_entries()}
        out: list[Entry] = []
        for name in self._model.get("buffer_names") or []:
            ref = module.get(name)
            entry = by_key.get(ref.key) if isinstance(ref, TensorRef) else None
            if entry is None:
                continue
            dtype = "float32" if entry.dtype in ITEMSIZE else entry.dtype
            nbytes = entry.numel * 4 if dtype != entry.dtype else entry.nbytes
            self._plan[name] = ("buffer", (path, ref.key, dtype == entry.dtype))  # type: ignore[union-attr]
            out.append(TensorEntry(name, dtype, entry.shape, nbytes, os.path.basename(path)))
        return out

    def _frozen(self) -> list[Entry]:
        shapes = self._model.get("frozen_param_shapes") or {}
        out: list[Entry] = []
        for name, shape in shapes.items():
            frags = []
            for path in self._files["model"]:
                tree = self._member(path).tree()
                ref = (tree.get("frozen_param_fragments") or {}).get(name)
                frags.append(self._flat(path, ref))
            if self.stage != 3:
                frags = frags[:1]
            self._plan[name] = ("flat", (_Flat(frags), 0))
            out.append(TensorEntry(name, "float32", tuple(shape), math.prod(shape) * 4,
                                   "frozen parameter"))
        return out

    def _stage2(self, shapes: list[dict[str, Any]]) -> list[Entry]:
        groups = self._groups("single_partition_of_fp32_groups")
        paddings = self._optims[0].get("param_alignment_paddings")
        out: list[Entry] = []
        for g, group_shapes in enumerate(shapes):
            flat = _Flat([rank[g] for rank in groups])
            offset = 0
            for i, (name, shape) in enumerate(group_shapes.items()):
                numel = math.prod(shape)
                self._plan[name] = ("flat", (flat, offset))
                out.append(TensorEntry(name, "float32", tuple(shape), numel * 4,
                                       f"{self.world_size} ZeRO-{self.stage} partitions"))
                offset += numel
                if isinstance(paddings, list) and g < len(paddings):
                    offset += int(paddings[g][i])
            if math.ceil(offset / (2 * self.world_size)) != math.ceil(flat.numel / (2 * self.world_size)):
                raise CorruptCheckpointError(f"{self.folder}: group {g} holds {flat.numel} "
                                             f"elements, the parameters {offset}; the ranks' "
                                             "partitions do not belong together")
        return out

    def _stage3(self, shapes: list[dict[str, Any]]) -> list[Entry]:
        ranks = [_Flat(groups) for groups in self._groups("fp32_flat_groups")]
        offset = 0
        out: list[Entry] = []
        for name, shape in ((n, s) for group in shapes for n, s in group.items()):
            numel = math.prod(shape)
            part = math.ceil(numel / self.world_size)
            self._plan[name] = ("zero3", (ranks, offset, part))
            out.append(TensorEntry(name, "float32", tuple(shape), numel * 4,
                                   f"{self.world_size} ZeRO-3 partitions"))
            offset += part
        if offset != ranks[0].numel:
            raise CorruptCheckpointError(f"{self.folder}: the partitions hold {ranks[0].numel} "
                                         f"elements per rank, the parameters need {offset}")
        return out

    # ---- reader interface ----------------------------------------------------------------

    def entries(self) -> tuple[Entry, ...]:
        return self._entries

    def tree(self) -> Any:
        return {e.key: TensorRef(e.key) for e in self._entries}

    def ranges(self, key: str) -> list[tuple[str, int, int]]:
        """The byte ranges ``(path, offset, length)`` whose concatenation is tensor ``key``.

        Raises:
            KeyError: no parameter has that name, or it is a buffer (stored whole).
        """
        how, args = self._plan[key]
        entry = self._entry(key)
        if how == "flat":
            flat, offset = args
            return flat.ranges(offset, entry.numel, 4)
        if how == "zero3":
            ranks, offset, part = args
            out: list[tuple[str, int, int]] = []
            left = entry.numel
            for flat in ranks:  # rank r holds elements [r * part, (r + 1) * part) of the param
                take = min(part, left)
                if take > 0:
                    out += flat.ranges(offset, take, 4)
                left -= take
            return out
        raise KeyError(key)

    def load(self, key: str) -> torch.Tensor:
        import torch

        if key not in self._plan:
            raise KeyError(key)
        how, args = self._plan[key]
        if how == "buffer":
            path, inner, _ = args
            t = self._member(path).load(inner)
            return t.float() if t.is_floating_point() else t
        entry = self._entry(key)
        buf = read_pieces([RawSource(*r) for r in self.ranges(key)], entry.nbytes)
        if not buf:
            return torch.empty(entry.shape, dtype=torch.float32)
        return torch.frombuffer(buf, dtype=torch.float32).reshape(entry.shape)

    def _entry(self, key: str) -> TensorEntry:
        if not hasattr(self, "_by_key"):
            self._by_key = {e.key: e for e in self._entries if isinstance(e, TensorEntry)}
        return self._by_key[key]

    def raw_source(self, key: str) -> RawSource | None:
        """The byte range of a parameter that lies whole in one rank's partition, or of a
        buffer stored as it is returned (fp32, or not floating)."""
        if key in self._plan and self._plan[key][0] == "buffer":
            path, inner, as_stored = self._plan[key][1]
            return self._member(path).raw_source(inner) if as_stored else None
        found = self._param_ranges(key)
        return RawSource(*found[0]) if found is not None and len(found) == 1 else None

    def raw_pieces(self, key: str) -> tuple[RawSource, ...] | None:
        """The byte ranges, in order, of a parameter split over several ranks' partitions
        (every ZeRO-3 parameter): copied into place one after another, never loaded."""
        found = self._param_ranges(key)
        return tuple(RawSource(*r) for r in found) if found is not None and len(found) > 1 \
            else None

    def _param_ranges(self, key: str) -> list[tuple[str, int, int]] | None:
        if key not in self._plan or self._plan[key][0] == "buffer":
            return None
        return self.ranges(key)

    def metadata(self) -> dict[str, str]:
        return {"zero_stage": str(self.stage), "world_size": str(self.world_size),
                "tag": os.path.basename(self.folder)}

    def partition_problems(self) -> list[str]:
        """Each rank's Adam moments against its fp32 partitions: one line per misfit."""
        name = "fp32_flat_groups" if self.stage == 3 else "single_partition_of_fp32_groups"
        inner = "optimizer_state_dict" if self.stage == 3 else "base_optimizer_state"
        problems = []
        for rank, (path, osd) in enumerate(zip(self._files["optim"], self._optims)):
            numel = {e.key: e.numel for e in self._member(path).tensor_entries()}
            parts = [numel.get(r.key) for r in osd.get(name) or [] if isinstance(r, TensorRef)]
            state = (osd.get(inner) or {}).get("state") or {}
            pads = osd.get("group_paddings") or []
            for g, moments in state.items():
                for what, ref in (moments or {}).items():
                    size = numel.get(ref.key) if isinstance(ref, TensorRef) else None
                    # the moments may keep the group's alignment padding the partition drops
                    pad = int(pads[g]) if isinstance(g, int) and g < len(pads) else 0
                    if size and size > 1 and isinstance(g, int) and g < len(parts) \
                            and size not in (parts[g], (parts[g] or 0) + pad):
                        problems.append(f"rank {rank} group {g}: {what} holds {size} elements, "
                                        f"its fp32 partition {parts[g]}")
        return problems

    def deepspeed_layout(self) -> TrainerLayout:
        """The trainer layout: step, every rank's states, what a resume would lack."""
        return zero_layout(self)

    def state_files(self) -> dict[str, list[str]]:
        """The model-states and optimizer-states files, by rank."""
        return {k: list(v) for k, v in self._files.items()}

    def model_states(self) -> Any:
        """The tree of rank 0's model-states file (``global_steps``, ``lr_scheduler``...)."""
        return self._model

    def close(self) -> None:
        for reader in self._members.values():
            reader.close()
        self._members.clear()


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def zero_layout(reader: DeepSpeedReader) -> TrainerLayout:
    """The layout of a ``DeepSpeedReader``'s checkpoint: every rank's states, step, scheduler."""
    model = reader.model_states()
    files = reader.state_files()
    pieces = []
    for path in files["model"]:
        m = _FILE.fullmatch(os.path.basename(path))
        pieces.append(Piece(os.path.basename(path), "model", "",
                            int(m["rank"]) if m and m["rank"] else None))
    for path in files["optim"]:
        m = _FILE.fullmatch(os.path.basename(path))
        pieces.append(Piece(os.path.basename(path), "optimizer", "",
                            int(m["rank"] or 0) if m else None))
    if isinstance(model.get("lr_scheduler"), dict):
        pieces.append(Piece(f"{os.path.basename(files['model'][0])}:lr_scheduler", "scheduler"))
    if model.get("data_sampler") is not None:
        pieces.append(Piece(f"{os.path.basename(files['model'][0])}:data_sampler", "dataloader"))
    notes = (f"ZeRO stage {reader.stage}, {reader.world_size} ranks; weights are the fp32 "
             "master copy reassembled from the partitions",
             "DeepSpeed saves no RNG state; a resume re-seeds")
    return TrainerLayout(DEEPSPEED, reader.path, _int(model.get("global_steps")), None, None, None,
                         tuple(pieces), missing_for(DEEPSPEED, pieces), reader.world_size, notes)
