"""Render a fix plan (shared by ``diff --model`` and ``diagnose --checkpoint``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ckpttools.render import heading

if TYPE_CHECKING:
    from ckpttools.ops.fix_plan import FixPlan


def render_plan(plan: FixPlan, fmt: str) -> str:
    """A fix plan: its steps with the checked counts after each, the snippet, the command and
    the framework's own way (shared by ``diff`` and ``diagnose --checkpoint``)."""
    if plan.no_plan:
        return "\n".join([heading(f"No fix plan: {plan.no_plan}", fmt), "",
                          *(f"- {u}" for u in plan.undecided), *([""] if plan.undecided else []),
                          plan.no_plan_hint])
    verdict = ("loads with strict=True" if plan.strict else
               f"loads with strict=False, {len(plan.left)} model keys keep their initialisation")
    lines = [heading(f"Fix plan (checked against the model: {plan.after.text}; {verdict})", fmt), ""]
    for n, step in enumerate(plan.steps, start=1):
        after = step.after.text if step.after else ""
        lines += [f"{n}. {step.summary}", f"   after: {after}"]
    code = "```" if fmt == "markdown" else ""
    lines += ["", "python:"] + ([code + "python"] if code else []) + \
        [("" if code else "    ") + line for line in plan.python.splitlines()] + ([code] if code else [])
    if plan.command:
        lines += ["", f"remap:  {plan.command}"]
    if plan.command_note:
        lines.append(f"note:   {plan.command_note}")
    for a in plan.advice:
        lines += ["", f"{a['framework']}: {a['summary']}", f"    {a['code']}"]
    return "\n".join(lines)
