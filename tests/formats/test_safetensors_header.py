"""A safetensors header is decoded without the duplicate-key hook only when its ``{`` and ``:``
counts prove that no key is named twice; a key named twice is refused either way."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ckpttools.errors import CorruptCheckpointError
from ckpttools.formats import safetensors_file as sf


def _saved(tmp_path: Path, metadata: dict[str, str] | None = None) -> Path:
    path = tmp_path / "model.safetensors"
    save_file({"a.weight": torch.zeros(2), "b.bias": torch.ones(3)}, str(path), metadata=metadata)
    return path


def _header(path: Path) -> bytes:
    blob = path.read_bytes()
    return blob[8:8 + int.from_bytes(blob[:8], "little")]


def _with_header(path: Path, header: bytes) -> Path:
    """The file with its header replaced (the data section as it was)."""
    blob = path.read_bytes()
    n = int.from_bytes(blob[:8], "little")
    out = path.with_name("edited.safetensors")
    out.write_bytes(len(header).to_bytes(8, "little") + header + blob[8 + n:])
    return out


def test_a_plain_header_skips_the_hook_and_reads_the_same(tmp_path: Path) -> None:
    raw = _header(_saved(tmp_path))
    fast = sf._plain_header(raw)
    assert fast is not None
    assert fast == json.loads(raw, object_pairs_hook=sf._unique_keys)
    assert list(fast) == list(json.loads(raw))


def test_strings_with_braces_or_colons_take_the_checked_decode(tmp_path: Path) -> None:
    path = _saved(tmp_path, {"format": "pt", "note": "lr: 0.1 {warmup}"})
    assert sf._plain_header(_header(path)) is None
    with sf.SafetensorsReader(str(path)) as reader:
        assert reader.metadata()["note"] == "lr: 0.1 {warmup}"
        assert [e.key for e in reader.entries()] == ["a.weight", "b.bias"]


@pytest.mark.parametrize("where", ["top", "entry", "nested"])
def test_a_key_named_twice_is_refused(tmp_path: Path, where: str) -> None:
    path = _saved(tmp_path)
    raw = _header(path).decode()
    first = json.dumps(json.loads(raw)["a.weight"], separators=(",", ":"))
    edited = {
        "top": raw[:-1] + ',"a.weight":' + first + "}",
        "entry": raw.replace('"dtype":"F32"', '"dtype":"F32","dtype":"F32"', 1),
        "nested": raw.replace('"dtype":"F32"', '"dtype":"F32","x":[{"k":1,"k":1}]', 1),
    }[where]
    assert sf._plain_header(edited.encode()) is None
    name = {"top": "a.weight", "entry": "dtype", "nested": "k"}[where]
    with pytest.raises(CorruptCheckpointError, match=f"names '{name}' twice"):
        sf.SafetensorsReader(str(_with_header(path, edited.encode())))
