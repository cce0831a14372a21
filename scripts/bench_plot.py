"""Benchmark ``diff A B --plot``: the layer-change chart costs little over ``diff A B``.

The relative L2 change per tensor is measured while ``diff`` streams the pairs (the same chunks,
one tensor at a time); the chart is drawn from the result. Target (#19): within 1.2x the time
and the peak memory of ``diff A B`` on two 1 GB checkpoints. Two pairs:

1. values differ everywhere (two independently initialised checkpoints, as in ``bench diff``);
2. a fine-tuned copy: four blocks and the norm changed, the rest bitwise equal (the equal chunks
   still count toward ``||A||``, so this is where the measurement costs most).

Memory is the whole process tree's: every 10 ms the RSS of the command and of every process it
started are read from ``/proc`` and summed, and the peak of that sum is reported beside each
process's own peak (``VmHWM``). A drawing process that lived beside the command would count in
full (shared library pages too, so the sum errs high, never low).

The drawing stays in the command's process. To show why, each size also measures ``diff A B``
with a warm drawing process beside it (a second interpreter that has imported matplotlib and
drawn once, as a process started with the command would have by the end of the comparison):
the tree's memory is what that design would cost.

Usage: python scripts/bench.py plot --sizes 1GB     (the target; ~3 GB of disk)
       python scripts/bench.py plot                 (256MB)
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import DATA, checkpoint, ckpttools_cmd, parse_size, transformer_state  # noqa: E402

TUNED_BLOCKS = (0, 3, 6, 9)
REPEAT = 5
SAMPLE_S = 0.01


@dataclass(frozen=True)
class TreeRun:
    """One run of a command: wall and CPU seconds, the peak of the tree's summed RSS and each
    process's own peak (MB, in start order: the command first)."""

    wall: float
    cpu: float
    tree_mb: float
    own_mb: tuple[float, ...]


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(x) for x in f.read().split()]
    except OSError:  # it ended between two reads
        pass
    return out


def _rss_kb(pid: int) -> tuple[int, int] | None:
    """``(VmRSS, VmHWM)`` in kB, or None when the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            fields = dict(line.split(":", 1) for line in f if line.startswith(("VmRSS", "VmHWM")))
        return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])
    except (OSError, KeyError):
        return None


def run_tree(cmd: list[str], ok_codes: tuple[int, ...] = (0, 1)) -> TreeRun:
    """Run ``cmd``, sampling its process tree's RSS every 10 ms.

    Raises:
        RuntimeError: the command exited with a code outside ``ok_codes``.
    """
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    tree_kb, own_kb = 0, {}
    while True:
        pids, i = [proc.pid], 0
        while i < len(pids):
            pids += _children(pids[i])
            i += 1
        total = 0
        for pid in pids:
            got = _rss_kb(pid)
            if got is not None:
                total += got[0]
                own_kb[pid] = max(own_kb.get(pid, 0), got[1])
        tree_kb = max(tree_kb, total)
        pid, status, use = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        time.sleep(SAMPLE_S)
    wall = time.perf_counter() - start
    rc = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if rc not in ok_codes:
        raise RuntimeError(f"{cmd} exited {rc}: {err[-300:]}")
    # the command's own peak from the kernel (covers the last 10 ms the sampling may miss)
    own = [max(own_kb.get(proc.pid, 0), use.ru_maxrss if len(own_kb) <= 1 else 0) / 1024]
    own += [kb / 1024 for p, kb in own_kb.items() if p != proc.pid]
    return TreeRun(wall, use.ru_utime + use.ru_stime, tree_kb / 1024, tuple(own))


def _best(runs: list[TreeRun]) -> TreeRun:
    """The fastest run's time, the largest peaks (memory is steady; the worst is the honest one)."""
    fast = min(runs, key=lambda r: r.wall)
    width = max(len(r.own_mb) for r in runs)
    own = tuple(max(r.own_mb[i] for r in runs if len(r.own_mb) > i) for i in range(width))
    return TreeRun(fast.wall, min(r.cpu for r in runs), max(r.tree_mb for r in runs), own)


