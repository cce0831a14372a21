"""Format detection from content: every format, misleading extensions, foreign model files."""

from __future__ import annotations

import pickle
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from ckpttools.errors import UnknownFormatError, UnsupportedError
from ckpttools.formats.base import Format
from ckpttools.formats.registry import FORMATS, detect_format, open_checkpoint
from tests.conftest import write_checkpoint

STATE = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.ones(2)}


def test_formats_dict_covers_every_format() -> None:
    assert set(FORMATS) == set(Format)


# DeepSpeed ZeRO detection runs on real ZeRO runs in tests/frameworks/test_deepspeed.py
_WRITABLE = [f for f in Format if f is not Format.DEEPSPEED]


@pytest.mark.parametrize("fmt", _WRITABLE, ids=[f.value for f in _WRITABLE])
def test_detects_every_format(tmp_path: Path, fmt: Format) -> None:
    path = write_checkpoint(fmt.value, dict(STATE), tmp_path)
    assert detect_format(path) is fmt
    assert detect_format(str(path)) is fmt


@pytest.mark.parametrize("writer, name, fmt", [
    ("safetensors", "x.pth", Format.SAFETENSORS),
    ("torch-zip", "x.safetensors", Format.TORCH_ZIP),
    ("torch-legacy", "x.safetensors", Format.TORCH_LEGACY),
    ("torch-zip", "noext", Format.TORCH_ZIP),
], ids=["safetensors-as-pth", "zip-as-safetensors", "legacy-as-safetensors", "no-extension"])
def test_content_wins_over_extension(tmp_path: Path, writer: str, name: str, fmt: Format) -> None:
    written = write_checkpoint(writer, dict(STATE), tmp_path / "w")
    path = tmp_path / name
    written.rename(path)
    assert detect_format(path) is fmt
    with open_checkpoint(path) as reader:
        assert torch.equal(reader.load("w"), STATE["w"])


def test_format_argument_skips_detection(tmp_path: Path) -> None:
    path = write_checkpoint("safetensors", dict(STATE), tmp_path)
    with open_checkpoint(path, format=Format.SAFETENSORS) as reader:
        assert reader.format is Format.SAFETENSORS


def torchscript_file(dest: Path) -> Path:
    path = dest / "scripted.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    return path


def npy_file(dest: Path) -> Path:
    path = dest / "array.npy"
    np.save(path, np.arange(4.0))
    return path


def npz_file(dest: Path) -> Path:
    path = dest / "arrays.npz"
    np.savez(path, a=np.arange(3), b=np.ones(2))
    return path


def _gguf_string(text: str) -> bytes:
    return struct.pack("<Q", len(text)) + text.encode()


def gguf_file(dest: Path) -> Path:
    """A GGUF v3 header with no tensors and one key, per
    https://github.com/ggml-org/ggml/blob/master/docs/gguf.md: magic, uint32 version,
    uint64 tensor_count, uint64 metadata_kv_count, then key (gguf string), uint32 value type
    (8 = string) and the value."""
    path = dest / "model.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1)
                     + _gguf_string("general.architecture") + struct.pack("<I", 8)
                     + _gguf_string("llama"))
    return path


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (wire type 2); payloads here are under 128 bytes."""
    return bytes([number << 3 | 2, len(payload)]) + payload


def onnx_file(dest: Path, name: str = "model.onnx") -> Path:
    """A minimal onnx.ModelProto in protobuf wire format, as torch.onnx.export starts one
    (https://github.com/onnx/onnx/blob/main/onnx/onnx.proto): field 1 ir_version (varint 8),
    field 2 producer_name "pytorch", field 3 producer_version, field 7 graph (a GraphProto
    with field 2 name), field 8 opset_import (an OperatorSetIdProto with field 2 version 17)."""
    path = dest / name
    path.write_bytes(bytes([1 << 3, 8]) + _field(2, b"pytorch") + _field(3, b"2.13.0")
                     + _field(7, _field(2, b"main_graph")) + _field(8, bytes([2 << 3, 17])))
    return path


FOREIGN: list[tuple[Callable[[Path], Path], str]] = [
    (torchscript_file, "TorchScript"),
    (npy_file, "numpy .npy"),
    (npz_file, "numpy .npz"),
    (gguf_file, "GGUF"),
    (onnx_file, "ONNX"),
    (lambda d: onnx_file(d, "exported.bin"), "ONNX"),
]


@pytest.mark.parametrize("build, kind", FOREIGN,
                         ids=["torchscript", "npy", "npz", "gguf", "onnx", "onnx-as-bin"])
def test_foreign_model_files_are_named(tmp_path: Path, build: Callable[[Path], Path],
                                       kind: str) -> None:
    path = build(tmp_path)
    with pytest.raises(UnsupportedError, match=f"{kind}.*not a PyTorch checkpoint") as info:
        detect_format(path)
    assert info.value.exit_code == 2
    assert path.name in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(UnsupportedError):
        open_checkpoint(path)


@pytest.mark.parametrize("content", [
    b"hello world, this is text\n",
    pickle.dumps({"a": 1}, protocol=4),
    bytes(range(256)),
], ids=["text", "plain-pickle", "binary"])
def test_unknown_bytes_list_the_formats_tried(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "thing.pth"
    path.write_bytes(content)
    with pytest.raises(UnknownFormatError, match="tried .*torch-zip.*safetensors") as info:
        detect_format(path)
    assert "\n" not in str(info.value)
