"""Rendering a diagnosis: per cause what happened, the evidence and the fix."""

from __future__ import annotations

import textwrap
from typing import TYPE_CHECKING

from ckpttools.ops.diagnose.diagnosis import DECIDE_COMMAND, DiagnoseResult
from ckpttools.render import heading, to_json
from ckpttools.render.plan import render_plan
from ckpttools.units import plural

if TYPE_CHECKING:
    from ckpttools.ops.diagnose.fixes import Cause


def _header(result: DiagnoseResult) -> str:
    ev = result.evidence
    where = "error text" if result.source == "text" else "checkpoint and model"
    counts = (f"{len(ev.missing)} missing, {len(ev.unexpected)} unexpected, "
              f"{len(ev.mismatched)} shape mismatches")
    if ev.matched is not None:
        counts += f", {ev.matched} matching"
    if result.plan is not None and result.plan.before.tied:
        counts += f", {result.plan.before.tied} tied aliases absent"
    extra = "; lists cut short, counts are lower bounds" if ev.truncated else ""
    model = f" for {ev.class_name}" if ev.class_name else ""
    return f"diagnosis from the {where}{model}: {counts}{extra}"


def _cause(i: int, c: Cause, fmt: str, same_as_plan: bool = False) -> list[str]:
    ev = c.evidence
    examples = ", ".join(ev.get("examples", [])[:3])
    lines = [heading(f"{i}. {c.label} (confidence {c.confidence:.2f})", fmt), "",
             "what happened: " + c.summary,
             f"evidence: {plural(ev.get('explained', 0), 'key')} explained" + (f", e.g. {examples}" if examples else "")]
    if same_as_plan:
        lines.append("fix: the fix plan above")
    elif not c.fix_code:  # the fix needs what the text does not give: words, not code
        lines.append("fix: as said above (no code: it needs settings or files that ckpttools cannot see)")
        lines += [f"confirm: {c.confirm_command}"] if c.confirm_command else []
    elif fmt == "markdown":
        lines += ["", "fix:", "", "```python", c.fix_code, "```"]
        lines += [f"\ncommand: `{c.fix_command}`"] if c.fix_command else []
        lines += [f"\nconfirm: `{c.confirm_command}`"] if c.confirm_command else []
    else:
        lines += ["fix:", textwrap.indent(c.fix_code, "    ")]
        lines += [f"command: {c.fix_command}"] if c.fix_command else []
        lines += [f"confirm: {c.confirm_command}"] if c.confirm_command else []
    return lines + [""]


def _undecided(result: DiagnoseResult) -> str:
    candidates = ", ".join(f"{c.label} {c.confidence:.2f}" for c in result.causes[:4])
    facts = result.causes[0].evidence.get("facts", {})
    # calibration.py's reason (too few keys), or reliability.py's (held-out outcomes)
    thin = facts.get("thin") or facts.get("calibrated")
    why = f"{thin}; " if thin else ""
    return (f"the text alone cannot decide ({why}candidates: {candidates}); "
            f"this decides from the files: {DECIDE_COMMAND}")


def render_diagnosis(result: DiagnoseResult, fmt: str = "table") -> str:
    """The diagnosis as ``table`` (plain text), ``markdown`` or ``json``."""
    if fmt == "json":
        return to_json(result.to_dict())
    lines = [heading(_header(result), fmt), ""]
    if result.note:
        lines += [f"state_dict: {result.note}", ""]
    if not result.found:
        lines.append("the checkpoint loads strictly into the model; nothing to diagnose")
    elif not result.causes and result.source == "text" and result.evidence.is_empty:
        # A header or a sentence with no key and no shape: nothing to read a cause from.
        lines.append(f"the text names no key and no shape, so it cannot tell the cause; "
                     f"this decides from the files: {DECIDE_COMMAND}")
    elif not result.causes:
        lines.append("no known cause fits; compare the key lists with ckpttools diff")
    elif not result.decided and result.source == "text":
        lines += [_undecided(result), ""]
    if result.plan is not None and (result.plan.steps or result.plan.source.key or result.plan.no_plan) and result.found:
        lines += [render_plan(result.plan, fmt), ""]
    plan_code = result.plan.python if result.plan is not None else None
    no_plan = result.plan is not None and bool(result.plan.no_plan)
    for i, cause in enumerate(result.causes, start=1):
        lines += _cause(i, cause, fmt, same_as_plan=cause.fix_code == plan_code and not no_plan)
    return "\n".join(lines).rstrip() + "\n"
