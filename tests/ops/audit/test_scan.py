"""scan on a generated malicious corpus, clean checkpoints of every format, and damaged files."""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ckpttools.formats.pickle.safety import classify_global
from ckpttools.formats.registry import open_checkpoint
from ckpttools.ops.audit.scan import scan_checkpoint, scan_file
from ckpttools.ops.audit.opcodes import scan_opcodes
from tests.malicious_corpus import Case, build_corpus



@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[list[Case], Path]]:
    root = tmp_path_factory.mktemp("malicious")
    canary = root / "CANARY"
    yield build_corpus(root / "files", canary), canary
    assert not canary.exists(), "a pickle from the corpus was executed"


def _unsafe_texts(path: Path) -> list[str]:
    f = scan_file(str(path))
    return ([g.qualname for p in f.pickles for g in p.globals if g.safety == "unsafe"]
            + [x.message for p in f.pickles for x in p.findings if x.safety == "unsafe"])


def test_every_corpus_file_is_flagged_with_its_global(corpus: tuple[list[Case], Path]) -> None:
    cases, canary = corpus
    assert len(cases) > 80
    missed = [c.name for c in cases if not any(c.expect in t for t in _unsafe_texts(c.path))]
    assert missed == []
    result = scan_checkpoint([c.path for c in cases])
    assert not result.ok and result.exit_code == 1
    assert all(f.safety == "unsafe" for f in result.files)
    assert not canary.exists()


@pytest.mark.parametrize("fmt", ["torch-zip", "torch-legacy", "safetensors", "dcp",
                                 "safetensors-sharded", "torch-sharded"])
def test_clean_checkpoints_are_safe(fmt: str, make_checkpoint: Callable[..., Path],
                                    tiny_model: object) -> None:
    path = make_checkpoint(fmt, tiny_model.state_dict())  # type: ignore[attr-defined]
    result = scan_checkpoint(path)
    assert result.ok and result.exit_code == 0, result.to_dict()
    assert all(f.safety == "safe" for f in result.files)
    names = {g.qualname for f in result.files for p in f.pickles for g in p.globals}
    if fmt in ("torch-zip", "torch-legacy", "torch-sharded"):
        assert "torch._utils._rebuild_tensor_v2" in names


def test_training_checkpoint_with_namespace_is_safe(tmp_path: Path) -> None:
    import argparse

    import torch

    path = tmp_path / "ckpt.pth"
    torch.save({"w": torch.zeros(1), "args": argparse.Namespace(lr=0.1)}, path)
    (f,) = scan_checkpoint(path).files
    assert f.safety == "safe" and scan_checkpoint(path).exit_code == 0


@dataclass
class TrainConfig:
    lr: float = 0.1


def test_unknown_class_fails_closed_until_allowed(tmp_path: Path) -> None:
    import torch

    path = tmp_path / "ckpt.pth"
    torch.save({"w": torch.zeros(1), "cfg": TrainConfig()}, path)
    result = scan_checkpoint(path)
    (f,) = result.files
    name = f"{__name__}.TrainConfig"
    assert f.safety == "unknown" and result.exit_code == 1 and f.unknown_globals == (name,)
    assert f.hint is not None and f"add_safe_globals([{name}])" in f.hint
    assert scan_checkpoint(path, allow=[name]).exit_code == 0
    assert scan_checkpoint(path, allow=["tests.*"]).exit_code == 0


@pytest.mark.parametrize(("module", "name", "safety"), [
    ("torch._utils", "_rebuild_tensor_v2", "safe"), ("torch", "BFloat16Storage", "safe"),
    ("collections", "OrderedDict", "safe"), ("_codecs", "encode", "safe"),
    ("torch.cuda", "FloatTensor", "safe"), ("argparse", "Namespace", "safe"),
    ("numpy._core.multiarray", "_reconstruct", "safe"), ("pathlib", "PosixPath", "safe"),
    ("datetime", "datetime", "safe"), ("builtins", "slice", "safe"),
    ("typing", "_eval_type", "unsafe"), ("dataclasses", "_create_fn", "unsafe"),
    ("numpy", "savetxt", "unsafe"), ("numpy", "memmap", "unsafe"), ("codecs", "open", "unsafe"),
    ("sqlite3", "connect", "unsafe"), ("torch", "from_file", "unsafe"),
    ("torch.serialization", "_open_file", "unsafe"), ("networkx", "write_adjlist", "unsafe"),
    ("test.support.script_helper", "assert_python_ok", "unsafe"),
    ("collections", "OrderedDict.fromkeys", "unsafe"), ("numpy", "load", "unsafe"),
    ("mypkg.config", "TrainConfig", "unknown"), ("mypkg.io", "Config", "unknown"),
    ("os", "system", "unsafe"), ("nt", "system", "unsafe"), ("__builtin__", "eval", "unsafe"), ("builtins", "getattr", "unsafe"),
    ("builtins", "__import__", "unsafe"), ("builtins", "compile", "unsafe"), ("importlib", "import_module", "unsafe"),
    ("pkgutil", "resolve_name", "unsafe"), ("marshal", "loads", "unsafe"), ("shutil", "rmtree", "unsafe"),
    ("socket", "socket", "unsafe"), ("ctypes", "CDLL", "unsafe"), ("code", "InteractiveInterpreter.runcode", "unsafe"),
    ("asyncio.unix_events", "_UnixSubprocessTransport", "unsafe"), ("bdb", "Bdb.run", "unsafe"), ("pdb", "run", "unsafe"),
    ("timeit", "timeit", "unsafe"), ("cProfile", "run", "unsafe"), ("idlelib.run", "Executive.runcode", "unsafe"),
    ("distutils.file_util", "write_file", "unsafe"), ("pip._internal", "main", "unsafe"), ("_io", "FileIO", "unsafe"),
    ("torch.utils.collect_env", "run", "unsafe"), ("torch._C", "_jit_pass", "unsafe"), ("torch", "load", "unsafe"),
    ("torch.jit.unsupported_tensor_ops", "execWrapper", "unsafe"), ("numpy", "__builtins__", "unsafe"),
    ("tempfile", "_os", "unsafe"), ("pathlib", "os.system", "unsafe"), ("_interpreters", "run_string", "unsafe"),
    ("Subprocess", "Popen", "unsafe"), ("picklescan.scanner", "scan_pickle_bytes", "unsafe"), ("", "system", "unsafe"),
    ("multiprocessing.util", "spawnv_passfds", "unsafe"), ("mailcap", "findmatch", "unsafe"), ("copyreg", "add_extension", "unsafe"),
])
def test_classify_global(module: str, name: str, safety: str) -> None:
    got, reason = classify_global(module, name)
    assert got == safety, reason
    assert (reason == "") == (safety == "safe")


