"""The size sweep: every command against its obvious approach, at 16 MB / 256 MB / 1 GB (4 GB on
request), in one run, printed as one table of ratios.

Each row runs ckpttools and the few lines a user would write instead, as fresh processes,
interleaved ``repeat`` times; the table shows medians of wall time and of CPU time (user +
system, steadier when other jobs share the machine) and ``ratio = obvious / ckpttools`` of each
(above 1: ckpttools is faster). Where the command needs torch, ``import torch`` alone, measured
in the same rounds, is the floor. The model is ``bench_model.BenchGPT`` (67M parameters at 256 MB, 1.0B
at 4 GB); the checkpoints are written once under ``bench-data/`` and reused.

Usage: python scripts/bench.py sweep                        (16MB, 256MB, 1GB)
       python scripts/bench.py sweep --sizes 16MB,256MB,1GB,4GB
"""

from __future__ import annotations

import shutil
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchlib import DATA, checkpoint, ckpttools_cmd, many_small_state, measure
from bench_model import bench_state, parse_size

PY = sys.executable
MODEL = f"{Path(__file__).resolve().parent / 'bench_model.py'}:BenchGPT"
DEFAULT_SIZES = ["16MB", "256MB", "1GB"]

_BUILD = ("import sys, torch\nsys.path.insert(0, {scripts!r})\nfrom bench_model import BenchGPT\n"
          "model = BenchGPT(sys.argv[2])\n"
          "sd = torch.load(sys.argv[1], mmap=True, weights_only=True)\n")
OBVIOUS = {
    "inspect-pth": ("import sys, torch\nsd = torch.load(sys.argv[1], mmap=True, weights_only=True)\n"
                    "print(len([(k, v.dtype, tuple(v.shape)) for k, v in sd.items()]))"),
    "inspect-st": ("import sys\nfrom safetensors import safe_open\n"
                   "with safe_open(sys.argv[1], framework='pt') as f:\n"
                   "    print(len([(k, f.get_slice(k).get_dtype(), f.get_slice(k).get_shape())"
                   " for k in f.keys()]))"),
    "scan": "import sys, torch\ntorch.load(sys.argv[1], mmap=True, weights_only=True)",
    "diff-ab": ("import sys, torch\na = torch.load(sys.argv[1], mmap=True, weights_only=True)\n"
                "b = torch.load(sys.argv[2], mmap=True, weights_only=True)\n"
                "print(sorted(a.keys() ^ b.keys()), max(float((a[k].double() - b[k].double())"
                ".abs().max()) for k in a.keys() & b.keys()))"),
    "diff-model": _BUILD + "print(model.load_state_dict(sd, strict=False))",
    "diagnose": _BUILD + ("try:\n    model.load_state_dict(sd)\nexcept RuntimeError as e:\n"
                          "    print(e)"),
    "audit-model": _BUILD + ("assert all(bool(t.isfinite().all()) for t in sd.values())\n"
                             "model.load_state_dict(sd)"),
    "convert": ("import sys, torch\nfrom safetensors.torch import save_file\n"
                "save_file(torch.load(sys.argv[1], mmap=True, weights_only=True), sys.argv[2])"),
    "remap": ("import sys, torch\nsd = torch.load(sys.argv[1], mmap=True, weights_only=True)\n"
              "torch.save({'module.' + k: v for k, v in sd.items()}, sys.argv[2])"),
    "import-torch": "import torch",
    "read": ("import sys\nf = open(sys.argv[1], 'rb', buffering=0); b = bytearray(32 << 20)\n"
             "while f.readinto(b): pass"),
    "finite": ("import sys\nfrom ckpttools.formats.registry import open_checkpoint\n"
               "from ckpttools.ops.audit.finite import check_finite\n"
               "with open_checkpoint(sys.argv[1]) as r:\n"
               "    assert check_finite(r).status == 'PASS'"),
}


@dataclass(frozen=True)
class Row:
    """One line of the table: medians in seconds."""

    command: str
    size: str
    ours: Time
    obvious: Time
    floor: Time | None  # import torch, where the command needs torch
    target: str = ""
    met: bool | None = None


@dataclass(frozen=True)
class Time:
    """Median wall and CPU seconds of one command."""

    wall: float
    cpu: float


def _py(name: str, *args: str) -> list[str]:
    code = OBVIOUS[name].replace("{scripts!r}", repr(str(Path(__file__).resolve().parent)))
    return [PY, "-c", code, *args]


def medians(cmds: dict[str, list[str]], repeat: int) -> dict[str, Time]:
    """Median wall and CPU time of each command, the commands run interleaved ``repeat`` times
    so that a slow spell of the machine hits every one of them."""
    runs: dict[str, list[Any]] = {name: [] for name in cmds}
    for _ in range(repeat):
        for name, cmd in cmds.items():
            runs[name].append(measure(cmd, repeat=1, ok_codes=(0, 1)))
    return {name: Time(statistics.median(m.wall for m in ms), statistics.median(m.cpu for m in ms))
            for name, ms in runs.items()}


def _files(size: str) -> tuple[str, str, str]:
    pth = checkpoint(f"sweep-{size}", lambda: bench_state(size), "pth")
    st = checkpoint(f"sweep-{size}", lambda: bench_state(size), "safetensors")
    other = checkpoint(f"sweep-{size}-b", lambda: bench_state(size, seed=1), "pth")
    return str(pth), str(st), str(other)


