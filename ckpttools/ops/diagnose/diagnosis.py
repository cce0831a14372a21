"""``diagnose``: why ``load_state_dict`` failed and how to fix it, from the error text or the files.

Both inputs become one :class:`~ckpttools.ops.diagnose.evidence.Evidence`; the same cause rules rank the
causes and the same renderer shows them.
"""

from __future__ import annotations

import dataclasses
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ckpttools.ops.diagnose.evidence import Evidence, ShapeMismatch
from ckpttools.ops.plan_text import load_lines

if TYPE_CHECKING:
    from torch import nn

    from ckpttools.ops.diagnose.fixes import Cause

    from ckpttools.ops.diagnose.error_text import ParsedError
    from ckpttools.ops.fix_plan import FixPlan

    from ckpttools.formats.base import CheckpointReader
    from ckpttools.ops.model_spec import ModelSignature
    from ckpttools.ops.model_diff import DiffResult

# Among answers at or above this confidence, >= 95% are right on every corpus (docs/diagnose.md).
DECIDED = 0.8
DECIDE_COMMAND = "ckpttools diagnose --checkpoint CKPT --model SPEC"
NO_ERROR_MESSAGE = ("no load_state_dict error found in the input; expected a load error or report "
                    "such as 'Missing key(s) in state_dict: ...', 'size mismatch for ...' or "
                    "'KeyError: ...'")