def test_walk_keeps_globals_read_before_an_error() -> None:
    data = pickle.dumps({"a": 1}, protocol=2)[:-2] + b"cposix\nsystem\n\xfe"
    scan = scan_opcodes(data, "p")
    assert scan.error and "posix.system" in [g.qualname for g in scan.globals]
    assert scan.safety == "unsafe"


def test_truncated_file_cannot_be_judged(tmp_path: Path) -> None:
    path = tmp_path / "cut.pkl"
    path.write_bytes(pickle.dumps({"a": [1, 2, 3]}, protocol=2)[:-5])
    result = scan_checkpoint(path)
    (f,) = result.files
    assert f.error and f.safety == "error" and result.exit_code == 2


@pytest.mark.parametrize("content", [b"", b"hello world, not a pickle\n" * 3, b"\xff\xfe\x00"])
def test_unreadable_files_exit_2(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "junk.bin"
    path.write_bytes(content)
    result = scan_checkpoint(path)
    assert result.files[0].safety == "error" and result.exit_code == 2


def test_corrupt_zip_directory_still_scanned(tmp_path: Path, canary: Path) -> None:
    import torch

    from tests.malicious_corpus import Payload

    path = tmp_path / "broken.pth"
    torch.save({"w": torch.zeros(1), "x": Payload(print, str(canary))}, path)
    data = path.read_bytes()
    path.write_bytes(data[: data.rfind(b"PK\x01\x02") - 1])  # drop the central directory
    (f,) = scan_checkpoint(path).files
    assert "builtins.print" in [g.qualname for p in f.pickles for g in p.globals]
    assert f.safety == "unsafe"


def test_bad_safetensors_header_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes((20).to_bytes(8, "little") + b'{"w": {"dtype": "F3')
    result = scan_checkpoint(path)
    assert result.exit_code == 2 and result.files[0].kind == "safetensors"


def test_folder_and_glob(tmp_path: Path, make_checkpoint: Callable[..., Path],
                         tiny_model: object) -> None:
    make_checkpoint("torch-zip", tiny_model.state_dict(), "a")  # type: ignore[attr-defined]
    make_checkpoint("safetensors", tiny_model.state_dict(), "b")  # type: ignore[attr-defined]
    assert len(scan_checkpoint(tmp_path).files) == 2
    assert len(scan_checkpoint(str(tmp_path / "*" / "*.pth")).files) == 1


@pytest.mark.parametrize("protocol", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("layout", ["zip", "legacy", "zip-no-crc"])
def test_benign_torch_files_of_every_protocol_are_safe(tmp_path: Path, protocol: int,
                                                       layout: str) -> None:
    import numpy as np
    import torch

    state = {"w": torch.randn(3, 2), "step": 7, "rng": torch.get_rng_state(),
             "np_rng": np.random.get_state(), "np_gen": np.random.default_rng(0),
             "np_legacy": np.random.RandomState(0), "arr": np.arange(3.0), "s": np.float32(1)}
    path = tmp_path / f"{layout}-p{protocol}.pt"
    if layout == "zip-no-crc":
        torch.serialization.set_crc32_options(False)
    try:
        torch.save(state, path, pickle_protocol=protocol,
                   _use_new_zipfile_serialization=layout != "legacy")
    finally:
        torch.serialization.set_crc32_options(True)
    result = scan_checkpoint(path)
    assert result.exit_code == 0, result.to_dict()
    with open_checkpoint(path) as reader:  # inspect reads what torch reads
        assert reader.entries()


def test_ambiguous_archive_is_dangerous(tmp_path: Path) -> None:
    import warnings
    import zipfile

    import torch

    src = tmp_path / "ok.pt"
    torch.save({"w": torch.zeros(1)}, src)
    dup = tmp_path / "dup.pt"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dup, "w") as zout, \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename))
        zout.writestr("ok/data.pkl", pickle.dumps({"w": 1}))
    (f,) = scan_checkpoint(dup).files
    assert f.safety == "unsafe"
    assert any("ambiguous archive" in x.message for p in f.pickles for x in p.findings)


