"""``ckpttools convert`` through the CLI: exit codes, JSON, errors, interruption."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")

from ckpttools.cli.main import cli  # noqa: E402


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    path = tmp_path / "ckpt.pth"
    torch.save({"model": {"w": torch.randn(4, 4)}, "epoch": 1}, path)
    return path


def test_convert_text_and_json(runner: CliRunner, ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.safetensors"
    res = runner.invoke(cli, ["convert", str(ckpt), str(out)])
    assert res.exit_code == 0, res.output
    assert "1 tensor," in res.stdout and "verified" in res.stdout and res.stderr == ""
    res = runner.invoke(cli, ["convert", str(out), str(tmp_path / "b.pth"), "--format", "json",
                              "--dtype", "fp16"])
    assert res.exit_code == 0
    doc = json.loads(res.stdout)
    assert doc["ok"] and doc["target"] == "pth" and doc["cast"] == ["model.w"]


def test_convert_errors_exit_2_one_line(runner: CliRunner, ckpt: Path, tmp_path: Path) -> None:
    res = runner.invoke(cli, ["convert", str(tmp_path / "nope.pth"), str(tmp_path / "o.pth")])
    assert res.exit_code == 2 and "no such file" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    (tmp_path / "o.safetensors").write_bytes(b"x")
    res = runner.invoke(cli, ["convert", str(ckpt), str(tmp_path / "o.safetensors")])
    assert res.exit_code == 2 and "--force" in res.stderr
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint at all")
    res = runner.invoke(cli, ["convert", str(bad), str(tmp_path / "x.safetensors")])
    assert res.exit_code == 2 and not (tmp_path / "x.safetensors").exists()
    res = runner.invoke(cli, ["convert", str(ckpt), str(tmp_path / "d"), "--to", "pth",
                              "--max-shard-size", "1MB"])
    assert res.exit_code == 2 and "--to safetensors" in res.stderr


def test_help_has_example(runner: CliRunner) -> None:
    res = runner.invoke(cli, ["convert", "--help"])
    assert res.exit_code == 0 and "ckpttools convert ckpt.pth ckpt.safetensors" in res.stdout


def test_killed_conversion_leaves_no_destination(tmp_path: Path) -> None:
    src = tmp_path / "big.pth"
    torch.save({f"w{i}": torch.randn(1 << 20) for i in range(48)}, src)  # 192 MB
    dst = tmp_path / "big.safetensors"
    proc = subprocess.Popen([sys.executable, "-m", "ckpttools", "convert", str(src), str(dst),
                             "--dtype", "bf16"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd=str(tmp_path))
    try:
        started = False
        for _ in range(20000):
            tmps = [p for p in tmp_path.iterdir() if p.name.startswith(".big.safetensors.")]
            if tmps and tmps[0].stat().st_size > 0:
                started = True
                break
            if proc.poll() is not None:
                break
            time.sleep(0.001)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    if not started:
        pytest.skip("conversion finished before it could be interrupted")
    assert not dst.exists()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name not in ("big.pth",)]
    # only the documented hidden temp file (.DST.<random>.tmp) may remain after SIGKILL
    assert all(n.startswith(".big.safetensors.") and n.endswith(".tmp") for n in leftovers)
    os.sync()