# A warm drawing process beside ``diff A B``: it imports matplotlib, draws once, and waits for
# the command to end; the launcher then becomes the command (exec keeps its pid, so the drawing
# process is the command's child and counts in its tree).
_DRAWER = """import io, os, time
import matplotlib
matplotlib.use("Agg")
from matplotlib.figure import Figure
fig = Figure(figsize=(10, 4.2))
ax = fig.subplots()
ax.set_xticks(range(20), [f"layers.{i}" for i in range(20)], rotation=90)
ax.annotate("layers.3.mlp.fc1.weight", (3, 0.5))
fig.savefig(io.BytesIO(), format="png")
while os.getppid() != 1:
    time.sleep(0.01)
"""
_LAUNCH = ("import os, subprocess, sys; subprocess.Popen([sys.executable, '-c', sys.argv[1]]); "
           "os.execv(sys.executable, [sys.executable, *sys.argv[2:]])")


def _with_drawer(cmd: list[str]) -> list[str]:
    return [sys.executable, "-c", _LAUNCH, _DRAWER, *cmd[1:]]


def _tuned(first: Path) -> dict:
    import torch

    state = torch.load(first, mmap=True, weights_only=True)
    out = {k: v.clone() if k.startswith(tuple(f"layers.{i}." for i in TUNED_BLOCKS)) or k == "norm.weight"
           else v for k, v in state.items()}
    gen = torch.Generator().manual_seed(0)
    for key, value in out.items():
        if value is not state[key]:
            value.add_(torch.randn(value.shape, generator=gen), alpha=1e-3 * (1 + hash(key) % 7))
    return out


def _line(label: str, r: TreeRun) -> str:
    own = " + ".join(f"{mb:.0f}" for mb in r.own_mb)
    return (f"  {label:34s}{r.wall:7.3f} s {r.cpu:7.3f} s CPU  tree peak {r.tree_mb:6.1f} MB  "
            f"(each process's own peak: {own} MB)")


def run(sizes: list[str]) -> None:
    """Print time and the tree's peak RSS of ``diff A B`` with and without ``--plot``, and the
    ratios; the two commands alternate, so that a busy spell of the machine hits both."""
    for size in sizes:
        total = parse_size(size)
        first = checkpoint(f"diff-first-{size}", lambda: transformer_state(total), "pth")
        other = checkpoint(f"diff-other-{size}", lambda: transformer_state(total), "pth")
        tuned = checkpoint(f"plot-tuned-{size}", lambda: _tuned(first), "pth")
        for label, b in (("values differ everywhere", other), ("fine-tuned copy, 4 blocks changed", tuned)):
            plain_cmd = ckpttools_cmd("diff", str(first), str(b))
            with tempfile.TemporaryDirectory() as tmp:
                plot_cmd = ckpttools_cmd("diff", str(first), str(b), "--plot", str(Path(tmp) / "changes.png"))
                run_tree(plain_cmd)  # the page cache warm for both
                runs = [(run_tree(plain_cmd), run_tree(plot_cmd)) for _ in range(REPEAT)]
                drawer = [run_tree(_with_drawer(plain_cmd)) for _ in range(2)] \
                    if b == other else []
            plain, plotted = _best([p for p, _ in runs]), _best([q for _, q in runs])
            print(f"diff A B --plot, two {size} checkpoints ({label}), best of {REPEAT}")
            print(_line("ckpttools diff A B", plain))
            print(_line("ckpttools diff A B --plot x.png", plotted))
            print(f"  ratio: {plotted.wall / plain.wall:.2f}x the time ({plotted.cpu / plain.cpu:.2f}x "
                  f"the CPU time), {plotted.tree_mb / plain.tree_mb:.2f}x the memory of the process "
                  f"tree (target: within 1.2x)", flush=True)
            if drawer:
                beside = _best(drawer)
                print(_line("diff A B + a warm drawing process", beside))
                print(f"  a drawing process would cost {beside.tree_mb / plain.tree_mb:.2f}x the "
                      f"memory of the process tree", flush=True)
    print(f"(checkpoints kept in {DATA})")


if __name__ == "__main__":
    run(sys.argv[1:] or ["1GB"])
