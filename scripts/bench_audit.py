"""scan and audit: scan time on a large .pth (reads the pickle only), the NaN/Inf pass against a
plain read of the same file plus the torch import, and the audit of 100 small checkpoints."""

from __future__ import annotations

import sys

from benchlib import DATA, checkpoint, ckpttools_cmd, measure, parse_size, transformer_state

PLAIN_READ = ("import sys\nf = open(sys.argv[1], 'rb', buffering=0); b = bytearray(32 << 20)\n"
              "while f.readinto(b): pass")
TORCH_IMPORT = "import torch"
FINITE = ("import sys\nfrom ckpttools.formats.registry import open_checkpoint\n"
          "from ckpttools.ops.audit.finite import check_finite\n"
          "with open_checkpoint(sys.argv[1]) as r:\n    assert check_finite(r).status == 'PASS'")


def _many_small(count: int = 100) -> str:
    folder = DATA / f"audit-{count}"
    if not folder.exists():
        import torch

        folder.mkdir(parents=True)
        for i in range(count):
            torch.manual_seed(i)
            state = {f"layer.{j}.weight": torch.randn(32, 32) for j in range(8)}
            torch.save({"model": state, "epoch": i}, folder / f"ckpt-{i:03d}.pth")
    return str(folder)


def run(sizes: list[str]) -> None:
    py = sys.executable
    for size in sizes:
        pth = str(checkpoint(f"gpt-{size}-float32", lambda: transformer_state(parse_size(size)), "pth"))
        scan = measure(ckpttools_cmd("scan", pth, "--format", "json"))
        print(f"  scan {size} .pth                      {scan}   (target < 0.5 s)", flush=True)
        read = measure([py, "-c", PLAIN_READ, pth])
        imp = measure([py, "-c", TORCH_IMPORT])
        finite = measure([py, "-c", FINITE, pth])
        ratio = (finite.wall - imp.wall) / read.wall
        print(f"  NaN/Inf {size}: plain read {read}  torch import {imp}  finite pass {finite}  "
              f"(pass - import) / read = x{ratio:.2f} (target <= 1.5), RSS {finite.rss_mb:.0f} MB "
              "(target < 400)", flush=True)
        audit = measure(ckpttools_cmd("audit", pth, "--format", "json"))
        print(f"  audit {size} .pth (integrity, safety, finite)  {audit}", flush=True)
    folder = _many_small()
    many = measure(ckpttools_cmd("audit", folder, "--format", "json"), repeat=1)
    print(f"  audit of 100 small checkpoints       {many}   (target < 10 s)", flush=True)
