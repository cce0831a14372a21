"""Reads of values over a URL keep a window of ranges in flight and fetch each byte once:
``convert URL`` in the order the writer takes the tensors, even where that is not the file's
order (a tied weight written twice, views into one storage written apart), ``inspect --stats``
and audit's finite check likewise. Real ``torch.save`` files; the read-ahead shrunk so small
files span many ranges."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from ckpttools.cli.main import cli
from tests.remote.server import FileServer

KB = 1024


def _tied() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    emb = torch.randn(512, 1024, generator=g)  # 2 MiB, written first and last
    state = {"wte.weight": emb}
    state.update({f"h.{i}.mlp.weight": torch.randn(256, 1024, generator=g) for i in range(4)})
    state["lm_head.weight"] = emb
    return state


def _views() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(6)
    qkv = torch.randn(3 * 256, 1024, generator=g)  # one storage; its thirds written apart
    state = {"attn.q.weight": qkv[:256]}
    state.update({f"mlp.{i}.weight": torch.randn(256, 1024, generator=g) for i in range(3)})
    state.update({"attn.k.weight": qkv[256:512], "attn.v.weight": qkv[512:]})
    return state


@pytest.mark.parametrize("make", [_tied, _views], ids=["tied", "views"])
def test_convert_reads_each_source_byte_once(runner: CliRunner, served: FileServer, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch, make: object) -> None:
    from ckpttools.formats import remote_sources

    monkeypatch.setattr(remote_sources, "AHEAD_BLOCK", 64 * KB)
    state = make()  # type: ignore[operator]
    torch.save(state, served.root / "model.pth")
    size = (served.root / "model.pth").stat().st_size
    out = tmp_path / "out.safetensors"
    r = runner.invoke(cli, ["convert", served.url("model.pth"), str(out)])
    assert r.exit_code == 0, r.stderr
    got = load_file(out)
    assert list(got) == list(state)
    for k, v in state.items():
        assert torch.equal(got[k], v), k
    # the whole file once, plus the first blocks and the tail read for its metadata; reading
    # in file order would fetch the tied 2 MiB (or the storage's thirds) again
    assert served.log.bytes <= size + 512 * KB, (served.log.bytes, size)


@pytest.mark.parametrize("args", [["inspect", "--stats", "--format", "json"], ["audit", "--format", "json"]],
                         ids=["inspect-stats", "audit-finite"])
def test_value_reads_keep_a_window_in_flight(runner: CliRunner, served: FileServer, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch, args: list[str]) -> None:
    """``inspect --stats`` and audit's finite check fetch the tensors' ranges several at a time
    (each answer delayed, so requests overlap only if they are sent together), each byte once,
    and answer as on the local file."""
    from ckpttools.formats import remote_sources

    monkeypatch.setattr(remote_sources, "AHEAD_BLOCK", 256 * KB)
    g = torch.Generator().manual_seed(7)
    state = {f"blocks.{i}.weight": torch.randn(256, 512, generator=g) for i in range(8)}  # 8 x 512 KiB
    torch.save(state, served.root / "model.pth")
    size = (served.root / "model.pth").stat().st_size
    local = runner.invoke(cli, [*args, str(served.root / "model.pth")])
    url = served.url("model.pth")
    from ckpttools.formats import remote

    remote.blob(url)  # the head, with no delay
    served.behaviour.stall = 0.05
    r = runner.invoke(cli, [*args, url])
    assert r.exit_code == local.exit_code == 0, r.stderr
    out = r.stdout.replace("; record CRC-32s not read over a URL", "")  # audit's URL note
    assert out.replace(url, "F") == local.stdout.replace(str(served.root / "model.pth"), "F")
    assert served.log.most_active >= 3
    assert served.log.bytes <= size + 512 * KB
