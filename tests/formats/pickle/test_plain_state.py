"""A plain dict of tensors read from the scan's runs (``plain_state``) against the unpickler.

The reader must get the same tree (keys in order, placeholders), globals, storages and end,
or the same error, with and without the shortcut: on real ``torch.save`` files, on byte-level
mutations of the records inside and around runs, and, through ``scan`` and ``inspect`` (JSON
and text), on every file of the malicious and hostile corpora.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner

from ckpttools.cli.main import cli
from ckpttools.errors import CkptError, CorruptCheckpointError
from ckpttools.formats.pickle import opwalk, plain_state, walk
from ckpttools.formats.pickle.placeholders import ITEMSIZE, new_placeholder, new_storage_info
from ckpttools.formats.pickle import reader as reader_module
from ckpttools.formats.pickle.reader import PickledReader
from ckpttools.formats.registry import open_checkpoint
from ckpttools.ops.audit.scan import scan_checkpoint
from tests.formats.pickle.pickles import data_pkl

torch = pytest.importorskip("torch")


def _states() -> dict[str, Any]:
    """Plain dicts the shortcut reads and nested or framework dicts it leaves to the unpickler."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(64, generator=g)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8),
                                torch.nn.Flatten(), torch.nn.Linear(8, 4))
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 3, 3, 3, generator=g)).sum().backward()
    opt.step()
    return {
        "many": {f"blocks.{i}.weight": torch.randn(3, generator=g) for i in range(2100)},
        "shapes": {f"{name}.{i}": t for i in range(12) for name, t in (
            ("scalar", torch.tensor(1.5)), ("m", torch.ones(2, 3)), ("t3", torch.zeros(2, 3, 4)),
            ("conv", torch.zeros(4, 3, 2, 2)), ("c3", torch.zeros(2, 1, 2, 2, 2)),
            ("empty", torch.zeros(0, 3)), ("big", torch.zeros(70000)),
            ("wide", torch.zeros(1, 300)), ("t", torch.zeros(3, 5).t().contiguous().t()))},
        "dtypes": {f"{d}.{i}": torch.zeros(2, dtype=d)
                   for d in (torch.float16, torch.bfloat16, torch.int64, torch.bool)
                   for i in range(40)},
        "mixed": {f"{d}.{i}": torch.zeros(2, dtype=d) for i in range(40)  # no runs
                  for d in (torch.float16, torch.int64)},
        "views": {f"{k}{i}": v for i in range(20) for k, v in (
            ("a", base[2:10]), ("b", base[::2]), ("d", base))},
        "grad": {f"g{i}": torch.zeros(2).requires_grad_() for i in range(40)},
        "params": {f"p{i}": torch.nn.Parameter(torch.zeros(2)) for i in range(40)},
        "tied": {f"k{i}": base[i:i + 2] * 1 for i in range(40)}
                | {"tied": base[:4], "base": base, "last": base[8:]},  # a stored key fetched
        "one": {"w": torch.zeros(2)},
        "empty": {},
        "model": model.state_dict(),
        "modules": torch.nn.Sequential(*[torch.nn.Sequential(torch.nn.Linear(2, 2))
                                         for _ in range(1100)]).state_dict(),
        "ordered": OrderedDict((f"k{i}", torch.zeros(2)) for i in range(40)),
        "optimizer": opt.state_dict(),
        "nested": {"model": {f"l{i}.w": torch.zeros(2) for i in range(50)}, "epoch": 3},
    }


