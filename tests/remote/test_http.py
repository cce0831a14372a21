"""Checkpoints over http:// from a server on 127.0.0.1: bytes moved, answers, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from ckpttools.cli.main import cli
from ckpttools.formats import zip_records
from tests.remote.server import FileServer

SPEC = str(Path(__file__).parents[1] / "_models.py") + ":TinyNet"
MB = 1 << 20


def _big_state() -> dict[str, torch.Tensor]:
    """About 8 MB of float32 in 16 tensors, with realistic names."""
    g = torch.Generator().manual_seed(0)
    return {f"encoder.layers.{i}.weight": torch.randn(256, 512, generator=g) for i in range(16)}


@pytest.fixture
def pth(served: FileServer) -> str:
    torch.save({"model": _big_state(), "step": 7}, served.root / "model.pth")
    return served.url("model.pth")


@pytest.fixture
def st(served: FileServer) -> str:
    save_file(_big_state(), served.root / "model.safetensors")
    return served.url("model.safetensors")


def _pickle_size(path: Path) -> int:
    with open(path, "rb") as f:
        records = zip_records.read_directory(f, path.stat().st_size)
    return next(r.file_size for n, r in records.items() if n.endswith("data.pkl"))


def _local(served: FileServer, url: str) -> str:
    return str(served.root / url.rsplit("/", 1)[1])


def _run(runner: CliRunner, *args: str) -> tuple[int, str, str]:
    r = runner.invoke(cli, list(args))
    return r.exit_code, r.stdout, r.stderr


def test_inspect_pth_reads_head_tail_and_pickle(runner: CliRunner, served: FileServer, pth: str) -> None:
    code, out, err = _run(runner, "inspect", "--format", "json", pth)
    assert code == 0, err
    local = json.loads(runner.invoke(cli, ["inspect", "--format", "json", _local(served, pth)]).stdout)
    mine = json.loads(out)
    assert (mine["tensors"], mine["objects"], mine["globals"]) == (local["tensors"], local["objects"], local["globals"])
    size = (served.root / "model.pth").stat().st_size
    # head, tail and pickle, then the archive checks' windows (each record's local header and
    # first bytes) in one multi-range request
    assert len(served.log.requests) <= 4
    assert served.log.bytes <= MB + _pickle_size(served.root / "model.pth")
    assert served.log.bytes < size / 4


def test_archive_checks_over_a_url_as_on_disk(runner: CliRunner, served: FileServer,
                                              tmp_path: Path) -> None:
    """Archives that zip readers read differently (duplicate or renamed records, stacked or
    nested archives) are flagged over a URL as they are on disk: never "safe" unchecked."""
    from tests.hostile_corpus import zip_families

    files = zip_families(served.root, tmp_path / "canary")
    assert len(files) >= 4
    for name, path in files.items():
        local = runner.invoke(cli, ["scan", str(path)])
        _clear()
        remote = runner.invoke(cli, ["scan", served.url(path.name)])
        assert local.exit_code != 0, name
        assert remote.exit_code == local.exit_code, (name, remote.stdout, remote.stderr)
        assert not (tmp_path / "canary").exists()


def test_inspect_safetensors_reads_the_header_only(runner: CliRunner, served: FileServer, st: str) -> None:
    code, out, err = _run(runner, "inspect", st)
    assert code == 0, err
    assert "16 tensors, 2.1M elements" in out
    assert len(served.log.requests) == 1  # the first blocks hold the 8-byte length and the header
    assert served.log.bytes <= 256 * 1024


def test_scan_and_diff_model_move_no_more_than_inspect(runner: CliRunner, served: FileServer, tmp_path: Path) -> None:
    from tests._models import tiny_net

    torch.save({"state_dict": tiny_net(width=1024).state_dict(), "epoch": 3}, served.root / "net.pth")
    url = served.url("net.pth")
    assert _run(runner, "inspect", url)[0] == 0
    inspect_bytes = served.log.bytes
    assert inspect_bytes < (served.root / "net.pth").stat().st_size / 4
    for args in (["scan", url], ["diff", url, "--model", SPEC, "-a", "width=1024"]):
        served.log.reset()
        _clear()
        code, out, err = _run(runner, *args)
        assert code == 0, err
        assert served.log.bytes <= inspect_bytes, args


def _clear() -> None:
    from ckpttools.formats import remote

    remote.clear()


def test_stats_diff_and_audit_read_values_by_ranges(runner: CliRunner, served: FileServer, pth: str, st: str) -> None:
    code, remote_stats, err = _run(runner, "inspect", "--stats", "--format", "json", st)
    assert code == 0, err
    local_stats = runner.invoke(cli, ["inspect", "--stats", "--format", "json", _local(served, st)]).stdout
    assert json.loads(remote_stats)["stats"] == json.loads(local_stats)["stats"]
    code, out, err = _run(runner, "diff", pth, st)
    assert code == 0, err
    assert "16 bitwise equal" in out
    code, out, err = _run(runner, "audit", pth)
    assert code == 0, err
    assert "finite" in out


def test_diff_finds_a_changed_value_over_the_network(runner: CliRunner, served: FileServer, st: str) -> None:
    state = _big_state()
    state["encoder.layers.3.weight"][5, 5] += 1
    save_file(state, served.root / "other.safetensors")
    code, out, err = _run(runner, "diff", st, served.url("other.safetensors"))
    assert code == 1, err
    assert "encoder.layers.3.weight" in out


def test_convert_url_writes_the_same_tensors(runner: CliRunner, served: FileServer, pth: str, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    out = tmp_path / "out.safetensors"
    code, _, err = _run(runner, "convert", pth, str(out))
    assert code == 0, err
    got = load_file(out)
    want = torch.load(served.root / "model.pth", weights_only=True)["model"]
    assert set(got) == {f"model.{k}" for k in want}
    for k, v in want.items():
        assert torch.equal(got[f"model.{k}"], v)


def test_convert_interrupted_leaves_no_destination(runner: CliRunner, served: FileServer, pth: str, tmp_path: Path) -> None:
    out = tmp_path / "out.safetensors"
    # the metadata reads succeed; the tensor transfer is cut short
    from ckpttools.formats import remote

    remote.blob(pth)
    served.behaviour.truncate = True
    code, _, err = _run(runner, "convert", pth, str(out))
    assert code == 2
    assert "truncated transfer" in err
    assert list(tmp_path.iterdir()) == [served.root]


@pytest.mark.parametrize("status, words", [
    (404, "not found (HTTP 404)"),
    (401, "access denied (HTTP 401); set CKPTTOOLS_HTTP_TOKEN"),
    (403, "access denied (HTTP 403)"),
], ids=["404", "401", "403"])
def test_http_status_is_one_line(runner: CliRunner, served: FileServer, pth: str, status: int, words: str) -> None:
    served.behaviour.status = status
    for cmd in ("inspect", "scan", "audit"):
        _clear()
        code, out, err = _run(runner, cmd, pth)
        assert code == 2, cmd
        assert out == ""
        assert err.count("\n") == 1 and words in err, err


def test_missing_file_is_404(runner: CliRunner, served: FileServer) -> None:
    code, _, err = _run(runner, "inspect", served.url("nope.safetensors"))
    assert code == 2
    assert err == f"ckpttools: error: {served.url('nope.safetensors')}: not found (HTTP 404); " \
                  "check the URL, repository and revision\n"


def test_bearer_token_from_the_environment(runner: CliRunner, served: FileServer, st: str,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    served.behaviour.token = "s3cret"
    assert _run(runner, "inspect", st)[0] == 2
    _clear()
    monkeypatch.setenv("CKPTTOOLS_HTTP_TOKEN", "s3cret")
    assert _run(runner, "inspect", st)[0] == 0


def test_server_without_range_support(runner: CliRunner, served: FileServer, pth: str) -> None:
    served.behaviour.no_range = True
    code, out, err = _run(runner, "inspect", pth)
    assert code == 2 and out == ""
    assert "ignores Range requests" in err and err.count("\n") == 1
    assert served.log.bytes < (served.root / "model.pth").stat().st_size  # it stopped reading


@pytest.mark.filterwarnings("always:.*ignores Range requests:UserWarning")
def test_convert_streams_from_a_server_without_range(runner: CliRunner, served: FileServer, pth: str,
                                                      tmp_path: Path) -> None:
    """convert needs every byte anyway: the file is read once, whole, with a warning."""
    from safetensors.torch import load_file

    served.behaviour.no_range = True
    out = tmp_path / "out.safetensors"
    code, stdout, err = _run(runner, "convert", pth, str(out))
    assert code == 0, err
    assert "ignores Range requests; reading the whole file once" in err
    assert len(served.log.requests) == 2  # the refused ranged probe, then one whole GET
    want = torch.load(served.root / "model.pth", weights_only=True)["model"]
    got = load_file(out)
    assert all(torch.equal(got[f"model.{k}"], v) for k, v in want.items())


@pytest.mark.filterwarnings("always:.*ignores Range requests:UserWarning")
@pytest.mark.parametrize("args", [["inspect", "--stats"], ["audit"], ["diff"]],
                         ids=["inspect-stats", "audit", "diff-pair"])
def test_whole_file_commands_download_from_a_server_without_range(
        runner: CliRunner, served: FileServer, pth: str, st: str, args: list[str]) -> None:
    """Commands that read every value anyway take the file whole, once, with a warning, and
    answer as on the local file; those that read a part still refuse (above)."""
    served.behaviour.no_range = True
    tail = [_local(served, st)] if args == ["diff"] else []  # diff A B: the URL against a file
    local = runner.invoke(cli, [*args, "--format", "json", _local(served, pth), *tail])
    code, out, err = _run(runner, *args, "--format", "json", pth, *tail)
    assert code == local.exit_code == 0, err
    # the URL's integrity row also says it read no record CRCs (a local file's are checked)
    out = out.replace("; record CRC-32s not read over a URL", "")
    assert json.loads(out) == json.loads(local.stdout.replace(_local(served, pth), pth))
    assert "ignores Range requests; reading the whole file once" in err
    assert len(served.log.requests) == 2  # the refused ranged probe, then one whole GET
    from ckpttools.formats import remote

    remote.clear()
    remote.SETTINGS.whole_file_ok = False  # a new process
    code, out, err = _run(runner, "inspect", "--stats", "--filter", "*.0.*", pth)
    assert code == 2 and "ignores Range requests" in err  # a part only: still refused


def test_timeout_option(runner: CliRunner, served: FileServer, st: str) -> None:
    served.behaviour.stall = 1.5
    code, _, err = _run(runner, "inspect", "--timeout", "0.3", st)
    assert code == 2
    assert "no answer within 0.3 s" in err and "--timeout" in err


def test_truncated_response(runner: CliRunner, served: FileServer, st: str) -> None:
    served.behaviour.truncate = True
    code, _, err = _run(runner, "inspect", st)
    assert code == 2
    assert "truncated transfer" in err and err.count("\n") == 1


def test_diagnose_checkpoint_and_remap_take_a_url(runner: CliRunner, served: FileServer, tmp_path: Path) -> None:
    from tests._models import tiny_net

    torch.save({"model": tiny_net().state_dict()}, served.root / "net.pth")
    url = served.url("net.pth")
    code, out, err = _run(runner, "diagnose", "--checkpoint", url, "--model", SPEC)
    assert code == 0, err
    assert "13 matching" in out
    dest = tmp_path / "out.pth"
    code, out, err = _run(runner, "remap", url, str(dest), "--add-prefix", "net.")
    assert code == 0, err
    assert sorted(torch.load(dest, weights_only=True)) == sorted(f"net.{k}" for k in tiny_net().state_dict())
