"""Benchmark ``ckpttools convert`` against ``cp`` + ``sync`` and the load-everything approach.

Each conversion runs in a child process; wall time excludes verification (``--no-verify``),
peak RSS is the child's ``ru_maxrss``. Usage: ``python scripts/bench_convert.py 256MB 4GB``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

PY = sys.executable
LOAD_ALL = ("import sys, torch; from safetensors.torch import save_file; "
            "save_file(torch.load(sys.argv[1], weights_only=True), sys.argv[2])")


def _child(cmd: list[str]) -> tuple[float, float]:
    """Run ``cmd``; wall seconds and that one child's peak RSS in MB (``wait4``)."""
    os.sync()  # start each run with no dirty pages of the previous one pending
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:4]} exited {proc.returncode}")
    return wall, usage.ru_maxrss / 1024


def _size(text: str) -> int:
    from ckpttools.ops.convert import parse_size

    return parse_size(text.replace("MB", "MiB").replace("GB", "GiB"))


def _make(path: str, nbytes: int) -> None:
    code = ("import sys, torch; n=int(sys.argv[2])//4//64; "
            "torch.save({f'layer.{i}.weight': torch.randn(n) for i in range(64)}, sys.argv[1])")
    subprocess.run([PY, "-c", code, path, str(nbytes)], check=True)


def _convert(src: str, dst: str, verify: bool = False) -> tuple[float, float]:
    cmd = [PY, "-m", "ckpttools", "convert", src, dst, "--force"]
    return _child(cmd + ([] if verify else ["--no-verify"]))


def run(sizes: list[str]) -> None:
    """Print wall-time ratios to ``cp`` + ``sync`` and peak RSS, for each size."""
    for text in sizes or ["256MB"]:
        with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as d:
            src, st, back = (os.path.join(d, n) for n in ("a.pth", "a.safetensors", "b.pth"))
            _make(src, _size(text))
            cp, _ = _child(["sh", "-c", f"cp {src} {d}/copy && sync"])
            to_st, rss1 = _convert(src, st)
            to_pth, rss2 = _convert(st, back)
            verify, rss3 = _convert(src, st, verify=True)
            naive, rss4 = _child([PY, "-c", LOAD_ALL, src, os.path.join(d, "naive.safetensors")])
            print(f"{text}: cp+sync {cp:.2f}s | pth->safetensors {to_st:.2f}s "
                  f"({to_st / cp:.2f}x cp, {rss1:.0f} MB RSS) | safetensors->pth {to_pth:.2f}s "
                  f"({to_pth / cp:.2f}x cp, {rss2:.0f} MB) | with verify {verify:.2f}s "
                  f"({rss3:.0f} MB) | torch.load+save_file {naive:.2f}s ({naive / cp:.2f}x cp, "
                  f"{rss4:.0f} MB)")


if __name__ == "__main__":
    run(sys.argv[1:])
