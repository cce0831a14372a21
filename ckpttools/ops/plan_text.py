"""The renderings of a fix plan: a Python snippet that runs as pasted with only ``model``
defined, the ``ckpttools remap`` command, and framework-native advice next to them."""

from __future__ import annotations

import os
import shlex
from dataclasses import replace
from typing import TYPE_CHECKING

from ckpttools.ops.plan_advice import advise
from ckpttools.ops.fix_plan import SNIPPET_ONLY

if TYPE_CHECKING:
    from ckpttools.ops.fix_plan import FixPlan, Source, Step


def load_lines(source: Source) -> list[str]:
    """The lines that put the state_dict in ``sd``, the way its format needs."""
    if source.fmt == "safetensors":
        return ["import safetensors.torch", f"sd = safetensors.torch.load_file({source.file!r})"]
    if source.fmt == "safetensors-sharded":
        return ["import glob, os, safetensors.torch", "sd = {}",
                f"for f in sorted(glob.glob(os.path.join({source.file!r}, '*.safetensors'))):",
                "    sd.update(safetensors.torch.load_file(f))"]
    index = "".join(f"[{int(p)}]" if p.isdigit() else f"[{p!r}]"
                    for p in source.key.split(".") if p)
    return [f"sd = torch.load({source.file!r}, map_location='cpu', weights_only=True){index}"]


def _step_lines(step: Step) -> list[str]:
    if step.kind == "drop":
        return [f"sd = {{k: v for k, v in sd.items() if not re.search({step.args[0]!r}, k)}}"]
    if step.kind == "strip-prefix":
        return [f"sd = {{k.removeprefix({step.args[0]!r}): v for k, v in sd.items()}}"]
    if step.kind == "add-prefix":
        return [f"sd = {{{step.args[0]!r} + k: v for k, v in sd.items()}}"]
    if step.kind == "rename":
        rules = [tuple(r.partition("=")[::2]) for r in step.args]
        return [f"for pattern, repl in {rules!r}:",
                "    sd = {re.sub(pattern, repl, k): v for k, v in sd.items()}"]
    if step.kind == "num-batches-tracked":
        return ["sd.update({k: v for k, v in model.state_dict().items() "
                "if k.endswith('.num_batches_tracked') and k not in sd})"]
    if step.kind == "tie":
        return [f"sd[{a!r}] = sd[{o!r}]" for a, o in (t.split("=") for t in step.args)]
    if step.kind == "copy-embedding":
        return [f"sd[{a!r}] = sd[{o!r}]" for a, o in (t.split("=") for t in step.args)]
    key, _, spec = step.args[0].partition("=")
    *grid, tokens = (int(x) for x in spec.split(","))
    return ["from timm.layers import resample_abs_pos_embed",
            f"sd[{key!r}] = resample_abs_pos_embed(sd[{key!r}], new_size={grid!r}, "
            f"num_prefix_tokens={tokens})"]


def python_snippet(plan: FixPlan) -> str:
    """The plan as Python: load, apply every step, load into ``model``."""
    body = load_lines(plan.source)
    for step in plan.steps:
        body += _step_lines(step)
    if plan.strict:
        body.append("model.load_state_dict(sd)")
    else:
        body.append("result = model.load_state_dict(sd, strict=False)")
        left = ", ".join(plan.left[:4]) + (", ..." if len(plan.left) > 4 else "")
        body.append(f"# {len(plan.left)} model keys keep their initialisation: {left}")
    for step in plan.steps:
        if step.kind == "copy-embedding":  # tie them again, as the checkpoint was saved
            head, embed = (k.rpartition(".")[0] for k in step.args[0].split("="))
            body.append(f"model.get_submodule({head!r}).weight = model.get_submodule({embed!r}).weight")
    imports = ["torch"] + (["re"] if any(s.kind in ("drop", "rename") for s in plan.steps) else [])
    return "\n".join([f"import {', '.join(imports)}", *body])


def output_path(source: Source) -> str:
    """Where the remap command writes: next to the file, ``-fixed`` added; for a file in a model
    folder, next to the folder (a second weights file inside it would be read with the first)."""
    base, ext = os.path.splitext(os.path.basename(os.path.normpath(source.file)))
    # a nested source is written as its state_dict alone: a plain .pth, not another .ckpt
    ext = ".safetensors" if source.fmt.startswith("safetensors") else \
        (".pth" if source.key or not ext else ext)
    where = os.path.dirname(os.path.normpath(source.file))
    if os.path.isdir(source.path) and os.path.normpath(source.file) != os.path.normpath(source.path):
        where, base = os.path.split(os.path.normpath(source.path))
    return os.path.join(where, f"{base}-fixed{ext}")


def remap_command(plan: FixPlan) -> tuple[str, str]:
    """The ``ckpttools remap`` command writing a file that loads as the plan says, and a note
    when remap cannot express a step."""
    snippet_only = sorted({s.kind for s in plan.steps if s.kind in SNIPPET_ONLY})
    if snippet_only:
        return "", (f"remap cannot {' or '.join(snippet_only)}; use the Python snippet or the "
                    "framework's loader")
    if not plan.steps and not plan.source.key:
        return "", ""
    args = ["ckpttools", "remap", plan.source.file, output_path(plan.source)]
    if plan.source.key:
        args += ["--key", plan.source.key]
    for step in plan.steps:
        if step.kind == "drop":
            args += ["--drop", step.args[0]]
        elif step.kind in ("strip-prefix", "add-prefix"):
            args += [f"--{step.kind}", step.args[0]]
        elif step.kind == "rename":
            for rule in step.args:
                args += ["--rename", rule]
    note = ""
    if any(s.kind == "num-batches-tracked" for s in plan.steps):
        note = ("remap writes a plain state_dict, for which BatchNorm fills the missing "
                "num_batches_tracked with 0")
    return shlex.join(args), note


def render_plan(plan: FixPlan) -> FixPlan:
    """The plan with its snippet, command and advice filled in (no snippet nor command for an
    undecided plan: any would load tensors into places the shapes cannot confirm)."""
    if plan.no_plan:
        return replace(plan, advice=advise(plan))
    command, note = remap_command(plan)
    return replace(plan, python=python_snippet(plan), command=command, command_note=note,
                   advice=advise(plan))
