"""Start-up and exit of the model commands: what ckpttools spends beyond ``import torch``,
against the obvious script, at one size (16 MB by default, where that is most of the cost).

Two figures per command, medians of fresh processes run interleaved:

- ``in-process``: CPU seconds after ``import torch`` until the report is written (ckpttools'
  own imports, the model build, the reading and the report), measured inside the process with
  ``time.process_time`` so that the 1.5 s of ``import torch`` adds no noise;
- ``whole - torch``: the whole process's CPU (user + system) minus that of ``import torch``
  alone, so start-up before torch and the interpreter's exit count too.

Usage: python scripts/bench_startup.py                 (16MB)
       python scripts/bench.py startup --sizes 16MB,256MB
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

from bench_sweep import MODEL, _files, _py
from benchlib import ckpttools_cmd, measure

PY = sys.executable
REPEAT = 7
# Runs ckpttools' CLI or an obvious script after ``import torch`` and prints the CPU seconds
# it took; the report goes to /dev/null.
_PROBE = """
import contextlib, json, os, sys, time
import torch
side, payload = sys.argv[1], json.loads(sys.argv[2])
with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
    t = time.process_time()
    if side == "ckpttools":
        from ckpttools.cli.main import main
        main(payload)
    else:
        sys.argv = ["-c", *payload[1]]
        exec(compile(payload[0], "<obvious>", "exec"), {"__name__": "__main__"})
    spent = time.process_time() - t
print(spent)
"""


def _in_process(side: str, payload: object) -> float:
    out = subprocess.run([PY, "-c", _PROBE, side, json.dumps(payload)], capture_output=True,
                         text=True, check=True).stdout
    return float(out.strip().splitlines()[-1])


def _pairs(size: str) -> dict[str, tuple[list[str], str, list[str]]]:
    """command: (ckpttools arguments, obvious script's name, its arguments)."""
    pth, _, other = _files(size)
    model = ["--model", MODEL, "-a", f"size={size}"]
    return {"diff --model": (["diff", pth, *model], "diff-model", [pth, size]),
            "diagnose --checkpoint": (["diagnose", "--checkpoint", pth, *model], "diagnose",
                                      [pth, size]),
            "audit --model": (["audit", pth, *model], "audit-model", [pth, size]),
            "diff A B": (["diff", pth, other], "diff-ab", [pth, other])}


def _row(name: str, size: str, ours: list[str], obvious: str, args: list[str]) -> str:
    runs: dict[str, list[float]] = {k: [] for k in ("in ck", "in obv", "ck", "obv", "torch")}
    code = _py(obvious)[2]
    for _ in range(REPEAT):  # interleaved, so that a slow spell hits every figure
        runs["in ck"].append(_in_process("ckpttools", ours))
        runs["in obv"].append(_in_process("obvious", [code, args]))
        runs["ck"].append(measure(ckpttools_cmd(*ours), repeat=1, ok_codes=(0, 1)).cpu)
        runs["obv"].append(measure(_py(obvious, *args), repeat=1, ok_codes=(0, 1)).cpu)
        runs["torch"].append(measure(_py("import-torch"), repeat=1).cpu)
    m = {k: statistics.median(v) for k, v in runs.items()}
    return (f"{name:24s} {size:>6s} {m['in ck']:6.3f}/{m['in obv']:6.3f} "
            f"{m['in obv'] / m['in ck']:6.2f}  {m['ck']:5.2f}/{m['obv']:5.2f} "
            f"{m['obv'] / m['ck']:6.2f} {m['torch']:6.2f} {m['ck'] - m['torch']:+7.3f} "
            f"{m['obv'] - m['torch']:+7.3f}")


def run(sizes: list[str] | None) -> None:
    """Print the table: per command, CPU after ``import torch`` in the process, and the whole
    process's CPU with ``import torch`` alone as the floor."""
    print(f"{'command':24s} {'size':>6s} {'in-process ck/obv':>13s} {'ratio':>6s}  "
          f"{'whole ck/obv':>11s} {'ratio':>6s} {'torch':>6s} {'ck-torch':>7s} {'obv-torch':>7s}")
    for size in sizes or ["16MB"]:
        for name, (ours, obvious, args) in _pairs(size).items():
            print(_row(name, size, ours, obvious, args), flush=True)
    print(f"(CPU seconds, medians of {REPEAT} interleaved rounds; ratio = obvious / ckpttools)")


if __name__ == "__main__":
    run(sys.argv[1:] or None)
