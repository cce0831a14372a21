"""``remap SRC DST``: rename, strip, add and drop state_dict keys, writing a new checkpoint.

From a nested checkpoint, DST holds the (renamed) state_dict alone, what
``model.load_state_dict(torch.load(DST, weights_only=True))`` needs; with ``keep_wrapper`` a torch DST keeps the
rest of the checkpoint (optimizer state, epoch ...) around it. Tensors are read one at a
time through the reader; the output is written atomically and never over SRC.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ckpttools.entries import ObjectEntry, ObjectPlaceholder, TensorRef
from ckpttools.units import plural
from ckpttools.errors import InvalidArgumentError, OutputError, UnsafeCheckpointError
from ckpttools.formats.safetensors_file import user_metadata
from ckpttools.formats.writers.atomic import atomic_output, check_destination, write_behind_file
from ckpttools.formats.writers.state_dict_zip import copy_plan, write_renamed
from ckpttools.formats.base import CheckpointReader
from ckpttools.formats.registry import open_checkpoint
from ckpttools.keypaths import get_path
from ckpttools.ops.keymatch import Rule, apply_rules, parse_rule, prefix_rules, read_rules
from ckpttools.ops.state_dict import StateDictView, find_state_dict


@dataclass(frozen=True)
class RemapResult:
    """What a remap did (or would do, with ``dry_run``).

    Attributes:
        src / dst: the paths as given.
        state_dict: where the state_dict sits in SRC (``""`` at the top level).
        renamed: ``(old, new)`` for every kept key, in file order (``old == new`` if unchanged).
        dropped: keys removed by ``--drop``.
        output_format: ``safetensors`` or ``pth``.
        written: false for a dry run.
    """

    src: str
    dst: str
    state_dict: str
    renamed: tuple[tuple[str, str], ...]
    dropped: tuple[str, ...]
    output_format: str
    written: bool
    notes: tuple[str, ...] = ()

    @property
    def changed(self) -> tuple[tuple[str, str], ...]:
        return tuple((a, b) for a, b in self.renamed if a != b)

    @property
    def ok(self) -> bool:
        return True  # a remap that cannot be done raises instead

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "src": self.src, "dst": self.dst, "state_dict": self.state_dict,
                "output_format": self.output_format, "written": self.written,
                "renamed": [{"old": a, "new": b} for a, b in self.renamed],
                "changed": len(self.changed), "kept": len(self.renamed),
                "dropped": list(self.dropped), "notes": list(self.notes)}


def build_rules(*, strip_prefix: str | None = None, add_prefix: str | None = None,
                renames: Sequence[str] = (), rules_file: str | None = None) -> list[Rule]:
    """The rename rules in the order remap applies them: strip, add, ``--rename``s, rules file."""
    rules = prefix_rules(strip_prefix, add_prefix)
    rules += [parse_rule(r) for r in renames]
    if rules_file:
        rules += read_rules(rules_file)
    return rules


def plan_keys(keys: Sequence[str], rules: Sequence[Rule], drops: Sequence[str] = (),
              where: str = "") -> tuple[list[tuple[str, str]], list[str]]:
    """New names for ``keys`` (``drops`` match the old names, as ``re.search`` does).

    Raises:
        CkptError: a drop pattern is not a regular expression, or two keys get one name.
    """
    try:
        compiled = [re.compile(d) for d in drops]
    except re.error as e:
        raise InvalidArgumentError(f"--drop: bad regular expression: {e}") from e
    pairs, dropped, seen = [], [], {}
    for key in keys:
        if any(p.search(key) for p in compiled):
            dropped.append(key)
            continue
        new = apply_rules(key, rules)
        if new in seen:
            raise InvalidArgumentError(f"{where or 'remap'}: '{seen[new]}' and '{key}' would both become "
                            f"'{new}'; change the rules so they stay apart")
        seen[new] = key
        pairs.append((key, new))
    return pairs, dropped


def _output_format(dst: str) -> str:
    return "safetensors" if dst.endswith(".safetensors") else "pth"


def _write_safetensors(tmp: str, reader: CheckpointReader, view: StateDictView,
                       pairs: list[tuple[str, str]], on_progress: Callable[[int], None]) -> None:
    from ckpttools.formats.writers.bytecopy import TensorData
    from ckpttools.formats.writers.safetensors_file import write_safetensors

    entries = {e.key: e for e in view.entries}
    data = []
    for old, new in pairs:
        e, src = entries[old], view.source_key(old)
        data.append(TensorData(new, e.dtype, e.shape, e.nbytes, raw=reader.raw_source(src),
                               load=lambda src=src: reader.load(src)))
    # the file's own metadata (a LoRA's training settings) goes with its tensors
    metadata = {**dict(user_metadata(reader)), "format": "pt"}
    write_safetensors(tmp, data, metadata, on_progress=on_progress)


def _rebuild(node: Any, reader: CheckpointReader) -> Any:
    """The tree with tensors loaded (mmap views); objects the reader did not run are refused."""
    if isinstance(node, TensorRef):
        return reader.load(node.key)
    if isinstance(node, ObjectPlaceholder):
        raise UnsafeCheckpointError(
            f"{reader.path}: holds an object of class {node.class_name} that needs full unpickling to "
            "rewrite; rerun with --trust if you trust the file, or write .safetensors")
    if isinstance(node, dict):
        return {k: _rebuild(v, reader) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        items = [_rebuild(v, reader) for v in node]
        return items if isinstance(node, list) else tuple(items)
    return node


def _replace_at(tree: Any, prefix: str, value: dict[str, Any]) -> Any:
    if not prefix:
        return value
    head, _, rest = prefix.partition(".")
    if isinstance(tree, dict):
        for k in tree:
            if str(k) == head:
                tree[k] = _replace_at(tree[k], rest, value)
                return tree
        for k in tree:  # a dict key with dots in it
            if prefix.startswith(f"{k}."):
                tree[k] = _replace_at(tree[k], prefix[len(str(k)) + 1:], value)
                return tree
    if isinstance(tree, list) and head.isdigit():
        tree[int(head)] = _replace_at(tree[int(head)], rest, value)
        return tree
    raise OutputError(f"{prefix}: cannot place the state_dict back; write .safetensors instead")


def _write_pth(tmp: str, reader: CheckpointReader, view: StateDictView,
               pairs: list[tuple[str, str]], trust: bool, keep_wrapper: bool,
               on_progress: Callable[[int], None]) -> None:
    if not keep_wrapper or not view.prefix:
        # a plain dict: no _metadata, so BatchNorm fills absent num_batches_tracked with 0
        plan = copy_plan(reader, [(view.source_key(o), n) for o, n in pairs])
        if plan is not None:  # storage records copied as they are: no torch, no re-encoding
            write_renamed(tmp, plan, reader.path, on_progress=on_progress)
            return
        import torch

        _save(torch, {n: reader.load(view.source_key(o)) for o, n in pairs}, tmp)
        return
    import torch

    if trust:
        # the user vouches for the file: keep every object exactly as torch restores it
        whole = torch.load(reader.path, map_location="cpu", weights_only=False)
        sd = get_path(whole, view.prefix) if view.prefix else whole
        new = {n: sd[o] if o in sd else get_path(sd, o) for o, n in pairs}
    else:
        whole = _rebuild(reader.tree(), reader)
        new = {n: reader.load(view.source_key(o)) for o, n in pairs}
    _save(torch, _replace_at(whole, view.prefix, new), tmp)


def _save(torch: Any, obj: Any, tmp: str) -> None:
    """``torch.save`` with each chunk handed to the disk as it is written: the durable fsync
    that follows then waits for little (as convert's writers do)."""
    with write_behind_file(tmp) as f:
        torch.save(obj, f)


def remap_checkpoint(src: str, dst: str, *, rules: Sequence[Rule] = (),
                     drops: Sequence[str] = (), key: str | None = None, dry_run: bool = False,
                     force: bool = False, trust: bool = False, keep_wrapper: bool = False,
                     on_progress: Callable[[int], None] = lambda n: None) -> RemapResult:
    """Rename and drop state_dict keys of ``src`` and write the result to ``dst``.

    Args:
        src: the checkpoint to read (never modified).
        dst: where to write; ``.safetensors`` writes safetensors, anything else ``torch.save``.
        rules: ``(regex, replacement)`` pairs applied in order with ``re.sub`` (``build_rules``).
        drops: patterns of keys to leave out (``re.search`` on the old names).
        key: dotted path of the state_dict in a nested checkpoint; found by name when omitted.
        dry_run: plan only; nothing is written.
        force: overwrite ``dst`` if it exists.
        trust: allow full unpickling, for nested checkpoints holding arbitrary objects.
        keep_wrapper: a torch ``dst`` keeps the rest of a nested checkpoint around the
            state_dict (by default it holds the state_dict alone).
        on_progress: called with byte counts while writing (safetensors, or a torch zip
            copied by storage record).

    Returns:
        The old -> new key table and what was dropped.

    Raises:
        CkptError: bad rules, colliding names, ``dst`` is ``src`` or exists without ``force``,
            or objects that need ``trust``.

    Example:
        >>> remap_checkpoint("ddp.pth", "model.pth", rules=build_rules(strip_prefix="module."))
    """
    check_destination(src, dst, force=force or dry_run)
    fmt = _output_format(dst)
    with open_checkpoint(src, trust=trust) as reader:
        view = find_state_dict(reader, key)
        pairs, dropped = plan_keys([e.key for e in view.entries], rules, drops, src)
        notes = _left_out(reader, view, fmt, keep_wrapper)
        if not dry_run:
            with atomic_output(dst) as tmp:
                if fmt == "safetensors":
                    _write_safetensors(tmp, reader, view, pairs, on_progress)
                else:
                    _write_pth(tmp, reader, view, pairs, trust, keep_wrapper, on_progress)
    return RemapResult(src, dst, view.prefix, tuple(pairs), tuple(dropped), fmt, not dry_run,
                       notes)


def _values_inside(reader: CheckpointReader, view: StateDictView) -> list[str]:
    """Entries of the state_dict that are not tensors (a module's ``_extra_state``, a sparse
    tensor): remap writes tensors only."""
    lead = view.prefix + "." if view.prefix else ""
    return [e.key[len(lead):] for e in reader.entries()
            if isinstance(e, ObjectEntry) and e.key.startswith(lead)]


def _left_out(reader: CheckpointReader, view: StateDictView, fmt: str,
              keep_wrapper: bool) -> tuple[str, ...]:
    name = os.path.basename(reader.path)
    inside = _values_inside(reader, view)
    listed = ", ".join(inside[:4]) + (" ..." if len(inside) > 4 else "")
    notes = [f"{name}: {plural(len(inside), 'entry', 'entries')} of the state_dict "
             f"{'is' if len(inside) == 1 else 'are'} not in the output, remap writes plain tensors "
             f"only: {listed}"] if inside else []
    if fmt != "safetensors" and (meta := user_metadata(reader)):
        notes.append(f"{name}: the safetensors metadata ({', '.join(k for k, _ in meta[:4])}"
                     f"{' ...' if len(meta) > 4 else ''}) is not in the output: a .pth has no "
                     "place for it (write .safetensors to keep it)")
    outside = len(reader.entries()) - len(view.entries) - len(inside)
    if outside <= 0 or not view.prefix:
        return tuple(notes)
    if fmt == "safetensors":
        return (*notes, f"{name}: safetensors holds the state_dict alone; "
                f"{outside} other entries are not in the output (write .pth with --keep-wrapper "
                "to keep them)")
    if keep_wrapper:
        return tuple(notes)
    return (*notes, f"{name}: wrote the state_dict under '{view.prefix}' alone, "
            f"what load_state_dict(torch.load(out, weights_only=True)) needs; {outside} other entries are left out "
            "(--keep-wrapper keeps them)")
