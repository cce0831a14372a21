"""The scan's proof for the reader's guard (``guard``) against the guard itself.

Wherever a walk proves a pickle, ``walk.scan_pickle`` must accept the same bytes and end them at
the same offset; the reader must refuse or read every file of both hostile corpora, and every
byte-level mutation of a real ``torch.save`` pickle, exactly as without the proof.
"""

from __future__ import annotations

import pickletools
import random
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from ckpttools.cli.main import cli
from ckpttools.errors import CkptError
from ckpttools.formats.pickle import guard, walk
from ckpttools.formats.pickle.genops import NAMES
from ckpttools.formats.pickle.opwalk import walk_ops
from ckpttools.ops.audit.scan import scan_checkpoint
from tests.formats.pickle.pickles import data_pkl as _data_pkl

torch = pytest.importorskip("torch")


def _guard_end(data: bytes) -> Any:
    """What the guard answers for ``data``: the end, or the exception's text."""
    try:
        return walk.scan_pickle(data)
    except (ValueError, IndexError) as e:
        return f"{type(e).__name__}: {e}"


def _proof_agrees(data: bytes) -> bool:
    """Walk ``data``; when the walk proves it, the guard must give the same end. Returns
    whether a proof was taken."""
    walk_ops(data, "data.pkl")
    proven = guard.proven_end(data, 0)
    if proven is not None:
        assert _guard_end(data) == proven
    return proven is not None


def test_walk_and_guard_know_the_same_opcodes() -> None:
    assert set(NAMES) == {ord(op.code) for op in pickletools.opcodes}


def test_real_pickles_are_proven() -> None:
    data = _data_pkl({f"blocks.{i}.weight": torch.zeros(i % 4 + 1) for i in range(300)}
                     | {"epoch": 3, "names": ["a", "b"]})
    assert _proof_agrees(data)
    assert guard.proven_end(data + b"tail", 0) == len(data)  # the reader's record may run on
    assert guard.proven_end(b"x" + data, 1) == len(data) + 1
    assert guard.proven_end(data[:-1] + b"\x00", 0) is None  # other bytes: no proof


@pytest.mark.parametrize("data", [
    b"\x80\x02K\x01r\xff\xff\xff\x7f.",  # a memo index past the data: the guard refuses
    b"\x80\x04\x95\xff\xff\xff\x00\x00\x00\x00\x00K\x01.",  # a frame past the data
    b"\x80\x02K\x01p+1\n.",  # a text PUT the guard reads more strictly than the unpickler
    b"(K\x01p0\n.",  # a text PUT it accepts: left to it all the same
], ids=["memo-index", "long-frame", "text-put-sign", "text-put"])
def test_what_the_guard_refuses_is_never_proven(data: bytes) -> None:
    walk_ops(data, "x")
    assert guard.proven_end(data, 0) is None


def test_every_mutation_gets_the_guards_answer() -> None:
    """Each byte of a few records set to other values, cut, doubled; the pickle cut short:
    a proof, when one is taken, always matches the guard."""
    data = _data_pkl({f"layer.{i}.w": torch.zeros(i % 3 + 1, 2) for i in range(40)})
    rng = random.Random(20)
    start, end = data.find(b"layer.5.w") - 5, data.find(b"layer.7.w") - 5
    proven = 0
    for at in [*range(0, 40), *range(start, end), *range(len(data) - 40, len(data))]:
        for value in {0, 1, 0x10, 0x28, 0x2E, 0x70, 0x71, 0x72, 0x94, 0x95, 0xFF,
                      data[at] ^ 1, rng.randrange(256)}:
            proven += _proof_agrees(data[:at] + bytes([value]) + data[at + 1:])
        proven += _proof_agrees(data[:at] + data[at + 1:])
        proven += _proof_agrees(data[:at] + data[at:at + 1] + data[at:])
        proven += _proof_agrees(data[:at])
    assert proven > 100


def _verdicts(files: dict[str, Path]) -> dict[str, Any]:
    """Per file: scan's exit code and report, then inspect's exit code, stdout and stderr
    (inspect scans the file first, so its reader meets the scan's proof)."""
    runner = CliRunner()
    out = {}
    for name, path in sorted(files.items()):
        scan = scan_checkpoint(path)
        res = runner.invoke(cli, ["inspect", str(path), "--format", "json"])
        out[name] = (scan.exit_code, scan.to_dict(), res.exit_code, res.stdout, res.stderr)
    return out


def test_corpora_get_the_same_verdicts(corpora: dict[str, Path],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """scan and inspect with and without the proof: same verdict, exit code, report and
    warnings on every file of both corpora, and the pickles the proof covers read alike."""
    taken: list[bool] = []
    real = guard.proven_end

    def counted(data: Any, offset: int) -> int | None:
        out = real(data, offset)
        taken.append(out is not None)
        return out

    monkeypatch.setattr(walk, "proven_end", counted)
    proved = _verdicts(corpora)
    monkeypatch.setattr(walk, "GUARD_PROOFS", False)
    guarded = _verdicts(corpora)
    assert len(proved) > 130 and sum(taken) >= 10
    for name in proved:
        assert proved[name] == guarded[name], name
    assert proved["clean"][0] == 0 and proved["clean"][2] == 0


def test_reader_refuses_a_proven_walk_of_other_bytes(tmp_path: Path) -> None:
    """A proof is for the bytes walked: a reader of other bytes is guarded as before."""
    data = _data_pkl({"w": torch.zeros(2)})
    walk_ops(data, "x")
    bad = data[:-1] + b"\xff"  # no STOP: the guard refuses
    with pytest.raises(CkptError, match="malformed pickle"):
        walk.walk_pickle(bad, name="x")
