"""The audit of a trainer layout as one checkpoint: ``--require`` is satisfied by the layout's
pieces (whatever file holds them), and the optimizer's parameter shapes are checked against the
model weights across files (a ZeRO checkpoint's flat partitions included)."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from ckpttools.entries import TensorEntry, TensorRef
from ckpttools.errors import CkptError
from ckpttools.formats.trainer import EXPECTED, TrainerLayout
from ckpttools.keypaths import get_path
from ckpttools.ops.audit.checks import EPOCH, OPTIMIZER, CheckResult, Status, _param_keys

if TYPE_CHECKING:
    from ckpttools.formats.base import CheckpointReader
    from ckpttools.ops.model_spec import ModelSignature

# trainer bookkeeping: its values (Lightning kth_value = inf) are not tensor findings
BOOKKEEPING_KINDS = ("callbacks", "loops", "config", "trainer_state", "training_args")


def bookkeeping_keys(layout: TrainerLayout | None) -> tuple[str, ...]:
    """Reader keys of the layout's bookkeeping pieces, for the finite check to skip."""
    if layout is None:
        return ()
    return tuple(p.key for p in layout.pieces if p.kind in BOOKKEEPING_KINDS and p.key)


def _absent(layout: TrainerLayout, kind: str) -> str:
    where = EXPECTED.get(layout.framework, {}).get(kind)
    if where is None:
        return f"{kind}: missing"
    if " " in where:  # an explanation, not a file name
        return f"{kind}: missing ({where})"
    return f"{kind}: missing (no {where} in the {layout.framework} checkpoint)"


def check_layout_completeness(reader: CheckpointReader, layout: TrainerLayout,
                              require: tuple[str, ...], sig: ModelSignature | None) -> CheckResult:
    """``--require`` judged on the layout as a whole; the missing piece is named."""
    fails: list[str] = []
    warns: list[str] = []
    passes: list[str] = []
    for item in require:
        if item == OPTIMIZER and layout.pieces_of("optimizer"):
            status, line, details = _optimizer(reader, layout, sig)
            {"FAIL": fails, "WARN": warns}.get(status, passes).append(line)
            fails += details
        elif item == EPOCH:
            found = layout.step is not None or layout.epoch is not None
            (passes if found else fails).append(
                f"epoch: step {layout.step}, epoch {layout.epoch}" if found else "epoch: missing")
        elif item in {"model", "optimizer", "scheduler", "scaler", "rng", "dataloader",
                      "loops", "trainer_state"}:
            pieces = layout.pieces_of(item)
            (passes if pieces else fails).append(
                f"{item}: {', '.join(p.name for p in pieces)}" if pieces else _absent(layout, item))
        else:
            keys = [e.key for e in reader.entries()]
            hit = any(k == item or k.startswith(item + ".") for k in keys)
            (passes if hit else fails).append(f"{item}: {'found' if hit else 'missing'}")
    status: Status = "FAIL" if fails else "WARN" if warns else "PASS"
    reason = (fails + warns)[0] if fails or warns else (f"{layout.framework} checkpoint: all of "
                                                        f"{', '.join(require)} present")
    return CheckResult(reader.path, "completeness", status, reason, tuple(fails + warns + passes))


