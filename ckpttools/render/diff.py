"""Render a ``DiffResult`` (checkpoint vs model) and a ``CheckpointDiffResult`` (A vs B)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ckpttools.keypaths import compress_keys
from ckpttools.render import heading, shape_text, table, to_json
from ckpttools.render.plan import render_plan
from ckpttools.units import human_count

if TYPE_CHECKING:  # each report needs only its own result's module, which its command imports
    from ckpttools.ops.diff.pair import CheckpointDiffResult
    from ckpttools.ops.model_diff import DiffResult

# Tables longer than this are cut in table/markdown output (JSON always lists everything).
MAX_ROWS = 40


def _rows(items: Iterable[tuple[str, Any]], width: int) -> list[list[Any]]:
    rows = []
    for key, value, count in compress_keys(items):
        row = [key, *(value if isinstance(value, tuple) else (value,))]
        rows.append(row + [count if count > 1 else ""])
    if len(rows) > MAX_ROWS:
        rows = rows[:MAX_ROWS] + [[f"... {len(rows) - MAX_ROWS} more rows (see --format json)"]
                                  + [""] * width]
    return rows


def _section(title: str, fmt: str, items: list[tuple[str, Any]], headers: list[str]) -> str:
    if not items:
        return ""
    body = table(_rows(items, len(headers) - 1), headers, fmt)
    return f"{heading(f'{title} ({len(items)})', fmt)}\n{body}"


def render_diff(result: DiffResult, fmt: str) -> str:
    """The report for ``fmt`` (``table``, ``markdown`` or ``json``): verdict, summary, fixes,
    then a table per category with repeated layers folded."""
    if fmt == "json":
        return to_json(result.to_dict())
    c = result.comparison
    parts = [_summary(result, fmt)]
    if result.plan is not None and (result.plan.steps or result.plan.source.key or result.plan.no_plan):
        parts.append(render_plan(result.plan, fmt))
    kinds = result.model_kinds
    parts += [
        _section("Missing (in the model, not the checkpoint)", fmt,
                 [(k, (shape_text(result.model_keys[k]), kinds[k])) for k in c.missing],
                 ["key", "model shape", "kind", "n"]),
        _section("Unexpected (in the checkpoint, not the model)", fmt,
                 [(k, (shape_text(result.checkpoint_keys[k]),)) for k in c.unexpected],
                 ["key", "checkpoint shape", "n"]),
        _section("Shape mismatches", fmt,
                 [(m.key, (shape_text(m.checkpoint_shape), shape_text(m.model_shape)))
                  for m in c.shape_mismatches], ["key", "checkpoint", "model", "n"]),
        _section("Dtype differences (cast on load)", fmt,
                 [(d.key, (d.checkpoint_dtype, d.model_dtype)) for d in c.dtype_differences],
                 ["key", "checkpoint", "model", "n"]),
        _section("Tied aliases absent (strict=True needs them; from_pretrained re-ties them)", fmt,
                 [(a, (b,)) for a, b in c.tied], ["key", "loaded through", "n"]),
    ]
    return "\n\n".join(p for p in parts if p)


def _summary(result: DiffResult, fmt: str) -> str:
    c = result.comparison
    lines = [heading(("OK " if result.ok else "FAIL ") + result.verdict, fmt), "",
             f"checkpoint: {result.checkpoint} ({result.state_dict_note})",
             f"model:      {result.model}",
             f"matched {len(c.matched)}, missing {len(c.missing)}, unexpected "
             f"{len(c.unexpected)}, shape mismatches {len(c.shape_mismatches)}, dtype "
             f"differences {len(c.dtype_differences)}, tied aliases absent {len(c.tied)}"]
    if c.shape_mismatches:
        lines.append(f"strict=False would raise too: {len(c.shape_mismatches)} shape mismatches "
                     "fail any load_state_dict")
    else:
        lines.append(f"strict=False would load {100 * result.coverage:.0f}% of the model's "
                     f"parameters ({human_count(result.loaded_params)} of "
                     f"{human_count(result.total_params)})")
    if result.non_persistent:
        lines.append(f"non-persistent buffers (not saved, never missing): "
                     f"{len(result.non_persistent)}")
    # warnings go to stderr (the CLI prints them); the JSON keeps them in "warnings"
    return "\n".join(lines)


def render_checkpoint_diff(result: CheckpointDiffResult, fmt: str) -> str:
    """The A-vs-B report: verdict, key differences, value differences, non-tensor values."""
    if fmt == "json":
        return to_json(result.to_dict())
    word = "OK " if result.ok else "FAIL " if result.differs else "UNKNOWN "
    head = [heading(word + result.verdict, fmt), "",
            f"A: {result.path_a}", f"B: {result.path_b}",
            f"tolerance: atol={result.atol:g}, rtol={result.rtol:g}"]
    if result.note:
        head.append(f"note: {result.note}")
    values = [(t.key, (t.dtype_a, t.dtype_b, "yes" if t.bitwise_equal else "no",
                       f"{t.max_abs_diff:.3g}", f"{t.max_rel_diff:.3g}",
                       "yes" if t.allclose else "no") if t.compared
               else (t.dtype_a, t.dtype_b, "no data (meta)", "-", "-", "not compared"))
              for t in result.tensors if not t.bitwise_equal or t.dtype_a != t.dtype_b]
    parts = [
        "\n".join(head),
        _section("Structure differences", fmt, [(d, ()) for d in result.structure],
                 ["path", "n"]),
        _section("Only in A", fmt, [(k, ()) for k in result.only_a], ["key", "n"]),
        _section("Only in B", fmt, [(k, ()) for k in result.only_b], ["key", "n"]),
        _section("Shape differences", fmt, [(k, (shape_text(a), shape_text(b)))
                                            for k, a, b in result.shape_differences],
                 ["key", "A", "B", "n"]),
        _section("Tensor on one side, value on the other", fmt,
                 [(k, ()) for k in result.kind_differences], ["key", "n"]),
        _section("Tensors not bitwise equal", fmt, values,
                 ["key", "dtype A", "dtype B", "bitwise", "max abs", "max rel", "allclose", "n"]),
        _section("Non-tensor values that differ", fmt,
                 [(o.key, (_short(o.value_a), _short(o.value_b)))
                  for o in result.object_differences], ["key", "A", "B", "n"]),
    ]
    return "\n\n".join(p for p in parts if p)


def _short(value: Any, width: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."
