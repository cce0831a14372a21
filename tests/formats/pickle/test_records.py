"""The one-step walk of torch's tensor record (``records``) against the opcode-by-opcode loop.

Both readings must leave the walk's machine in the same state (stack, memo, globals, findings,
tuple depth, opcode count, end) on real ``torch.save`` files, on every byte-level mutation of
one, and must give ``scan`` and ``inspect`` the same verdict, exit code and output on every file
of the malicious and hostile corpora.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from ckpttools.cli.main import cli
from ckpttools.formats.pickle import opwalk, record_runs, records, walk
from ckpttools.formats.pickle.opstate import Computed, Global, State, Tup
from ckpttools.ops.audit.scan import scan_checkpoint
from tests.formats.pickle.pickles import data_pkl as _data_pkl

torch = pytest.importorskip("torch")


def _states() -> dict[str, Any]:
    """State dicts with every shape form the record pattern reads, and some it does not."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(64, generator=g)
    return {
        "many-1d": {f"blocks.{i}.weight": torch.randn(3, generator=g) for i in range(300)},
        "shapes": {"scalar": torch.tensor(1.5), "v": torch.zeros(5), "m": torch.ones(2, 3),
                   "t3": torch.zeros(2, 3, 4), "conv": torch.zeros(4, 3, 2, 2),
                   "conv3d": torch.zeros(2, 1, 2, 2, 2), "empty": torch.zeros(0, 3),
                   "big": torch.zeros(70000), "wide": torch.zeros(1, 300)},
        "dtypes": {f"{d}.{i}": torch.zeros(2, dtype=d) for i in range(20)
                   for d in (torch.float16, torch.bfloat16, torch.int64, torch.bool)},
        "views": {"a": base[2:10], "b": base[::2], "c": base.view(8, 8).t(), "d": base},
        "grad": {f"p{i}": torch.nn.Parameter(torch.zeros(2)) for i in range(5)}
                | {f"g{i}": torch.zeros(2).requires_grad_() for i in range(5)},
        "model": {"model": torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8),
                                               torch.nn.Linear(8, 4)).state_dict(),
                  "epoch": 3, "names": ["a", "b"], "lr": 0.1},
    }


def _shape_of(v: Any) -> Any:
    """A comparable picture of a machine value (fresh objects compare by what they hold)."""
    if type(v) is Tup:
        return ("Tup", v.depth, v.key)
    if type(v) is Computed:
        return ("Computed", v.what)
    if type(v) is Global:
        return ("Global", v.qualname)
    if v is opwalk.MARK:
        return "MARK"
    return (type(v).__name__, v)


