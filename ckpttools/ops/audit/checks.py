"""The audit's per-file checks beyond safety: completeness, policy and model. Each returns a
``CheckResult``; none reads tensor data (the finite check lives in ``audit_finite``)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ckpttools.entries import TensorEntry, TensorRef

if TYPE_CHECKING:
    from ckpttools.formats.base import CheckpointReader
    from ckpttools.ops.model_spec import ModelSignature

Status = Literal["PASS", "WARN", "FAIL", "SKIP"]
OPTIMIZER, SCHEDULER, EPOCH, RNG = "optimizer", "scheduler", "epoch", "rng"
SCHEDULER_KEYS = ("lr_scheduler", "scheduler", "lr_schedulers", "scheduler_state_dict",
                  "lr_scheduler_state_dict", "sched")
EPOCH_KEYS = ("epoch", "global_step", "step", "iteration", "iter", "num_updates", "epochs")
RNG_HINTS = ("rng", "random_state", "generator", "seed_state")
BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")
FLOAT_DTYPES = frozenset({"float16", "bfloat16", "float32", "float64", "float8_e4m3fn",
                          "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz"})


@dataclass(frozen=True)
class CheckResult:
    """One check of one file: PASS / WARN / FAIL (or SKIP when an earlier check failed).

    Attributes:
        path: the checkpoint.
        check: ``integrity``, ``safety``, ``finite``, ``model``, ``completeness``, ``policy``
            or ``reproducibility``.
        status: the verdict.
        reason: one line.
        details: further lines (each offending tensor, global or key).
    """

    path: str
    check: str
    status: Status
    reason: str
    details: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "check": self.check, "status": self.status,
                "reason": self.reason, "details": list(self.details)}


def _dicts(tree: Any, path: str = "") -> Iterable[tuple[str, dict[Any, Any]]]:
    """Every dict in the tree with its dotted path, outermost first."""
    queue: list[tuple[str, Any]] = [(path, tree)]
    while queue:
        where, node = queue.pop(0)
        if isinstance(node, dict):
            yield where, node
            items = list(node.items())
        elif isinstance(node, (list, tuple)):
            items = list(enumerate(node))
        else:
            continue
        queue += [(f"{where}.{k}" if where else str(k), v) for k, v in items]


def find_optimizer(tree: Any) -> tuple[str, dict[Any, Any]] | None:
    """The first ``{"state": ..., "param_groups": [...]}`` in the tree."""
    for where, node in _dicts(tree):
        if isinstance(node.get("state"), dict) and isinstance(node.get("param_groups"), list):
            return where, node
    return None


def _top_key(tree: Any, names: Iterable[str]) -> str | None:
    for where, node in _dicts(tree):
        if where.count(".") > 1:
            break
        for name in names:
            if name in node:
                return f"{where}.{name}" if where else name
    return None


def _param_keys(entries: tuple[TensorEntry, ...], sig: ModelSignature | None) -> list[TensorEntry]:
    """The state_dict's parameters in ``model.parameters()`` order (state_dict order without
    buffers and tied aliases); without a model, buffers are told apart by name and dtype."""
    if sig is not None:
        kinds = {k.key: k.kind for k in sig.keys}
        aliases = {k for group in sig.ties for k in group[1:]}
        return [e for e in entries if kinds.get(e.key) == "parameter" and e.key not in aliases]
    return [e for e in entries if e.dtype in FLOAT_DTYPES
            and not e.key.rsplit(".", 1)[-1].endswith(BUFFER_SUFFIXES)]


def _check_optimizer(reader: CheckpointReader, tree: Any, shapes: dict[str, tuple[int, ...]],
                     sig: ModelSignature | None) -> tuple[Status, str, list[str]]:
    found = find_optimizer(tree)
    if found is None:
        return "FAIL", "no optimizer state_dict (state + param_groups) in the checkpoint", []
    where, opt = found
    ids = [p for g in opt["param_groups"] if isinstance(g, dict) for p in g.get("params", [])]
    state = opt["state"]
    if not state:
        return "WARN", f"optimizer '{where}' has no state (saved before the first step?)", []
    try:
        from ckpttools.ops.state_dict import find_state_dict

        params = _param_keys(find_state_dict(reader).entries, sig)
    except Exception:  # no model state_dict to compare with: counts only
        params = []
    frozen = set(sig.frozen) if sig is not None and sig.frozen is not None else None
    if params and len(params) != len(ids) and frozen is not None:
        # parameters in no param group cannot have state; the model says which those are
        trainable = [e for e in params if e.key not in frozen]
        params = trainable if len(trainable) == len(ids) else params
    if params and len(params) != len(ids):
        # an optimizer over a subset (the unfrozen layers) is common: positions no longer map
        return "WARN", (f"optimizer '{where}' holds {len(ids)} parameters, the model state_dict "
                        f"{len(params)}: which tensors they are cannot be told from the file (an optimizer "
                        "over a subset, such as unfrozen layers, or a model changed since); shapes not checked"), []
    problems = []
    # LBFGS keeps its state flat over every parameter, under the first one (only there)
    flat = (ids[0] if ids else None, (sum(math.prod(e.shape) for e in params),))
    for param, pid in zip(params, ids):
        for name, value in (state.get(pid) or {}).items():
            shape = shapes.get(value.key) if isinstance(value, TensorRef) else None
            if shape and shape != param.shape and (pid, shape) != flat:
                problems.append(f"state {pid}.{name} {list(shape)} does not fit {param.key} "
                                f"{list(param.shape)} at the same position")
    if problems:
        return "FAIL", (f"optimizer '{where}': {problems[0]}; parameters were reordered or changed since the "
                        "optimizer was saved, so its moments would load onto the wrong tensors"), problems
    status, shown = _stateless(ids, state, params, frozen)
    return status, f"optimizer '{where}': {shown}", []


def _names(keys: list[str]) -> str:
    return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")


def _stateless(ids: list[Any], state: dict[Any, Any], params: list[TensorEntry],
               frozen: set[str] | None) -> tuple[Status, str]:
    """Whether the parameters without optimizer state are the ones that cannot have any: torch
    keeps none for a parameter that never had a gradient (frozen, or unused in the loss), and only
    the model tells which parameters are frozen."""
    first = state.get(ids[0]) if ids else None
    lbfgs = isinstance(first, dict) and "func_evals" in first and set(state) == {ids[0]}
    stateless = [] if lbfgs else [p for p in ids if p not in state]
    count = (f"state for {len(ids) - len(stateless)} of {len(ids)} parameters" if stateless else
             f"state for all {len(ids)} parameters" + (" (LBFGS keeps it under the first)" if lbfgs else ""))
    count += ", shapes match" if params else ""
    keys = dict(zip(ids, (e.key for e in params)))
    trained = [] if lbfgs or frozen is None else [keys[p] for p in ids if p in state and keys.get(p) in frozen]
    if trained:
        return "WARN", (f"{count}; the model freezes {len(trained)} that have state ({_names(trained)}): "
                        "the saved run trained them, a resume with this model keeps them fixed")
    if not stateless:
        return "PASS", count
    named = [str(keys.get(p, f"#{p}")) for p in stateless]
    if frozen is None or not keys:
        return "WARN", (f"{count}; none for {_names(named)}: torch keeps none for a parameter that had no "
                        "gradient, and whether these are frozen (then fine) or were meant to train cannot be "
                        "told from the file (--model SPEC builds the model, which tells)")
    trainable = [k for k in named if k not in frozen]
    if trainable:
        return "WARN", (f"{count}; none for {len(trainable)} the model trains ({_names(trainable)}): they had "
                        "no gradient in the saved run (unused in the loss, or frozen then), so a resume "
                        "starts their moments from zero")
    return "PASS", f"{count}; the {len(named)} without it are frozen in the model (requires_grad=False)"


def check_completeness(reader: CheckpointReader, require: tuple[str, ...],
                       sig: ModelSignature | None) -> CheckResult:
    """``--require optimizer|scheduler|epoch|rng|KEY``: what a resume needs is present."""
    tree = reader.tree()
    entries = reader.entries()
    shapes = {e.key: e.shape for e in entries if isinstance(e, TensorEntry)}
    keys = [e.key for e in entries]
    fails: list[str] = []
    warns: list[str] = []
    passes: list[str] = []
    for item in require:
        if item == OPTIMIZER:
            status, reason, details = _check_optimizer(reader, tree, shapes, sig)
            {"FAIL": fails, "WARN": warns}.get(status, passes).append(reason)
            fails += details[1:]
            continue
        if item == SCHEDULER:
            hit = _top_key(tree, SCHEDULER_KEYS)
        elif item == EPOCH:
            hit = _top_key(tree, EPOCH_KEYS)
        elif item == RNG:
            hit = next((k for k in keys if any(h in k.lower() for h in RNG_HINTS)), None)
        else:
            hit = item if any(k == item or k.startswith(item + ".") for k in keys) else None
        (passes if hit else fails).append(f"{item}: {'found ' + hit if hit else 'missing'}")
    status: Status = "FAIL" if fails else "WARN" if warns else "PASS"
    lines = fails + warns + passes
    return CheckResult(reader.path, "completeness", status, lines[0] if len(lines) == 1 or fails
                       or warns else f"all of {', '.join(require)} present", tuple(lines))


def check_policy(reader: CheckpointReader, size: int, dtype: str | None,
                 max_size: int | None) -> CheckResult:
    """``--dtype`` for every floating tensor of the model state_dict, ``--max-size`` overall."""
    from ckpttools.units import human_bytes

    problems: list[str] = []
    if max_size is not None and size > max_size:
        problems.append(f"{human_bytes(size)} exceeds --max-size {human_bytes(max_size)}")
    if dtype is not None:
        try:
            from ckpttools.ops.state_dict import find_state_dict

            tensors: Iterable[TensorEntry] = find_state_dict(reader).entries
        except Exception:  # no state_dict found: every tensor
            tensors = reader.tensor_entries()
        wrong = [e for e in tensors if e.dtype in FLOAT_DTYPES and e.dtype != dtype]
        if wrong:
            problems.append(f"{len(wrong)} floating tensors are not {dtype} (first: {wrong[0].key} "
                            f"{wrong[0].dtype})")
            problems += [f"{e.key}: {e.dtype}" for e in wrong[1:50]]
    if problems:
        return CheckResult(reader.path, "policy", "FAIL", problems[0], tuple(problems))
    parts = [f"size {human_bytes(size)}"] + ([f"all floating tensors {dtype}"] if dtype else [])
    return CheckResult(reader.path, "policy", "PASS", ", ".join(parts))


def check_model(reader: CheckpointReader, sig: ModelSignature, key: str | None,
                model_name: str) -> CheckResult:
    """``--model``: would ``load_state_dict(strict=True)`` succeed (diff's comparison)."""
    from ckpttools.ops.model_diff import diff_against_model

    result = diff_against_model(reader, sig, key=key, model_name=model_name)
    c = result.comparison
    details = ([f"missing: {k}" for k in c.missing] + [f"unexpected: {k}" for k in c.unexpected]
               + [f"shape: {k} {list(a)} vs model {list(b)}" for k, a, b in result.mismatched])
    details += [f"fix: {f.to_dict().get('command') or f.to_dict().get('python', '')}"
                for f in result.fixes[:3]]
    details += [f"tied alias absent: {k} (loaded through {via})" for k, via in c.tied]
    status = "PASS" if result.ok else "FAIL"
    if not result.ok and c.tied and not c.problems:
        # only tied aliases are absent (transformers leaves them out): from_pretrained re-ties
        # them, a plain load_state_dict(strict=True) does not, so this warns rather than fails
        status = "WARN"
    return CheckResult(reader.path, "model", status,
                       f"{result.verdict} ({result.state_dict_note})", tuple(details[:60]))