@dataclass(frozen=True)
class DiagnoseResult:
    """The ranked causes of a ``load_state_dict`` failure.

    Attributes:
        source: ``text`` (an error text) or ``files`` (a checkpoint and a model).
        found: the input shows a failure (a parsed error, or a strict load that would fail).
        causes: best first; empty when nothing recognisable explains the failure.
        evidence: what the causes were inferred from.
        note: which part of the checkpoint was used (files), or ``None``.
        plan: the fix plan ``diff --model`` shows for the same files (files only); every
            cause's fix is this plan.
    """

    source: str
    found: bool
    causes: tuple[Cause, ...]
    evidence: Evidence
    note: str | None = None
    plan: FixPlan | None = None

    @property
    def ok(self) -> bool:
        """A cause was found (exit code 0); false means no cause fits (exit code 1)."""
        return bool(self.causes) or (self.source == "files" and not self.found)

    @property
    def decided(self) -> bool:
        """The first cause is confident enough (>= 0.8) to be stated without candidates."""
        return bool(self.causes) and self.causes[0].confidence >= DECIDED

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form: ``causes`` sorted best first (schema in the README)."""
        ev = self.evidence
        return {
            "source": self.source, "found": self.found, "ok": self.ok, "decided": self.decided,
            "decide_with": None if self.decided or self.source != "text" else DECIDE_COMMAND,
            "class_name": ev.class_name, "note": self.note,
            "counts": {"missing": len(ev.missing), "unexpected": len(ev.unexpected),
                       "mismatched": len(ev.mismatched), "matched": ev.matched},
            "truncated": ev.truncated,
            "missing": list(ev.missing), "unexpected": list(ev.unexpected),
            "mismatched": [m.to_dict() for m in ev.mismatched],
            "causes": [c.to_dict() for c in self.causes],
            "plan": self.plan.to_dict() if self.plan else None,
        }


def diagnose_evidence(ev: Evidence, *, found: bool = True, note: str | None = None) -> DiagnoseResult:
    """Rank and explain the causes behind one evidence structure."""
    if not found:  # a checkpoint that loads: the cause rules (and their patterns) are not imported
        return DiagnoseResult(ev.source, found, (), ev, note)
    from ckpttools.ops.diagnose.causes import rank_findings
    from ckpttools.ops.diagnose.fixes import describe

    findings = rank_findings(ev)
    if ev.source == "text":  # bounded by what each kind of reading achieved on unread texts
        from ckpttools.ops.diagnose.reliability import bound_by_outcomes

        findings = bound_by_outcomes(findings, ev)
    causes = tuple(describe(f, ev) for f in findings)
    return DiagnoseResult(ev.source, found, causes, ev, note)


def evidence_from_text(parsed: ParsedError) -> Evidence:
    """The evidence an error text gives (no shapes of missing/unexpected keys, no match count)."""
    return Evidence(missing=parsed.missing + parsed.lookups, unexpected=parsed.unexpected,
                    mismatched=parsed.mismatched, class_name=parsed.class_name,
                    truncated=parsed.truncated, source="text", lookups=parsed.lookups,
                    report=parsed.report, parallel=parsed.parallel,
                    named_prefix=parsed.named_prefix, cut_mismatches=parsed.cut_mismatches,
                    cut_empty=parsed.cut_empty,
                    legacy_norm_stats="running_stats" in parsed.formats,
                    told_head_sizes=parsed.head_sizes,
                    unlisted_unused="unlisted_unused" in parsed.formats,
                    unnamed_size="unnamed_size" in parsed.formats,
                    nothing_unexpected="missing_set" in parsed.formats
                    and not (parsed.unexpected or parsed.mismatched))


def evidence_from_diff(diff: DiffResult, model_spec: str | None = None) -> Evidence:
    """The evidence a ``diff`` of a checkpoint against a model gives (complete key sets).

    A tied alias the checkpoint leaves out is a tie only when the plan ties it; one the plan
    fills by a rename (a renamed tied head) is a missing key like any other."""
    tied: tuple[tuple[str, str], ...] = ()
    missing = diff.missing
    if not diff.allow_tied:
        by_tie = {a.split("=")[0] for st in (diff.plan.steps if diff.plan else ())
                  if st.kind == "tie" for a in st.args}
        tied = tuple((a, b) for a, b in diff.comparison.tied if a in by_tie)
        missing += tuple(a for a, _ in diff.comparison.tied if a not in by_tie)
    return Evidence(
        missing=missing, unexpected=diff.unexpected,
        mismatched=tuple(ShapeMismatch(k, tuple(c), tuple(m)) for k, c, m in diff.mismatched),
        class_name=None, truncated=False, source="files", matched=len(diff.comparison.matched),
        model_shapes={k: tuple(diff.model_keys[k]) for k in missing},
        checkpoint_shapes={k: tuple(diff.checkpoint_keys[k]) for k in diff.unexpected},
        checkpoint_path=diff.checkpoint, model_spec=model_spec or diff.model,
        # a model folder's file (model.safetensors) holding the state_dict is no wrapper
        used_key=(diff.plan.source.key if diff.plan else diff.state_dict) or None, tied=tied,
        moves=_plan_moves(diff),
        load_code="".join(line + "\n" for line in load_lines(diff.plan.source)) if diff.plan else "",
        whole_file=bool(diff.plan and diff.plan.source.file != diff.plan.source.path
                        and not diff.plan.source.key))


def _tie_conflict(diff: DiffResult) -> Cause:
    """The model ties parameters that the checkpoint holds apart: a strict load succeeds and
    keeps one tensor for all of them (``DiffResult.tie_conflicts``)."""
    from ckpttools.ops.diagnose.fixes import Cause

    group = diff.tie_conflicts[0]
    return Cause(
        "tied_weights", 0.95,
        f"the model ties {' and '.join(group)} into one parameter, and the checkpoint holds them as "
        f"different tensors (it was saved from a model built untied): load_state_dict succeeds, "
        f"keeps {group[-1]} for all of them and loses the rest; build the model untied, as the "
        "checkpoint was saved (transformers: tie_word_embeddings=False), then load",
        {"explained": sum(len(g) for g in diff.tie_conflicts), "examples": list(group),
         "facts": {"tie_conflicts": [list(g) for g in diff.tie_conflicts]}},
        confirm_command=shlex.join(["ckpttools", "diff", diff.checkpoint, "--model", diff.model]))


def _plan_moves(diff: DiffResult) -> tuple[tuple[str, str], ...]:
    """(checkpoint key, model key) for each key the fix plan's ``rename`` steps move."""
    from ckpttools.ops.fix_plan import rules_of
    from ckpttools.ops.keymatch import apply_rules

    renames = [st for st in (diff.plan.steps if diff.plan else ()) if st.kind == "rename"]
    if not renames:
        return ()
    rules = rules_of(renames)
    moved = ((k, apply_rules(k, rules)) for k in diff.checkpoint_keys)
    return tuple((k, new) for k, new in moved if new != k and new in diff.model_keys)