def _counting_records(fused: bool, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Records on (``fused``) or off; the list fills with how many records each try took."""
    monkeypatch.setattr(opwalk, "FUSED_RECORDS", fused)
    seen: list[int] = []
    real, run = records.tensor_record, record_runs.record_run

    def counted(*args: Any) -> Any:
        out = real(*args)
        seen.append(out is not None)
        return out

    def counted_run(w: State, *args: Any) -> Any:
        before = len(w.stack)
        out = run(w, *args)
        seen.append(0 if out is None else (len(w.stack) - before) // 2)  # a key and a tensor each
        return out

    monkeypatch.setattr(opwalk, "tensor_record", counted)
    monkeypatch.setattr(opwalk, "record_run", counted_run)
    return seen


def _machine(data: bytes, fused: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, ...]:
    """The walk's answer and its machine's final stack and memo, with or without records."""
    seen = _counting_records(fused, monkeypatch)
    w = State("data.pkl")
    try:
        outcome: Any = opwalk._loop(w, data, 0, len(data), 0, None)
    except (opwalk.Stop, opwalk.OpcodeError) as e:
        outcome = (type(e).__name__, *e.args)
    walk = opwalk.walk_ops(data, "data.pkl")
    return (outcome, walk, [_shape_of(v) for v in w.stack],
            {k: _shape_of(record_runs.resolve(w.memo, k)) for k in list(w.memo)},
            sorted(len(b) for _, counts in w.keys.values() for b in counts.values()),
            w.hostile, sum(seen))


def _same(data: bytes, monkeypatch: pytest.MonkeyPatch) -> int:
    """Assert both readings agree on ``data``; return how many records the fused one took."""
    fused = _machine(data, True, monkeypatch)
    loop = _machine(data, False, monkeypatch)
    assert fused[:-1] == loop[:-1]
    assert loop[-1] == 0
    return fused[-1]


@pytest.mark.parametrize("name", list(_states()))
def test_real_files_walk_the_same(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _data_pkl(_states()[name])
    taken = _same(data, monkeypatch)
    # views of one storage fetch its key from the memo: the loop walks them
    assert taken > 0 or name == "views"


def _mutations(data: bytes, start: int, end: int) -> list[bytes]:
    """Each byte of ``data[start:end]`` set to other values (lengths, widths, memo indices,
    opcodes), bytes cut and inserted, the data cut there."""
    rng = random.Random(20)
    variants = []
    for at in range(start, end):
        for value in {0, 1, 2, 0x10, 0x28, 0x29, 0x4A, 0x4B, 0x4D, 0x58, 0x68, 0x6A, 0x71, 0x72,
                      0x74, 0x85, 0x86, 0x87, 0x88, 0xFF, data[at] ^ 1, rng.randrange(256)}:
            variants.append(data[:at] + bytes([value]) + data[at + 1:])
        variants.append(data[:at] + data[at + 1:])
        variants.append(data[:at] + bytes([rng.randrange(256)]) + data[at:])
        variants.append(data[:at])
    return variants


def test_every_mutation_walks_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every mutation of two records: the fused reading never differs from the loop's."""
    data = _data_pkl({f"layer.{i}.w": torch.zeros(i % 3 + 1, 2) for i in range(40)})
    start = data.find(b"layer.5.w") - 5
    end = data.find(b"layer.7.w") - 5
    for variant in _mutations(data, start, end):
        _same(variant, monkeypatch)
    assert _same(data, monkeypatch) > 30


def test_every_mutation_of_a_run_walks_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the 32nd record the records form runs (``record_runs``): every mutation of a
    record inside one, and of the next record's first bytes, walks as the loop does."""
    data = _data_pkl({f"layer.{i}.w": torch.zeros(i % 3 + 1, 2) for i in range(40)})
    seen = _counting_records(True, monkeypatch)
    opwalk.walk_ops(data, "x")
    assert max(seen) >= 8  # the last eight records are one run
    start = data.find(b"layer.35.w") - 5
    end = data.find(b"layer.36.w") - 3  # and the next record's opcode and count
    for variant in _mutations(data, start, end):
        _same(variant, monkeypatch)


def test_run_values_are_made_when_fetched(monkeypatch: pytest.MonkeyPatch) -> None:
    """A run stores its records' values when an opcode fetches one: a later record that calls
    a run's OrderedDict() result, and one that fetches its storage key as a global's name,
    walk as the loop walks them (same stack, memo, findings)."""
    data = _data_pkl({f"k{i}": torch.zeros(2) for i in range(40)})
    run_key, last = data.find(b"k36") - 5, data.find(b"k39") - 5
    first = int.from_bytes(data[run_key + 9:run_key + 13], "little")  # its key's LONG_BINPUT
    for index in range(first, first + 8):
        fetch = b"j" + index.to_bytes(4, "little")
        callee = data[:last] + data[last:].replace(b"h\x02", fetch, 1)
        named = data[:last] + data[last:].replace(b"h\x03", fetch, 1)
        for variant in (callee, named):
            assert variant != data
            _same(variant, monkeypatch)
    flagged = opwalk.walk_ops(data[:last] + data[last:].replace(
        b"h\x02", b"j" + (first + 5).to_bytes(4, "little"), 1), "x")
    assert any("calls the result of calling collections.OrderedDict" in f[2]
               for f in flagged.findings)


def test_memo_tricks_are_left_to_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """A record fetching a value it stores itself, or a callee that is not a named global,
    is walked by the loop (which flags the computed call)."""
    data = _data_pkl({f"k{i}": torch.zeros(2) for i in range(4)})
    second = data.find(b"k1") - 5
    rebuild_get = data.index(b"h\x02", second)
    # the rebuild call's callee becomes the key string stored just before it
    own = data[:rebuild_get] + b"h" + data[second + 8:second + 9] + data[rebuild_get + 2:]
    assert own != data
    assert _same(own, monkeypatch) >= 0
    flagged = opwalk.walk_ops(own, "x")
    assert any("calls str" in f[2] for f in flagged.findings)


def _verdicts(files: dict[str, Path], fused: bool,
              monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, Any], dict[str, int]]:
    """Per file: scan's exit code and report, inspect's exit code, stdout and stderr; and
    how many records each file's walks took in one step."""
    taken = _counting_records(fused, monkeypatch)
    runner = CliRunner()
    out, per_file = {}, {}
    for name, path in sorted(files.items()):
        taken.clear()
        scan = scan_checkpoint(path)
        res = runner.invoke(cli, ["inspect", str(path), "--format", "json"])
        out[name] = (scan.exit_code, scan.to_dict(), res.exit_code, res.stdout, res.stderr)
        per_file[name] = sum(taken)
    return out, per_file


