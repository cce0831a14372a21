"""``s3://`` through s3fs against moto's server on 127.0.0.1: a single file and a DCP folder."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from ckpttools.cli.main import cli
from tests.remote.conftest import upload


def _state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return {f"blocks.{i}.attn.weight": torch.randn(64, 64, generator=g) for i in range(6)}


def test_single_file(runner: CliRunner, s3_bucket: str, tmp_path: Path) -> None:
    local = tmp_path / "model.pth"
    torch.save({"model": _state(), "epoch": 4}, local)
    upload(s3_bucket, local, "runs/model.pth")
    url = f"s3://{s3_bucket}/runs/model.pth"
    r = runner.invoke(cli, ["inspect", "--format", "json", url])
    assert r.exit_code == 0, r.stderr
    want = json.loads(runner.invoke(cli, ["inspect", "--format", "json", str(local)]).stdout)
    assert json.loads(r.stdout)["tensors"] == want["tensors"]
    for args in (["scan", url], ["audit", url], ["diff", url, str(local)]):
        r = runner.invoke(cli, args)
        assert r.exit_code == 0, (args, r.stderr)


def test_dcp_folder(runner: CliRunner, s3_bucket: str, tmp_path: Path) -> None:
    import torch.distributed.checkpoint as dcp

    local = tmp_path / "dcp"
    state = {"model": _state(), "step": torch.tensor(9)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "assuming the intent is to save in a single process"
        dcp.save(state, checkpoint_id=str(local))
    upload(s3_bucket, local, "ckpt/step-9")
    url = f"s3://{s3_bucket}/ckpt/step-9"
    r = runner.invoke(cli, ["inspect", "--format", "json", url])
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["format"] == "dcp"
    want = json.loads(runner.invoke(cli, ["inspect", "--format", "json", str(local)]).stdout)
    assert json.loads(r.stdout)["tensors"] == want["tensors"]
    r = runner.invoke(cli, ["diff", url, str(local)])
    assert r.exit_code == 0, r.stderr
    r = runner.invoke(cli, ["scan", url])
    assert r.exit_code == 0, r.stderr
    r = runner.invoke(cli, ["audit", url])
    assert r.exit_code == 0, r.stderr


def test_missing_key(runner: CliRunner, s3_bucket: str) -> None:
    r = runner.invoke(cli, ["inspect", f"s3://{s3_bucket}/nope.pth"])
    assert r.exit_code == 2
    assert r.stderr == f"ckpttools: error: s3://{s3_bucket}/nope.pth: no such object; check the bucket and key\n"


def test_convert_s3_to_safetensors(runner: CliRunner, s3_bucket: str, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    local = tmp_path / "model.pth"
    torch.save(_state(), local)
    upload(s3_bucket, local, "m.pth")
    out = tmp_path / "out.safetensors"
    r = runner.invoke(cli, ["convert", f"s3://{s3_bucket}/m.pth", str(out)])
    assert r.exit_code == 0, r.stderr
    got = load_file(out)
    assert all(torch.equal(got[k], v) for k, v in _state().items())


@pytest.mark.dist
def test_chunked_dcp_folder_by_ranges(runner: CliRunner, s3_bucket: str, tmp_path: Path) -> None:
    """Tensors saved by 2 ranks in chunks that interleave row by row: assembled from byte
    ranges of the ``.distcp`` objects on S3, equal to the same folder read locally."""
    from safetensors.torch import load_file

    from tests.frameworks.dist_writers import tensor_parallel_dcp_2ranks

    local = tensor_parallel_dcp_2ranks(tmp_path / "tp")
    upload(s3_bucket, local, "ckpt/tp")
    url = f"s3://{s3_bucket}/ckpt/tp"
    r = runner.invoke(cli, ["diff", url, str(local)])
    assert r.exit_code == 0, r.stderr
    for name, src in (("remote", url), ("local", str(local))):
        r = runner.invoke(cli, ["convert", src, str(tmp_path / f"{name}.safetensors")])
        assert r.exit_code == 0, (name, r.stderr)
    got, want = (load_file(tmp_path / f"{n}.safetensors") for n in ("remote", "local"))
    assert got.keys() == want.keys() and len(got) >= 6
    for key, tensor in want.items():
        assert got[key].dtype == tensor.dtype and torch.equal(got[key], tensor), key
