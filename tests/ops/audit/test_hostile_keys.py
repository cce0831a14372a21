"""Containers whose keys collide in hash: unpickling them takes time quadratic in the number of
keys (CPython probes every earlier key of the same hash), so scan and inspect flag them from the
opcodes and the reader refuses them before unpickling. Files are written by torch.save and
pickle.dumps; ordinary int- and float-keyed containers stay safe."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from ckpttools.cli.main import cli
from ckpttools.errors import CorruptCheckpointError
from ckpttools.formats.registry import open_checkpoint
from ckpttools.ops.audit.scan import scan_checkpoint

MODULUS = (1 << 61) - 1  # hash(k * MODULUS) == 0 for every int k: CPython's int hash


class CollidingDict:
    """Pickles as ``dict()`` then SETITEMS of ``n`` distinct int keys that all hash to 0,
    without building the dict here (that alone would be quadratic)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __reduce__(self) -> tuple[Any, ...]:
        return dict, (), None, None, ((k * MODULUS, 0) for k in range(1, self.n + 1))


def _hash_finding(path: Path) -> list[str]:
    (f,) = scan_checkpoint(path).files
    return [x.message for p in f.pickles for x in p.findings if "hash-collision" in x.message]


@pytest.fixture
def colliding_pth(tmp_path: Path) -> Path:
    import torch

    path = tmp_path / "collide.pth"
    # 20,000 keys: unguarded, building this dict costs ~2 * 10**8 key comparisons
    torch.save({"weight": torch.zeros(2), "meta": CollidingDict(20_000)}, path)
    return path


def test_scan_flags_colliding_dict_keys(colliding_pth: Path) -> None:
    result = scan_checkpoint(colliding_pth)
    assert result.exit_code == 1 and result.files[0].safety == "unsafe"
    assert _hash_finding(colliding_pth)


def test_reader_refuses_before_unpickling(colliding_pth: Path) -> None:
    with pytest.raises(CorruptCheckpointError, match="hash-collision"):
        open_checkpoint(colliding_pth)


@pytest.mark.parametrize("command", ["inspect", "scan"])
def test_cli_names_the_finding_and_exits_1(colliding_pth: Path, command: str) -> None:
    result = CliRunner().invoke(cli, [command, str(colliding_pth)])
    assert result.exit_code == 1, result.output
    assert "hash-collision" in result.stderr
    assert "Traceback" not in result.stderr


def _colliding_set(n: int) -> set[int]:
    return {k * MODULUS for k in range(1, n + 1)}  # 1,500 keys: about 10**6 comparisons here


@pytest.mark.parametrize("protocol", [2, 4])  # 2: set([...]) by REDUCE; 4: EMPTY_SET + ADDITEMS
def test_colliding_set_is_flagged(tmp_path: Path, protocol: int) -> None:
    path = tmp_path / "s.pkl"
    path.write_bytes(pickle.dumps({"keys": _colliding_set(1_500)}, protocol=protocol))
    assert _hash_finding(path)


def test_colliding_pairs_given_to_a_dict_are_flagged(tmp_path: Path) -> None:
    # dict([(k, v), ...]) hashes each pair's first item
    path = tmp_path / "pairs.pkl"
    pairs = [(k * MODULUS, 0) for k in range(1, 1_500)]
    path.write_bytes(pickle.dumps({"pairs": pairs}, protocol=2))
    assert _hash_finding(path)


def test_many_keys_of_distinct_hashes_are_safe(tmp_path: Path) -> None:
    import torch

    state = {"optimizer": {"state": {i: {"step": i} for i in range(5_000)}},
             "zeros": [0] * 20_000, "floats": {i / 7: i for i in range(3_000)},
             "same": [MODULUS] * 5_000, "weight": torch.ones(3)}
    path = tmp_path / "ok.pth"
    torch.save(state, path)
    assert scan_checkpoint(path).exit_code == 0
    with open_checkpoint(path) as reader:
        assert len(reader.entries()) > 5_000


@pytest.fixture
def dcp_folder(tmp_path: Path) -> Iterator[Path]:
    import torch
    import torch.distributed.checkpoint as dcp

    folder = tmp_path / "dcp"
    dcp.save({"w": torch.zeros(3), "step": 4}, checkpoint_id=folder)
    yield folder


@pytest.mark.filterwarnings("ignore::UserWarning")  # DCP: "torch.distributed is disabled"
@pytest.mark.parametrize("command", ["inspect", "scan", "audit", "diff"])
def test_distcp_file_alone_names_its_folder(dcp_folder: Path, command: str) -> None:
    data_file = next(dcp_folder.glob("*.distcp"))
    argv = [command, str(data_file)] + ([str(data_file)] if command == "diff" else [])
    result = CliRunner().invoke(cli, argv)
    assert result.exit_code == 2
    (line,) = result.stderr.splitlines()
    assert "torch.distributed.checkpoint" in line and line.endswith(f"pass the folder: {dcp_folder}")
    assert CliRunner().invoke(cli, [command, str(dcp_folder)]
                              + ([str(dcp_folder)] if command == "diff" else [])).exit_code == 0


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_distcp_file_without_metadata(dcp_folder: Path, tmp_path: Path) -> None:
    lone = tmp_path / "__0_0.distcp"
    lone.write_bytes(next(dcp_folder.glob("*.distcp")).read_bytes())
    result = CliRunner().invoke(cli, ["inspect", str(lone)])
    assert result.exit_code == 2 and "has no .metadata" in result.stderr


class MetadataIndexPairs:
    """Pickles as ``dict()`` then SETITEMS of ``(MetadataIndex(fqn), 0)`` pairs, without building
    the dict here (with colliding fqns that alone would be quadratic)."""

    def __init__(self, fqns: list[Any]) -> None:
        self.fqns = fqns

    def __reduce__(self) -> tuple[Any, ...]:
        from torch.distributed.checkpoint.metadata import MetadataIndex

        return dict, (), None, None, ((MetadataIndex(f), 0) for f in self.fqns)


def test_dcp_storage_keys_named_by_str_are_safe(tmp_path: Path) -> None:
    # DCP's storage_data is keyed by MetadataIndex, which hashes its str fqn (randomised per
    # process): a checkpoint of more than 10,000 tensors was called a hash-collision attack
    path = tmp_path / "index.pkl"
    path.write_bytes(pickle.dumps({"storage_data": MetadataIndexPairs(
        [f"layers.{i}.weight" for i in range(10_050)])}))
    assert not _hash_finding(path)


def test_dcp_storage_keys_named_by_colliding_ints_are_flagged(tmp_path: Path) -> None:
    # the same class given int fqns of one hash by BUILD: its hash, (fqn, offset)'s, collides
    path = tmp_path / "index.pkl"
    path.write_bytes(pickle.dumps({"storage_data": MetadataIndexPairs(
        [k * MODULUS for k in range(1, 10_050)])}))
    assert _hash_finding(path)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")  # DCP: "torch.distributed is disabled"
@pytest.mark.parametrize("command", ["inspect", "scan"])
def test_dcp_of_many_tensors_reads_clean(tmp_path: Path, command: str) -> None:
    import torch
    import torch.distributed.checkpoint as dcp

    folder = tmp_path / "dcp"
    dcp.save({f"layers.{i}.weight": torch.zeros(1) for i in range(10_050)}, checkpoint_id=folder)
    result = CliRunner().invoke(cli, [command, str(folder)])
    assert result.exit_code == 0, result.output
    assert "hash-collision" not in result.output
