"""Rendering a ``ConvertResult``: a short summary, or JSON."""

from __future__ import annotations

from ckpttools.ops.convert.conversion import ConvertResult
from ckpttools.render import to_json
from ckpttools.units import human_bytes, plural


def render_convert(result: ConvertResult, fmt: str) -> str:
    """The report for stdout: ``json`` (the ``to_dict()`` document) or a few text lines."""
    if fmt == "json":
        return to_json(result.to_dict())
    lines = [f"{result.source} -> {result.destination} ({result.target}): "
             f"{plural(result.tensors, 'tensor')}, {human_bytes(result.nbytes)}"]
    if result.member:
        lines.append(f"converted {result.member}, the model weights of the folder")
    if result.others:
        lines.append(f"other checkpoint files, not converted: {', '.join(result.others)}; "
                     f"convert one with --key {result.others[0]}")
    if result.copied:
        lines.append(f"copied beside the weights: {', '.join(result.copied)}")
    if result.cast:
        lines.append(f"cast {plural(len(result.cast), 'floating tensor')} to {result.dtype}")
    if result.dropped:
        lines.append(f"dropped {plural(len(result.dropped), 'value')}: {', '.join(result.dropped[:5])}")
    if len(result.files) > 1:
        lines.append(f"wrote {plural(len(result.files), 'file')}")
    if not result.verified:
        lines.append("not verified (--no-verify)")
    elif result.ok and result.cast:  # the cast ones are rounded: equal to the cast, not the source
        lines.append("verified: object graph equal (types, key order, _metadata, attributes, "
                     f"storage sharing); the values of the {plural(len(result.cast), 'cast tensor')} "
                     f"are the source's rounded to {result.dtype}, the others bit for bit")
    elif result.ok:
        lines.append("verified: object graph equal (types, key order, _metadata, attributes, "
                     "storage sharing), every tensor bit for bit")
    else:
        lines.append("verification FAILED; output removed:")
        lines += [f"  {m}" for m in result.mismatches]
    return "\n".join(lines)
