"""Shared pieces of the benchmarks: checkpoint generation and per-process time and peak RSS.

Every figure is a ratio against the obvious approach measured in the same run, because these
machines are noisy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

DATA = Path(os.environ.get("CKPTTOOLS_BENCH_DATA", Path(__file__).resolve().parent.parent / "bench-data"))

# Runs ``cmd`` as a child and prints its wall time and the child's own peak RSS: a fresh wrapper
# per measurement, so RUSAGE_CHILDREN's maximum is this one child's.
_WRAPPER = """
import json, resource, subprocess, sys, time
cmd = json.loads(sys.argv[1])
t = time.perf_counter()
proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
rc = proc.returncode
wall = time.perf_counter() - t
use = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"wall": wall, "rss_kb": use.ru_maxrss, "cpu": use.ru_utime + use.ru_stime, "rc": rc,
                  "err": proc.stderr.decode(errors="replace")[-300:]}))
"""


@dataclass(frozen=True)
class Measure:
    wall: float
    rss_mb: float
    cpu: float = 0.0  # user + system seconds of the child: steadier than wall on a busy machine

    def __str__(self) -> str:
        return f"{self.wall:7.3f} s {self.rss_mb:7.1f} MB"


def measure(cmd: list[str], repeat: int = 3, ok_codes: tuple[int, ...] = (0,)) -> Measure:
    """Best wall time over ``repeat`` runs and the peak RSS of ``cmd`` (a child process).

    Raises:
        RuntimeError: the command exited with a code outside ``ok_codes``; a crash must never
            pass for a fast run.
    """
    best: Measure | None = None
    for _ in range(repeat):
        out = subprocess.run([sys.executable, "-c", _WRAPPER, json.dumps(cmd)],
                             capture_output=True, text=True, check=True).stdout
        r = json.loads(out)
        if r["rc"] not in ok_codes:
            raise RuntimeError(f"{cmd} exited {r['rc']}: {r.get('err', '')}")
        m = Measure(r["wall"], r["rss_kb"] / 1024, r["cpu"])
        best = m if best is None or m.wall < best.wall else Measure(best.wall, max(best.rss_mb, m.rss_mb),
                                                                    best.cpu)
    assert best is not None
    return best


def parse_size(text: str) -> int:
    """``256MB`` / ``1GB`` / ``4GB`` -> bytes (decimal units, as disk sizes are quoted)."""
    text = text.strip().upper().rstrip("B")
    scale = {"K": 10**3, "M": 10**6, "G": 10**9}.get(text[-1:], 1)
    return int(float(text.rstrip("KMG")) * scale)


def transformer_state(total_bytes: int, dtype: str = "float32", hidden: int = 1024) -> dict:
    """A GPT-like state_dict of about ``total_bytes``: embeddings, then blocks of attention and MLP."""
    import torch

    dt = getattr(torch, dtype)
    item = torch.empty((), dtype=dt).element_size()
    block = 12 * hidden * hidden * item
    vocab = 32000
    state = {"embed.weight": torch.empty(vocab, hidden, dtype=dt)}
    layers = max(1, (total_bytes - vocab * hidden * item) // block)
    for i in range(layers):
        p = f"layers.{i}."
        state[p + "attn.qkv.weight"] = torch.empty(3 * hidden, hidden, dtype=dt)
        state[p + "attn.qkv.bias"] = torch.empty(3 * hidden, dtype=dt)
        state[p + "attn.out.weight"] = torch.empty(hidden, hidden, dtype=dt)
        state[p + "mlp.up.weight"] = torch.empty(4 * hidden, hidden, dtype=dt)
        state[p + "mlp.down.weight"] = torch.empty(hidden, 4 * hidden, dtype=dt)
        state[p + "ln1.weight"] = torch.ones(hidden, dtype=dt)
        state[p + "ln2.weight"] = torch.ones(hidden, dtype=dt)
    state["norm.weight"] = torch.ones(hidden, dtype=dt)
    for t in state.values():
        if t.is_floating_point():
            t.normal_()
    return state


def many_small_state(count: int = 20000) -> dict:
    """``count`` small tensors with realistic nested names."""
    import torch

    return {f"blocks.{i // 20}.sub.{i % 20}.weight": torch.randn(16) for i in range(count)}


def checkpoint(name: str, make: "callable", fmt: str) -> Path:
    """Write ``make()`` as ``fmt`` (``pth`` or ``safetensors``) under ``DATA`` once; reuse after."""
    DATA.mkdir(parents=True, exist_ok=True)
    path = DATA / f"{name}.{fmt}"
    if path.exists():
        return path
    import torch

    state = make()
    tmp = path.with_suffix(".tmp")
    if fmt == "pth":
        torch.save(state, tmp)
    else:
        from safetensors.torch import save_file

        save_file(state, str(tmp))
    os.replace(tmp, path)
    return path


def ckpttools_cmd(*args: str) -> list[str]:
    """The ``ckpttools`` CLI as a child process command."""
    return [sys.executable, "-m", "ckpttools", *args]