def _read(data: bytes, shortcut: bool, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The reader's view of ``data`` after a scan walked it: what it built, or its error."""
    monkeypatch.setattr(walk, "PLAIN_STATES", shortcut)
    opwalk.walk_ops(data, "x")  # the scan, as ``inspect`` runs it first
    try:
        r = walk.walk_pickle(data, name="x")
    except CkptError as e:
        return ("error", str(e))
    tree = r.tree
    if isinstance(tree, dict):  # keys in order, its kind and an OrderedDict's _metadata
        tree = (type(tree), list(tree.items()), list(vars(tree).items())
                if type(tree) is OrderedDict else None)
    return tree, r.globals, list(r.storages.items()), r.end


def _taken(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Whether each read took the shortcut."""
    taken: list[bool] = []
    real = plain_state.read_plain_state

    def counted(*args: Any) -> Any:
        out = real(*args)
        taken.append(out is not None)
        return out

    monkeypatch.setattr(walk, "read_plain_state", counted)
    return taken


def test_real_files_read_alike(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every state: the same walk result, the same reader entries and the same inspect reports
    (JSON and text) with and without the shortcut; plain dicts take it, the rest do not."""
    taken = _taken(monkeypatch)
    runner = CliRunner()
    for name, state in _states().items():
        path = tmp_path / f"{name}.pth"
        torch.save(state, path)
        data = data_pkl(state)
        taken.clear()
        fast = _read(data, True, monkeypatch)
        assert taken == [name in ("many", "shapes", "dtypes", "grad", "modules",
                                  "ordered", "tied")], name
        assert fast == _read(data, False, monkeypatch), name
        outs = []
        for shortcut in (True, False):
            monkeypatch.setattr(walk, "PLAIN_STATES", shortcut)
            scan_checkpoint(path)
            with open_checkpoint(path) as reader:
                tree = reader.tree()
                seen: Any = (reader.entries(), type(tree), tree, vars(tree) if type(tree) is
                             OrderedDict else None, reader.pickle_globals())
            outs.append([seen] + [runner.invoke(cli, ["inspect", str(path), *fmt]).output
                                  for fmt in (["--format", "json"], [], ["--tree"])])
        assert outs[0] == outs[1], name


def _picture(tree: Any) -> Any:
    return (type(tree), list(tree.items()), vars(tree) if type(tree) is OrderedDict else None)


def test_flat_trees_flatten_as_before() -> None:
    """The reader's one-pass flattening of a dict of tensors gives ``flatten_tree``'s tree
    (its kind, keys in order, ``TensorRef`` leaves, an OrderedDict's ``_metadata``) and leaves."""
    flat = 0
    for name, state in _states().items():
        tree = walk.walk_pickle(data_pkl(state), name="x").tree
        fast = reader_module._flat_tensors(tree)
        if fast is not None:
            flat += 1
            want_tree, want_leaves = reader_module.flatten_tree(tree)
            assert _picture(fast[0]) == _picture(want_tree) and fast[1] == want_leaves, name
    assert flat >= 6


def _variants(data: bytes) -> list[bytes]:
    """Byte mutations inside and around the runs: every byte of two records (one in a run, one
    the run's first), fetches of run values, numbering, a cut and an inserted byte."""
    rng = random.Random(7)
    out = []
    for key, after in ((b"k33", b"k34"), (b"k40", b"k41")):
        at, stop = data.find(key) - 5, data.find(after) - 5
        for pos in range(at, stop):
            for new in {0, 0xFF, data[pos] ^ 1, rng.randrange(256)}:
                out.append(data[:pos] + bytes([new]) + data[pos + 1:])
        out.append(data[:at + 11] + data[at + 12:])
        out.append(data[:at + 11] + b"\x00" + data[at + 11:])
    last = data.find(b"k45") - 5
    first = int.from_bytes(data[data.find(b"k36") - 5 + 9:data.find(b"k36") - 5 + 13], "little")
    for index in range(first - 3, first + 10):  # a later record fetches a run's values
        fetch = b"j" + index.to_bytes(4, "little")
        for get in (b"h\x02", b"h\x03", b"h\x04", b"h\x06", b"h\n"):
            out.append(data[:last] + data[last:].replace(get, fetch, 1))
    return out


def test_mutations_read_alike(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each mutation gives the same tree, globals and storages, or the same error, both ways;
    some are still taken by the shortcut, so it is the one compared."""
    data = data_pkl({f"k{i}": torch.zeros(2) for i in range(48)})
    taken = _taken(monkeypatch)
    variants = _variants(data)
    assert len(variants) > 500
    for variant in variants:
        assert _read(variant, True, monkeypatch) == _read(variant, False, monkeypatch)
    assert sum(taken) > 50 and not all(taken)


def test_state_dict_metadata_mutations_read_alike(monkeypatch: pytest.MonkeyPatch) -> None:
    """A module's ``state_dict()`` (an OrderedDict with ``_metadata`` as BUILD state): every
    byte of its header and of its metadata changed reads the same both ways."""
    model = torch.nn.Sequential(*[torch.nn.Linear(1, 1) for _ in range(24)])
    data = data_pkl(model.state_dict())
    taken = _taken(monkeypatch)
    tail = data.rindex(b"_metadata") - 12
    spots = random.Random(5).sample([*range(0, 40), *range(tail, len(data))], 160)
    variants = [data] + [data[:p] + bytes([v]) + data[p + 1:] for p in spots
                         for v in {0, 0x73, data[p] ^ 1, data[p] ^ 0x80}]
    variants += [data[:p] + data[p + 1:] for p in spots]
    for variant in variants:
        assert _read(variant, True, monkeypatch) == _read(variant, False, monkeypatch)
    assert taken[0] and sum(taken) > 20 and not all(taken)


def _outputs(files: dict[str, Path]) -> dict[str, Any]:
    runner = CliRunner()
    out = {}
    for name, path in sorted(files.items()):
        scan = scan_checkpoint(path)
        runs = [runner.invoke(cli, ["inspect", str(path), *fmt]) for fmt in
                (["--format", "json"], [])]
        out[name] = (scan.exit_code, scan.to_dict(),
                     [(r.exit_code, r.stdout, r.stderr) for r in runs])
    return out


def test_corpora_get_the_same_verdicts(corpora: dict[str, Path],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """scan and inspect (JSON and text) with and without the shortcut: the same verdict, exit
    code, report and warnings on every file of both corpora and on a clean file."""
    taken = _taken(monkeypatch)
    fast = _outputs(corpora)
    assert any(taken)
    monkeypatch.setattr(walk, "PLAIN_STATES", False)
    slow = _outputs(corpora)
    assert len(fast) > 130
    for name in fast:
        assert fast[name] == slow[name], name
    assert fast["clean"][0] == 0 and fast["clean"][2][0][0] == 0


def _views_before(tensors: dict[str, Any], storages: dict[str, Any]) -> str:
    """The view check as it read each tensor on its own (before the spans were shared)."""
    for key, ph in tensors.items():
        if min((*ph.shape, *ph.stride, ph.storage_offset), default=0) < 0:
            return f"p: tensor {key} has a negative size"
        info = storages.get(ph.storage_key)
        need = 0 if 0 in ph.shape else (ph.storage_offset + ph.span) * ITEMSIZE[ph.dtype]
        if info is not None and need > info.nbytes:
            return f"p: tensor {key} reaches byte {need} of a {info.nbytes}-byte"
    return ""


def test_view_check_reads_each_form_as_before() -> None:
    """Sizes, strides and offsets around every limit, many tensors per form: the same first
    refusal (and message) as the check that read each tensor on its own."""
    rng = random.Random(3)
    dims = [(), (0,), (4,), (2, 2), (2, 0), (-1,), (3, 1), (1, 4)]
    for _ in range(300):
        tensors, storages = {}, {}
        for i in range(rng.randrange(1, 30)):
            shape = rng.choice(dims)
            stride = tuple(rng.choice((-1, 0, 1, 2, 4)) for _ in shape)
            storages[str(i)] = new_storage_info(str(i), "float32", rng.randrange(0, 12), "cpu")
            tensors[f"t{i}"] = new_placeholder(str(i), "float32", rng.choice((-1, 0, 1, 5)),
                                               shape, stride, "cpu", False, "strided")
        reader = SimpleNamespace(path="p", _tensors=tensors,
                                 _walk_result=SimpleNamespace(storages=storages))
        try:
            PickledReader._check_views(reader)  # type: ignore[arg-type]
            got = ""
        except CorruptCheckpointError as e:
            got = str(e)
        want = _views_before(tensors, storages)
        assert got.startswith(want) and bool(got) == bool(want), (got, want)


@pytest.mark.frameworks
def test_transformers_state_dict_reads_alike(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """``torch.save(model.state_dict())`` of a transformers model built from a tiny config (an
    OrderedDict with _metadata, tied weights as views of one storage): the same reader
    result and inspect reports with and without the shortcut, which takes it."""
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_layer=4, n_embd=8, n_head=2, vocab_size=32,
                                     n_positions=16)
    model = transformers.GPT2LMHeadModel(config)
    data = data_pkl(model.state_dict())
    taken = _taken(monkeypatch)
    assert _read(data, True, monkeypatch) == _read(data, False, monkeypatch)
    path = tmp_path / "gpt2.pth"
    torch.save(model.state_dict(), path)
    outs = []
    for shortcut in (True, False):
        monkeypatch.setattr(walk, "PLAIN_STATES", shortcut)
        outs.append([CliRunner().invoke(cli, ["inspect", str(path), *fmt]).output
                     for fmt in (["--format", "json"], ["--tree"])])
    assert outs[0] == outs[1]
    assert taken[0]