def test_fifo_is_refused_without_opening(tmp_path: Path) -> None:
    import os

    from ckpttools.errors import UnreadableCheckpointError
    from ckpttools.formats.registry import open_checkpoint as open_any

    fifo = tmp_path / "model.pt"
    os.mkfifo(fifo)
    result = scan_checkpoint(tmp_path)
    assert result.exit_code == 2 and "FIFO" in result.files[0].error
    for target in (fifo, tmp_path):
        with pytest.raises(UnreadableCheckpointError, match="FIFO"):
            open_any(target)


@pytest.mark.parametrize(("data", "verdict"), [
    (b"\x80\x02}N" + b"\x85" * 200_000 + b"K\x01s.", "error"),  # a key that crashes hashing
    (b"\x80\x02" + b"}(K\x01" * 600 + b"N" + b"s" * 600 + b".", "safe"),  # 600-deep dicts
    (pickle.dumps(10 ** 5000, 2), "safe"),  # > 4300 digits
])
def test_hostile_structure_is_bounded(tmp_path: Path, data: bytes, verdict: str) -> None:
    path = tmp_path / "x.pkl"
    path.write_bytes(data)
    assert scan_checkpoint(path).files[0].safety == verdict


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_dcp_bytes_items_are_scanned(tmp_path: Path, canary: Path) -> None:
    """The DCP loader hands each bytes item to torch.load(weights_only=False)."""
    import io
    import os

    import torch
    import torch.distributed.checkpoint as dcp

    from tests.malicious_corpus import Payload

    folder = tmp_path / "dcp"
    dcp.save({"w": torch.zeros(3), "extra": io.BytesIO(b"x" * 4096)}, checkpoint_id=folder)
    assert scan_checkpoint(folder).exit_code == 0
    data_file = next(folder.glob("*.distcp"))
    blob = bytearray(data_file.read_bytes())
    evil = pickle.dumps(Payload(os.system, f"touch {canary}"), protocol=2)
    start = blob.find(b"PK\x03\x04")  # the first item, "extra" (bytes items are written first)
    blob[start:start + len(evil)] = evil
    data_file.write_bytes(bytes(blob))
    (f,) = scan_checkpoint(folder).files
    names = {g.qualname for p in f.pickles for g in p.globals}
    assert f.safety == "unsafe" and names & {"os.system", "posix.system"}


def test_tensor_bytes_that_look_like_opcodes_are_not_a_pickle(tmp_path: Path) -> None:
    """A storage record starting with EXT4 or GLOBAL bytes is tensor data, not a pickle."""
    import torch

    raw = bytearray(b"\x84\x01\x02\x03cos\nsystem\n" + bytes(48))
    path = tmp_path / "w.pt"
    torch.save({"w": torch.frombuffer(raw, dtype=torch.uint8).clone()}, path)
    assert scan_checkpoint(path).exit_code == 0


def test_tensor_bytes_that_form_a_whole_pickle_or_a_gzip_header_are_tensor_data(
        tmp_path: Path) -> None:
    """Random tensor bytes of 20,000 small tensors held such records (an EXT1 pickle running to
    STOP, a gzip magic): torch.load never unpickles or unpacks a storage record."""
    import torch

    ext_pickle = b"\x80\x02\x82\x05." + bytes(59)
    gzip_head = b"\x1f\x8b\x08\x00" + bytes(60)
    tensors = {name: torch.frombuffer(bytearray(raw), dtype=torch.uint8).clone()
               for name, raw in (("ext", ext_pickle), ("gz", gzip_head))}
    path = tmp_path / "w.pt"
    torch.save(tensors, path)
    result = scan_checkpoint(path)
    assert result.exit_code == 0, result.files[0]
    assert [p.name for p in result.files[0].pickles] == ["w/data.pkl"] * len(
        result.files[0].pickles)


def test_empty_tensor_records_are_not_read_into_the_next_record(tmp_path: Path) -> None:
    # ZeRO-3 model states hold empty placeholder tensors: a zero-length record is directly
    # followed by the next record's local header, which must not be taken for its content
    import torch

    from ckpttools.ops.audit.scan import scan_checkpoint

    path = tmp_path / "model_states.pt"
    torch.save({"a": torch.empty(0), "b": torch.empty(0), "c": torch.ones(2)}, path)
    result = scan_checkpoint([str(path)])
    assert [f.safety for f in result.files] == ["safe"], result.files[0].error
