"""remote: a checkpoint behind a URL (a range-honouring server on 127.0.0.1) against downloading
it first (``curl URL -o file`` + the same command on the local file), measured in one run.

Per command: requests and bytes the server sent, wall time, peak RSS. The first column is
ckpttools on the URL; the second the download plus the local command; the last the local
command alone (the file already on disk).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import DATA, checkpoint, ckpttools_cmd, measure, parse_size, transformer_state

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SPEC = str(ROOT / "tests" / "_models.py") + ":TinyNet"


def _counted(server: object, cmd: list[str], ok: tuple[int, ...]) -> tuple[int, int]:
    server.log.reset()  # type: ignore[attr-defined]
    rc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE).returncode
    if rc not in ok:
        raise RuntimeError(f"{cmd} exited {rc}")
    return len(server.log.requests), server.log.bytes  # type: ignore[attr-defined]


REPEAT = 3  # interleaved rounds; each column keeps its best (the machine is shared)


def _row(server: object, label: str, args: list[str], url: str, local: str, ok: tuple[int, ...] = (0,),
         out: str | None = None) -> None:
    remote_args = [url if a == "{src}" else a for a in args]
    local_args = [local if a == "{src}" else a for a in args]
    requests, sent = _counted(server, ckpttools_cmd(*remote_args), ok)
    ours = alone = None
    best_download = float("inf")
    for _ in range(REPEAT):  # the three ways one after the other, so load hits each alike
        m = measure(ckpttools_cmd(*remote_args), repeat=1, ok_codes=ok)
        ours = m if ours is None or m.wall < ours.wall else ours
        with tempfile.TemporaryDirectory(dir=DATA) as tmp:
            copy = os.path.join(tmp, os.path.basename(local))
            t = time.perf_counter()
            subprocess.run(["curl", "-s", "-o", copy, url], check=True)
            fetch = time.perf_counter() - t
            base = measure(ckpttools_cmd(*[copy if a == local else a for a in local_args]), repeat=1,
                           ok_codes=ok)
        best_download = min(best_download, fetch + base.wall)
        m = measure(ckpttools_cmd(*local_args), repeat=1, ok_codes=ok)
        alone = m if alone is None or m.wall < alone.wall else alone
    assert ours is not None and alone is not None
    size = os.path.getsize(local)
    print(f"  {label:30s} {requests:5d} req {sent / 1e6:9.2f} MB ({100 * sent / size:5.1f}%)  "
          f"URL {ours.wall:7.2f} s {ours.rss_mb:6.0f} MB | download+local {best_download:7.2f} s "
          f"(URL/that {ours.wall / best_download:4.2f}) | local alone {alone.wall:6.2f} s "
          f"(URL/local {ours.wall / alone.wall:4.2f})", flush=True)


def run(sizes: list[str]) -> None:
    from tests.remote.server import FileServer

    with FileServer(DATA) as server:
        for size in sizes:
            nbytes = parse_size(size)
            name = f"gpt-{size}-float32"
            for fmt in ("pth", "safetensors"):
                path = str(checkpoint(name, lambda: transformer_state(nbytes), fmt))
                url = server.url(os.path.basename(path))
                print(f" {os.path.basename(path)} ({os.path.getsize(path) / 1e9:.2f} GB)", flush=True)
                _row(server, "inspect", ["inspect", "{src}", "--format", "json"], url, path)
                _row(server, "scan", ["scan", "{src}"], url, path)
                _row(server, "diff --model", ["diff", "{src}", "--model", SPEC], url, path, ok=(0, 1))
                _row(server, "audit (finite check)", ["audit", "{src}"], url, path)
                with tempfile.TemporaryDirectory(dir=DATA) as tmp:
                    dest = os.path.join(tmp, "out.safetensors")
                    _row(server, "convert -> safetensors", ["convert", "{src}", dest, "--force"], url, path,
                         out=dest)