def test_corpora_get_the_same_verdicts(corpora: dict[str, Path],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """scan and inspect, with and without the fused records: same verdict, exit code, report
    and warnings on every file of both corpora (and a clean file, which must stay clean)."""
    fused, taken = _verdicts(corpora, True, monkeypatch)
    loop, none = _verdicts(corpora, False, monkeypatch)
    assert len(fused) > 130
    assert sum(none.values()) == 0
    assert taken["clean"] >= 499  # every record but the first, which names the globals
    # the classic corpus's torch zips hold a plain record beside their payload
    assert sum(1 for n, k in taken.items() if k and n.endswith("-zip")) >= 9
    for name in fused:
        assert fused[name] == loop[name], name
    assert fused["clean"][0] == 0 and fused["clean"][2] == 0
    flagged = [n for n, v in fused.items() if n != "clean" and v[0] == 0 and v[2] == 0]
    assert flagged == []


def _scan_by_steps(data: bytes, start: int = 0) -> int:
    """``walk.scan_pickle`` as it was, every counted opcode through ``_step``."""
    n, pos = len(data), start
    while pos < n:
        pos = walk._RUN.match(data, pos).end()  # type: ignore[union-attr]
        if pos >= n:
            break
        if data[pos] == walk._STOP:
            return pos + 1
        pos = walk._step(data, data[pos], pos + 1, n)
    raise ValueError("truncated (no STOP opcode)")


def _outcome(fn: Any, data: bytes) -> Any:
    try:
        return fn(data)
    except (ValueError, IndexError) as e:
        return (type(e).__name__, str(e))


def test_length_checks_read_strings_as_before() -> None:
    """The reader's length pre-check reads BINUNICODE inline: same end, same error, on a real
    pickle and on every cut and count change of its strings."""
    data = _data_pkl({f"layer.{i}.w": torch.zeros(2) for i in range(30)})
    variants = [data]
    for at in (i for i in range(len(data)) if data[i] == 0x58):
        for delta in (1, 2, 255, 1 << 16, 1 << 31):
            count = (int.from_bytes(data[at + 1:at + 5], "little") + delta) % (1 << 32)
            variants.append(data[:at + 1] + count.to_bytes(4, "little") + data[at + 5:])
        variants += [data[:at + 1], data[:at + 3], data[:at + 6]]
    for variant in variants:
        assert _outcome(walk.scan_pickle, variant) == _outcome(_scan_by_steps, variant)


def test_a_run_matches_its_first_records_fetches_only() -> None:
    """After a run's first record the others are matched with its five fetches as literals
    (``record_runs._same_fetches``): the groups read as the general pattern's, and a record
    that fetches anything else is not matched (the run ends there)."""
    data = _data_pkl({f"k{i}": torch.zeros(2) for i in range(40)})
    at = data.find(b"k37") - 5
    start = at + 5 + int.from_bytes(data[at + 1:at + 5], "little")
    general = record_runs._REST.match(data, start)
    assert general is not None
    g = general.groups()
    same = record_runs._same_fetches((g[1], g[2], g[3], g[7], g[16]))
    assert same is record_runs._same_fetches((g[1], g[2], g[3], g[7], g[16]))
    m = same.match(data, start)
    assert m is not None and m.groups() == g and m.end() == general.end()
    other = data[:start] + data[start:].replace(g[16], b"j" + bytes(4), 1)
    assert record_runs._REST.match(other, start) is not None
    assert same.match(other, start) is None