def _size_rows(size: str, repeat: int) -> list[Row]:
    pth, st, other = _files(size)
    out = str(DATA / f"sweep-out-{size}")
    model = ["--model", MODEL, "-a", f"size={size}"]
    pairs = {  # command: (ckpttools, obvious, needs torch)
        "inspect .pth": (ckpttools_cmd("inspect", pth, "--format", "json"),
                         _py("inspect-pth", pth), False),
        "inspect .safetensors": (ckpttools_cmd("inspect", st, "--format", "json"),
                                 _py("inspect-st", st), False),
        "scan": (ckpttools_cmd("scan", pth), _py("scan", pth), False),
        "diff A B": (ckpttools_cmd("diff", pth, other), _py("diff-ab", pth, other), True),
        "diff --model": (ckpttools_cmd("diff", pth, *model), _py("diff-model", pth, size), True),
        "diagnose --checkpoint": (ckpttools_cmd("diagnose", "--checkpoint", pth, *model),
                                  _py("diagnose", pth, size), True),
        "audit --model": (ckpttools_cmd("audit", pth, *model), _py("audit-model", pth, size),
                          True),
        "convert pth->safetensors": (ckpttools_cmd("convert", pth, out + ".safetensors",
                                                   "--force"),
                                     _py("convert", pth, out + ".b.safetensors"), False),
        "remap --add-prefix": (ckpttools_cmd("remap", pth, out + ".pth", "--add-prefix",
                                             "module.", "--force"),
                               _py("remap", pth, out + ".b.pth"), False),
    }
    cmds = {"import torch": _py("import-torch"), "read": _py("read", pth),
            "finite": _py("finite", pth)}
    for name, (ours, obvious, _) in pairs.items():
        cmds[name] = ours
        cmds[name + " (obvious)"] = obvious
    t = medians(cmds, repeat)
    for leftover in DATA.glob(f"sweep-out-{size}*"):
        leftover.unlink()
    floor = t["import torch"]
    rows = [Row(name, size, t[name], t[name + " (obvious)"], floor if torch else None,
                *_model_target(name, size, t[name], floor))
            for name, (_, _, torch) in pairs.items()]
    read = t["read"]
    finite = (t["finite"].cpu - floor.cpu) / read.cpu
    rows.append(Row("audit finite pass", size, t["finite"],
                    Time(floor.wall + read.wall, floor.cpu + read.cpu), floor,
                    f"(pass - import) / read = {finite:.2f} <= 1.5 (CPU)", finite <= 1.5))
    return rows


def _model_target(name: str, size: str, ours: Time, floor: Time) -> tuple[str, bool | None]:
    if name not in ("diff --model", "diagnose --checkpoint", "audit --model"):
        return "", None
    if size == "256MB":
        return "<= import + 0.5 s (67M, CPU)", ours.cpu <= floor.cpu + 0.5
    if size == "4GB":
        return "<= 3 s (1B, CPU)", ours.cpu <= 3.0
    return "", None


def _many_rows(repeat: int) -> list[Row]:
    pth = str(checkpoint("small-20000", many_small_state, "pth"))
    st = str(checkpoint("small-20000", many_small_state, "safetensors"))
    t = medians({"pth": ckpttools_cmd("inspect", pth, "--format", "json"),
                 "pth (obvious)": _py("inspect-pth", pth),
                 "st": ckpttools_cmd("inspect", st, "--format", "json"),
                 "st (obvious)": _py("inspect-st", st)}, repeat)
    return [Row("inspect .pth", "20,000 tensors", t["pth"], t["pth (obvious)"], None,
                "<= 0.5 s (CPU)", t["pth"].cpu <= 0.5),
            Row("inspect .safetensors", "20,000 tensors", t["st"], t["st (obvious)"], None,
                "<= 0.3 s (CPU)", t["st"].cpu <= 0.3)]


def render(rows: list[Row]) -> str:
    """The table: wall and CPU medians (ckpttools / obvious), their ratios, the torch floor and
    the targets."""
    head = (f"{'command':24s} {'size':>14s} {'wall ck/obv':>11s} {'ratio':>5s} {'CPU ck/obv':>11s} "
            f"{'ratio':>5s} {'torch CPU':>9s} {'- floor':>7s}  target")
    lines = [head, "-" * len(head)]
    for r in rows:
        floor = (f"{r.floor.cpu:9.2f} {r.ours.cpu - r.floor.cpu:7.2f}" if r.floor is not None
                 else " " * 17)
        met = "" if r.met is None else (" met" if r.met else " MISSED")
        lines.append(
            f"{r.command:24s} {r.size:>14s} {r.ours.wall:5.2f}/{r.obvious.wall:5.2f} "
            f"{r.obvious.wall / r.ours.wall:5.2f} {r.ours.cpu:5.2f}/{r.obvious.cpu:5.2f} "
            f"{r.obvious.cpu / r.ours.cpu:5.2f} {floor}  {r.target}{met}")
    return "\n".join(lines)


def _fits(size: str) -> bool:
    """Whether the sweep's files for ``size`` (three checkpoints and two outputs) fit on disk."""
    DATA.mkdir(parents=True, exist_ok=True)
    return shutil.disk_usage(DATA).free > 6 * parse_size(size)


def run(sizes: list[str] | None) -> None:
    """Print the sweep table (medians of 3 rounds; 1 round at 4 GB and above)."""
    rows = _many_rows(repeat=3)
    for size in sizes or DEFAULT_SIZES:
        if not _fits(size):
            print(f"  {size}: skipped, not enough free disk under {DATA}", flush=True)
            continue
        rows += _size_rows(size, repeat=3 if parse_size(size) < 4 * 10**9 else 1)
        print(render(rows), flush=True)
    print(f"(medians; ratio = obvious / ckpttools; checkpoints kept in {DATA})")


if __name__ == "__main__":
    run(sys.argv[1:] or None)
