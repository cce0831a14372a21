"""Benchmark ``ckpttools convert`` against ``cp`` + ``sync`` and the load-everything approach.

Each command runs in a child process (``benchlib.measure``: best wall time of the runs, that
child's peak RSS). Conversion times exclude verification (``--no-verify``) unless the label says
``verify``; ``cp`` and every conversion are interleaved round by round, so their ratios come
from the same disk conditions; every ckpttools output is fsynced, so ``cp`` is followed by
``sync`` of the copy (an fsync of that one file: a bare ``sync`` would also wait for other
processes' writes).
Sources are kept in ``bench-data/`` and reused; outputs are removed after each size.
Usage: ``python scripts/bench.py convert --sizes 1GB,4GB``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from benchlib import DATA, Measure, measure  # noqa: E402

PY = sys.executable
# the convert command alone (as the CLI runs it), so other commands' registration cannot
# affect the figures; any exit code but 0 fails the benchmark (benchlib accepts 1)
CONVERT = ("import sys; from ckpttools.cli.convert_cmd import convert\n"
           "try:\n    convert.main(sys.argv[1:], prog_name='ckpttools convert')\n"
           "except SystemExit as e:\n    sys.exit(7 if e.code else 0)")
LOAD_ALL = ("import sys, torch; from safetensors.torch import save_file; "
            "save_file(torch.load(sys.argv[1], weights_only=True), sys.argv[2])")


def _size(text: str) -> int:
    from ckpttools.ops.convert.conversion import parse_size

    return parse_size(text.replace("MB", "MiB").replace("GB", "GiB"))


def _make(path: str, nbytes: int) -> None:
    if os.path.exists(path):
        return
    code = ("import os, sys, torch; n=int(sys.argv[2])//4//64; "
            "torch.save({f'layer.{i}.weight': torch.randn(n) for i in range(64)}, "
            "sys.argv[1] + '.tmp'); "
            "os.replace(sys.argv[1]+'.tmp', sys.argv[1])")
    subprocess.run([PY, "-c", code, path, str(nbytes)], check=True)


def _settle() -> None:
    """Flush dirty pages and give the disk a moment (freed blocks are discarded behind)."""
    os.sync()
    time.sleep(2)


def _interleaved(src: str, out: str, rounds: int = 5) -> list[tuple[str, Measure]]:
    """``cp`` + ``sync`` and every conversion, alternated over ``rounds`` (the disk's speed
    drifts on shared machines; measuring them in blocks would compare different disks). Each
    is the best of ``rounds`` (its peak RSS the largest); outputs are removed before each run,
    so none overwrites a file. The first row is ``cp``."""
    st, back, shards, dcp = (os.path.join(out, n) for n in ("a.safetensors", "b.pth", "shards",
                                                            "dcp"))
    runs = (("cp+sync", ["sh", "-c", f"cp {src} {out}/copy && sync {out}/copy"], f"{out}/copy"),
            ("pth -> safetensors", [PY, "-c", CONVERT, src, st, "--no-verify"], st),
            ("safetensors -> pth", [PY, "-c", CONVERT, st, back, "--no-verify"], back),
            ("pth -> safetensors, verify", [PY, "-c", CONVERT, src, st], st),
            ("safetensors -> pth, verify", [PY, "-c", CONVERT, st, back], back),
            ("pth -> sharded 1GB, verify", [PY, "-c", CONVERT, src, shards, "--to",
                                            "safetensors", "--max-shard-size", "1GB"], shards),
            ("pth -> dcp, verify", [PY, "-c", CONVERT, src, dcp, "--to", "dcp"], dcp))
    best: list[Measure | None] = [None] * len(runs)
    for _ in range(rounds):
        for i, (_, cmd, dest) in enumerate(runs):
            if os.path.isdir(dest):
                shutil.rmtree(dest)
            elif os.path.exists(dest):
                os.unlink(dest)
            _settle()
            m = measure(cmd, 1)
            old = best[i]
            best[i] = m if old is None or m.wall < old.wall else Measure(old.wall, max(
                old.rss_mb, m.rss_mb), old.cpu)
    return [(label, m) for (label, _, _), m in zip(runs, best) if m is not None]


def _line(label: str, m: Measure, cp: Measure, naive: Measure | None = None) -> str:
    """Wall time, peak RSS and the ratio to cp+sync; then CPU seconds and their ratio, which
    a busy machine disturbs less than wall time."""
    tail = f" | {m.wall / naive.wall:5.2f}x torch.load+save_file" if naive else ""
    cpu = f" | cpu {m.cpu:6.2f} s {m.cpu / cp.cpu:5.2f}x" if cp.cpu else ""
    return f"  {label:<34} {m} | {m.wall / cp.wall:5.2f}x cp+sync{cpu}{tail}"


def run(sizes: list[str]) -> None:
    """Print wall time and peak RSS of each conversion, as ratios to ``cp`` + ``sync``."""
    DATA.mkdir(parents=True, exist_ok=True)
    for text in sizes or ["256MB"]:
        src = str(DATA / f"convert-{text}.pth")
        _make(src, _size(text))
        out = DATA / f"convert-{text}-out"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        try:
            naive = measure([PY, "-c", LOAD_ALL, src, str(out / "naive.safetensors")], 1)
            os.unlink(out / "naive.safetensors")  # 4 GB less for the page cache to hold
            (_, cp), *rows = _interleaved(src, str(out))
            print(f"{text} ({os.path.getsize(src) / 1e9:.2f} GB): cp+sync {cp}, "
                  f"cpu {cp.cpu:.2f} s, load average {os.getloadavg()[0]:.1f}", flush=True)
            print(_line("torch.load+save_file", naive, cp), flush=True)
            for label, m in rows:
                print(_line(label, m, cp, naive), flush=True)
        finally:
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    run(sys.argv[1:])