def _optimizer(reader: CheckpointReader, layout: TrainerLayout,
               sig: ModelSignature | None) -> tuple[Status, str, list[str]]:
    if hasattr(reader, "partition_problems"):  # DeepSpeed ZeRO: flat partitions per rank
        problems = reader.partition_problems()
        if problems:
            return "FAIL", f"optimizer: {problems[0]}", problems[1:]
        ranks = len(layout.pieces_of("optimizer"))
        return "PASS", f"optimizer: {ranks} ZeRO partitions cover every parameter", []
    piece = next((p for p in layout.pieces_of("optimizer") if p.key), None)
    if piece is None:
        return "PASS", f"optimizer: {layout.pieces_of('optimizer')[0].name}", []
    try:
        from ckpttools.ops.state_dict import find_state_dict

        opt = get_path(reader.tree(), piece.key)
        view = find_state_dict(reader)
    except (CkptError, KeyError):
        return "PASS", f"optimizer: {piece.name} (no model weights to compare with)", []
    model = _param_keys(view.entries, sig)
    if sig is not None:  # model.parameters() order
        order = {k.key: i for i, k in enumerate(sig.keys)}
        model.sort(key=lambda e: order.get(e.key, len(order)))
    return optimizer_fits(reader, piece.name, opt, model,
                          ordered=sig is not None or _keeps_order(reader, view.prefix),
                          frozen=set(sig.frozen) if sig is not None and sig.frozen is not None else None)


def _keeps_order(reader: CheckpointReader, prefix: str) -> bool:
    """Whether the model weights' file keeps ``state_dict()`` order: a pickle does,
    safetensors sorts its tensors."""
    from ckpttools.formats.base import Format

    member = getattr(reader, "member", None)
    fmt = member(prefix).format if member is not None and prefix in reader.files() else reader.format  # type: ignore[attr-defined]
    return fmt not in (Format.SAFETENSORS, Format.SAFETENSORS_SHARDED)


def _moment_shapes(reader: CheckpointReader, state: Any) -> dict[Any, tuple[int, ...]]:
    """Parameter id -> shape of its first non-scalar moment (``exp_avg``, ``momentum_buffer``)."""
    shapes = {e.key: e.shape for e in reader.tensor_entries()}
    out: dict[Any, tuple[int, ...]] = {}
    for pid, moments in (state or {}).items():
        for value in (moments or {}).values() if isinstance(moments, dict) else ():
            shape = shapes.get(value.key) if isinstance(value, TensorRef) else None
            if shape:
                out[pid] = shape
                break
    return out


def _part_of_model(name: str, ids: list[Any], model: list[TensorEntry], moments: dict[Any, tuple[int, ...]],
                   trains: int | None) -> tuple[Status, str, list[str]]:
    """An optimizer over fewer parameters than the model weights that the model's frozen ones do
    not explain (``trains``: how many the model trains; None without a model): its moments must
    fit weights of the model (as a multiset), and which part it is cannot be told."""
    have = Counter(moments.values())
    bad = [f"{n} moment(s) of shape {list(s)} fit no weight"
           for s, n in (have - Counter(e.shape for e in model)).items()]
    if bad:
        return "FAIL", f"optimizer: {name}: {bad[0]}", bad[1:]
    if trains is not None:
        return "WARN", (f"optimizer: {name} holds {len(ids)} parameters, the model trains {trains} of its "
                        f"{len(model)}: the optimizer was built over another part of the model than the one "
                        "this model trains; its moments fit weights of the model as a set"), []
    return "WARN", (f"optimizer: {name} holds {len(ids)} parameters, the model weights {len(model)}: "
                    "an optimizer over the trainable part (frozen layers are in no param group) or a model "
                    "changed since, which the files cannot tell (--model SPEC tells); its moments fit "
                    "weights of the model as a set"), []