def diagnose_text(text: str) -> DiagnoseResult:
    """Diagnose a pasted ``load_state_dict`` error (traceback, log, notebook output).

    Args:
        text: text holding the error somewhere.

    Returns:
        The ranked causes; ``found`` is false when the text holds no such error.

    Example:
        >>> r = ckpttools.diagnose_text('Unexpected key(s) in state_dict: "module.fc.weight".')
        >>> r.causes[0].label
        'prefix_added'
    """
    # the text parser (about sixty patterns) is imported here: from files it is never needed
    from ckpttools.ops.diagnose.error_text import parse_error_text

    parsed = parse_error_text(text)
    return diagnose_evidence(evidence_from_text(parsed), found=parsed.found)


def diagnose_checkpoint(source: CheckpointReader | Mapping[str, Any],
                        model: nn.Module | ModelSignature, *, key: str | None = None,
                        model_name: str = "", allow_tied: bool = False) -> DiagnoseResult:
    """Diagnose why a checkpoint does not load into a model, from the real key sets and shapes.

    The fix of every cause is the plan ``diff --model`` shows for the same files (one engine),
    proven against the model before it is shown.

    Args:
        source: an open checkpoint or an in-memory state_dict / training checkpoint.
        model: an ``nn.Module`` (meta device is fine) or a ``ModelSignature``.
        key: dotted path of the state_dict inside the checkpoint; found by name when omitted.
        model_name: the model spec, for the report and the suggested commands.
        allow_tied: absent tied aliases count as loadable.

    Returns:
        The ranked causes and the plan; ``found`` is false when a strict load would succeed.

    Raises:
        CkptError: the checkpoint cannot be read or ``key`` is not in it.
    """
    from ckpttools.ops.model_diff import diff_against_model

    diff = diff_against_model(source, model, key=key, model_name=model_name,
                              allow_tied=allow_tied)
    ev = evidence_from_diff(diff, model_name or None)
    nested = diff.plan is not None and bool(diff.plan.source.key)  # a folder's file is not
    found = not diff.ok or (nested and key is None)
    result = diagnose_evidence(ev, found=found, note=diff.state_dict_note)
    if diff.tie_conflicts:  # read from the tensors' values, which no key or shape rule sees
        result = dataclasses.replace(result, causes=(_tie_conflict(diff), *result.causes))
    plan = diff.plan
    if plan is not None and plan.undecided:  # no fix may pick one of the plan's choices blindly
        causes = tuple(dataclasses.replace(c, fix_code="", fix_command=None) for c in result.causes)
        return dataclasses.replace(result, causes=causes, plan=plan)
    if plan is None or not (plan.steps or plan.source.key or plan.no_plan):
        return dataclasses.replace(result, plan=plan)
    # the plan renames and drops keys; some causes need more than that (file_fixes)
    from ckpttools.ops.diagnose.file_fixes import own_fix

    causes = []
    for c in result.causes:
        code = own_fix(c, ev, diff, plan, model)
        if code is None and plan.no_plan:  # the plan's steps would load nothing: no fix to show
            code = ""
        causes.append(dataclasses.replace(c, fix_code=plan.python, fix_command=plan.command or None)
                      if code is None else dataclasses.replace(c, fix_code=code, fix_command=None))
    return dataclasses.replace(result, causes=tuple(causes), plan=plan)
