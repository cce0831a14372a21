"""Local runs never load the remote layer; a URL without the extra is exit 2 with the install line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from tests.remote.server import FileServer

ROOT = Path(__file__).parents[2]


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=120)


def test_local_inspect_loads_no_network_library(tmp_path: Path) -> None:
    path = tmp_path / "m.pth"
    torch.save({"w": torch.ones(3)}, path)
    r = _run("import sys\nfrom ckpttools.cli.main import main\n"
             f"code = main(['inspect', {str(path)!r}])\n"
             "loaded = [m for m in ('fsspec', 'aiohttp', 's3fs', 'huggingface_hub', 'ckpttools.formats.remote')"
             " if m in sys.modules]\n"
             "print('LOADED', loaded, code)")
    assert "LOADED [] 0" in r.stdout, r.stdout + r.stderr


def test_url_without_the_extra_names_the_install_line() -> None:
    # the extra's packages made unimportable, as in an environment without them
    r = _run("import sys\nfor m in ('fsspec', 'aiohttp', 's3fs', 'huggingface_hub'): sys.modules[m] = None\n"
             "from ckpttools.cli.main import main\n"
             "sys.exit(main(['inspect', 'https://127.0.0.1:9/model.safetensors']))")
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr.strip().endswith("pip install 'ckpttools[remote]'"), r.stderr
    assert r.stderr.count("\n") == 1


def test_plain_http_reads_skip_the_event_loop(served: FileServer, tmp_path: Path) -> None:
    """scan of an http:// file makes its few requests, and convert streams it, without
    importing aiohttp and fsspec (0.25 s of start-up, and an event-loop thread holding the
    GIL the writer needs; docs/remote.md)."""
    from safetensors.torch import load_file, save_file

    save_file({"w": torch.ones(3)}, served.root / "m.safetensors")
    torch.save({"w": torch.arange(5.0)}, served.root / "m.pth")
    out = tmp_path / "out.safetensors"
    for args in (["scan", served.url("m.safetensors")], ["scan", served.url("m.pth")],
                 ["convert", served.url("m.pth"), str(out)]):
        r = _run("import sys\nfrom ckpttools.cli.main import main\n"
                 f"code = main({args!r})\n"
                 "print('LOADED', [m for m in ('fsspec', 'aiohttp') if m in sys.modules], code)")
        assert "LOADED [] 0" in r.stdout, (args, r.stdout + r.stderr)
    assert torch.equal(load_file(out)["w"], torch.arange(5.0))
