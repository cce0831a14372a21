"""``hf://ORG/REPO[@REV]/PATH`` through HF_ENDPOINT pointed at a 127.0.0.1 server, and the cache."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from ckpttools.cli.main import cli
from tests.remote.server import FileServer

pytest.importorskip("huggingface_hub")
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {f"model.layers.{i}.mlp.weight": torch.randn(128, 256, generator=g) for i in range(8)}


def _repo(hub: FileServer) -> Path:
    folder = hub.root / "org" / "tiny"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_single_file(runner: CliRunner, hub: FileServer) -> None:
    from safetensors.torch import save_file

    save_file(_state(), _repo(hub) / "model.safetensors")
    r = runner.invoke(cli, ["inspect", "hf://org/tiny@v1.0/model.safetensors"])
    assert r.exit_code == 0, r.stderr
    assert "8 tensors" in r.stdout
    assert [p for _, p, _ in hub.log.requests] == ["/org/tiny/resolve/v1.0/model.safetensors"]


def test_sharded_safetensors_index(runner: CliRunner, hub: FileServer) -> None:
    from huggingface_hub import save_torch_state_dict

    save_torch_state_dict(_state(), _repo(hub), max_shard_size="300KB")
    index = json.loads((_repo(hub) / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) >= 3
    r = runner.invoke(cli, ["inspect", "--format", "json", "hf://org/tiny/model.safetensors.index.json"])
    assert r.exit_code == 0, r.stderr
    assert len(json.loads(r.stdout)["tensors"]) == 8
    # the index, then one request per shard (its header), nothing else
    assert len(hub.log.requests) == 1 + len(shards)
    r = runner.invoke(cli, ["diff", "hf://org/tiny/model.safetensors.index.json",
                            str(_repo(hub) / "model.safetensors.index.json")])
    assert r.exit_code == 0, r.stderr
    assert "8 bitwise equal" in r.stdout


def test_token_from_hf_token(runner: CliRunner, hub: FileServer, monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors.torch import save_file

    save_file(_state(), _repo(hub) / "model.safetensors")
    hub.behaviour.token = "hf_secret"
    r = runner.invoke(cli, ["inspect", "hf://org/tiny/model.safetensors"])
    assert r.exit_code == 2
    assert "access denied (HTTP 401); set HF_TOKEN or run `hf auth login`" in r.stderr
    from ckpttools.formats import remote

    remote.clear()
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    r = runner.invoke(cli, ["inspect", "hf://org/tiny/model.safetensors"])
    assert r.exit_code == 0, r.stderr


def test_cache_hit_reads_no_network(runner: CliRunner, hub: FileServer, tmp_path: Path) -> None:
    """A file in the Hugging Face cache at the asked commit is read from there."""
    from safetensors.torch import save_file

    repo = Path(__import__("os").environ["HF_HUB_CACHE"]) / "models--org--tiny"
    snap = repo / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    blob = repo / "blobs" / "abc123"
    blob.parent.mkdir()
    save_file(_state(), blob)
    (snap / "model.safetensors").symlink_to(blob)
    url = f"hf://org/tiny@{COMMIT}/model.safetensors"
    for args in (["inspect", "--stats", url], ["scan", url], ["diff", url, str(blob)]):
        r = runner.invoke(cli, args)
        assert r.exit_code == 0, (args, r.stderr)
    assert hub.log.requests == []
    # another revision is not in the cache: it goes to the server (which has nothing)
    r = runner.invoke(cli, ["inspect", "hf://org/tiny@main/model.safetensors"])
    assert r.exit_code == 2 and "HTTP 404" in r.stderr


def test_branch_in_the_cache_is_checked_with_one_head(runner: CliRunner, hub: FileServer) -> None:
    """``@main`` resolves through the cache's refs/main to a commit; the server is asked which
    commit main names now (one HEAD, no body) and the cached copy is read when they agree."""
    from safetensors.torch import save_file

    repo = Path(__import__("os").environ["HF_HUB_CACHE"]) / "models--org--tiny"
    snap = repo / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    save_file(_state(), snap / "model.safetensors")
    state = _state()
    state["extra.weight"] = torch.zeros(3)
    save_file(state, _repo(hub) / "model.safetensors")  # what main holds on the server now
    url = "hf://org/tiny/model.safetensors"
    hub.behaviour.commit = COMMIT
    r = runner.invoke(cli, ["inspect", url])
    assert r.exit_code == 0, r.stderr
    assert "8 tensors" in r.stdout
    assert [m for m, _, _ in hub.log.requests] == ["HEAD"] and hub.log.bytes == 0
    from ckpttools.formats import remote

    remote.clear()
    hub.log.reset()
    hub.behaviour.commit = "a" * 40  # main has moved on: the cache is stale, read the server
    r = runner.invoke(cli, ["inspect", url])
    assert r.exit_code == 0, r.stderr
    assert "9 tensors" in r.stdout


def test_bad_hf_url(runner: CliRunner, hub: FileServer) -> None:
    r = runner.invoke(cli, ["inspect", "hf://just-a-name"])
    assert r.exit_code == 2
    assert "hf://ORG/REPO[@REVISION]/PATH" in r.stderr


def test_sharded_bin_index(runner: CliRunner, hub: FileServer) -> None:
    """``pytorch_model-*.bin`` shards (torch.save zips) written by huggingface_hub."""
    from huggingface_hub import save_torch_state_dict

    save_torch_state_dict(_state(), _repo(hub), max_shard_size="300KB", safe_serialization=False)
    url = "hf://org/tiny/pytorch_model.bin.index.json"
    r = runner.invoke(cli, ["inspect", "--format", "json", url])
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["format"] == "torch-sharded"
    r = runner.invoke(cli, ["scan", url])
    assert r.exit_code == 0, r.stderr
    assert r.stdout.count("safe (torch-zip)") >= 3
    r = runner.invoke(cli, ["diff", url, str(_repo(hub) / "pytorch_model.bin.index.json")])
    assert r.exit_code == 0, r.stderr


@pytest.mark.frameworks
def test_save_pretrained_shards(runner: CliRunner, hub: FileServer, tmp_path: Path) -> None:
    """A sharded set written by transformers' save_pretrained from a tiny config."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    out = tmp_path / "saved"
    model.save_pretrained(out, max_shard_size="100KB")
    shutil.copytree(out, _repo(hub), dirs_exist_ok=True)
    url = "hf://org/tiny/model.safetensors.index.json"
    r = runner.invoke(cli, ["inspect", "--format", "json", url])
    assert r.exit_code == 0, r.stderr
    assert len(json.loads(r.stdout)["tensors"]) == len(model.state_dict())
    r = runner.invoke(cli, ["diff", url, str(out / "model.safetensors.index.json")])
    assert r.exit_code == 0, r.stderr
    r = runner.invoke(cli, ["scan", url])
    assert r.exit_code == 0, r.stderr
