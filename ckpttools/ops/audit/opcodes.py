"""The report of one pickle's static walk (``formats.pickle.opwalk``): every global it would
import and every call it would make, found without importing or calling anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ckpttools.entries import GlobalRef
from ckpttools.formats.pickle.opwalk import walk_ops


@dataclass(frozen=True)
class Finding:
    """Something unsafe or odd in a pickle that is not a plain global (a dynamic import, a call
    of a computed value, attributes set on a function)."""

    safety: str
    offset: int
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"safety": self.safety, "offset": self.offset, "message": self.message}


@dataclass(frozen=True)
class PickleScan:
    """What the opcode walk of one pickle found.

    Attributes:
        name: where the pickle is (``archive/data.pkl``, ``pickle 4`` of a legacy file).
        offset / end: byte range walked (end is just past STOP, or where the walk stopped).
        protocol: the PROTO opcode's value (0 when absent).
        opcodes: opcodes read.
        globals: every global, in order of first reference, classified.
        findings: dynamic imports, computed calls and other unsafe constructs.
        error: why the walk stopped early (empty when it reached STOP).
        tuple_depth: how deep tuples nest in it (a key nested too deep crashes any loader).
        hostile: why building it takes quadratic time (colliding keys; also a finding).
    """

    name: str
    offset: int
    end: int
    protocol: int
    opcodes: int
    globals: tuple[GlobalRef, ...]
    findings: tuple[Finding, ...] = ()
    error: str = ""
    tuple_depth: int = 0
    hostile: str = ""

    @property
    def safety(self) -> str:
        levels = [g.safety for g in self.globals] + [f.safety for f in self.findings]
        for level in ("unsafe", "unknown"):
            if level in levels:
                return level
        return "safe"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "offset": self.offset, "end": self.end, "protocol": self.protocol,
            "opcodes": self.opcodes, "safety": self.safety, "error": self.error or None,
            "globals": [{"module": g.module, "name": g.name, "safety": g.safety,
                         "reason": g.reason} for g in self.globals],
            "findings": [f.to_dict() for f in self.findings],
        }


def scan_opcodes(data: Any, name: str, offset: int = 0, end: int | None = None) -> PickleScan:
    """Walk one pickle from ``offset`` of ``data`` up to its STOP.

    Args:
        data: ``bytes`` or an ``mmap`` of the file or record.
        name: how to name the pickle in the report.
        offset: where the pickle starts.
        end: where its bytes end (default: the end of ``data``).

    Returns:
        The globals and findings; ``error`` says why the walk stopped early, if it did (it
        stops exactly where CPython's unpickler would raise).
    """
    w = walk_ops(data, name, offset, end)
    return PickleScan(name, offset, w.end, w.protocol, w.opcodes, w.globals,
                      tuple(Finding(*f) for f in w.findings), w.error, w.tuple_depth,
                      w.hostile)