def optimizer_fits(reader: CheckpointReader, name: str, opt: Any, model: list[TensorEntry],
                   *, ordered: bool = True, frozen: set[str] | None = None) -> tuple[Status, str, list[str]]:
    """Compare an optimizer state's moments with the model's parameters.

    Parameter ids that are names (DCP, FSDP) are matched by name; with one parameter group and
    ``model`` in ``model.parameters()`` order (``ordered``) they are matched by position;
    otherwise (HF Trainer's decay / no-decay groups, weights in safetensors, which sorts them)
    the order is not in the files, so shapes are compared as a multiset and the report says so.
    An optimizer over fewer parameters than the weights is one over the trainable part (frozen
    layers are in no param group) when ``frozen`` (the model's ``requires_grad=False`` keys)
    says so; without it, which it is cannot be told, and the moments are compared as a multiset.
    """
    groups = [g for g in opt.get("param_groups") or [] if isinstance(g, dict)]
    ids = [p for g in groups for p in g.get("params", [])]
    moments = _moment_shapes(reader, opt.get("state"))
    if not moments:
        return "PASS", f"optimizer: {name} (no moments yet: saved before the first step?)", []
    trainable = [e for e in model if frozen is not None and e.key not in frozen]
    if len(ids) < len(model) and len(trainable) == len(ids):
        model = trainable  # the frozen parameters are in no param group
    elif len(ids) < len(model):
        return _part_of_model(name, ids, model, moments, None if frozen is None else len(trainable))
    if len(ids) != len(model):
        return "FAIL", (f"optimizer: {name} holds {len(ids)} parameters, the model weights "
                        f"{len(model)}"), []
    by_name = {e.key: e.shape for e in model}
    keys: dict[Any, str] = {}  # parameter id -> weight key, where the files tell
    if all(isinstance(i, str) for i in ids):
        keys = {i: i for i in ids}
        bad = [f"{i}: moment {list(s)} vs weight {list(by_name.get(i, ()))}"
               for i, s in moments.items() if by_name.get(str(i)) != s]
        how = "by name"
    elif len(groups) == 1 and ordered:
        keys = {pid: e.key for pid, e in zip(ids, model)}
        bad = [f"parameter {pid}: moment {list(moments[pid])} vs {e.key} {list(e.shape)}"
               for pid, e in zip(ids, model) if pid in moments and moments[pid] != e.shape]
        how = "by position"
    else:
        want = Counter(e.shape for e in model if any(d > 1 for d in e.shape))
        have = Counter(s for s in moments.values() if any(d > 1 for d in s))
        bad = [f"{n} moment(s) of shape {list(s)} fit no weight" for s, n in (have - want).items()]
        why = (f"{len(groups)} parameter groups" if len(groups) > 1
               else "the weights file keeps no parameter order")
        how = f"as a set ({why}; pass --model to match by position)" if len(groups) == 1 \
            else f"as a set ({why} fix the order, not the files)"
    if bad:
        return "FAIL", f"optimizer: {name}: {bad[0]}", bad[1:]
    shown = f"optimizer: {name}, shapes match the model weights {how}"
    return _stateless(shown, ids, opt.get("state") or {}, keys, frozen)


def _stateless(shown: str, ids: list[Any], state: dict[Any, Any], keys: dict[Any, str],
               frozen: set[str] | None) -> tuple[Status, str, list[str]]:
    """PASS only when the parameters without state are the ones that cannot have any (frozen in
    the model); torch keeps none for a parameter that had no gradient, frozen or unused alike."""
    first = state.get(ids[0]) if ids else None
    if isinstance(first, dict) and "func_evals" in first and set(state) == {ids[0]}:
        return "PASS", shown, []  # LBFGS keeps all of its state under the first parameter
    stateless = [i for i in ids if i not in state]
    if not stateless:
        return "PASS", shown, []
    named = [keys.get(i, f"#{i}") for i in stateless]
    head = f"{shown}; no state for {len(stateless)} of {len(ids)} parameters ({', '.join(named[:3])}"
    head += ", ...)" if len(named) > 3 else ")"
    if frozen is None or not keys:
        return "WARN", (f"{head}: torch keeps none for a parameter that had no gradient, and whether they are "
                        "frozen or were meant to train cannot be told " + ("(--model SPEC tells)" if frozen is None
                                                                          else "(the files keep no parameter order)")), []
    trains = [k for k in named if k not in frozen]
    if trains:
        return "WARN", (f"{head}: the model trains {', '.join(trains[:3])}; they had no gradient in the saved "
                        "run, so a resume starts their moments from zero"), []
    return "PASS", f"{head}, all frozen in the model", []
