"""Reader for single ``.safetensors`` files: the header is parsed here, without torch.

Layout (https://github.com/huggingface/safetensors#format): 8 bytes little-endian header length
N, N bytes of JSON ``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__":
{str: str}}``, then the data section; offsets are relative to its start. The header is checked
as strictly as the safetensors library does (known dtypes, sizes that match, no overlaps, no
holes, no bytes missing or left over) so a file that lists cleanly also loads.
"""

from __future__ import annotations

import json
import os
from operator import itemgetter
from typing import TYPE_CHECKING, Any, NamedTuple

from ckpttools.entries import Entry, RawSource, TensorEntry, tensor_entry
from ckpttools.errors import CorruptCheckpointError, UnsupportedError
from ckpttools.formats import fileio
from ckpttools.formats.base import CheckpointReader, Format

if TYPE_CHECKING:
    import torch

# safetensors dtype -> (torch dtype name, item size in bytes)
DTYPES: dict[str, tuple[str, int]] = {
    "F64": ("float64", 8), "F32": ("float32", 4), "F16": ("float16", 2), "BF16": ("bfloat16", 2),
    "F8_E4M3": ("float8_e4m3fn", 1), "F8_E5M2": ("float8_e5m2", 1),
    "F8_E8M0": ("float8_e8m0fnu", 1),
    # not in the safetensors spec, but ckpttools' writer emits them for torch's fnuz dtypes
    "F8_E4M3FNUZ": ("float8_e4m3fnuz", 1), "F8_E5M2FNUZ": ("float8_e5m2fnuz", 1),
    "I64": ("int64", 8), "I32": ("int32", 4), "I16": ("int16", 2), "I8": ("int8", 1),
    "U64": ("uint64", 8), "U32": ("uint32", 4), "U16": ("uint16", 2), "U8": ("uint8", 1),
    "BOOL": ("bool", 1), "C64": ("complex64", 8),
}
# sub-byte dtypes safetensors knows but torch has no unpacked equivalent for
PACKED_DTYPES = frozenset({"F4", "F6_E2M3", "F6_E3M2"})
# safetensors' own limit (MAX_HEADER_SIZE in safetensors/src/tensor.rs)
MAX_HEADER_SIZE = 100_000_000


class _Tensor(NamedTuple):
    """One validated header entry: a tuple, as there can be 100k of them."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


_NEW_TUPLE = tuple.__new__  # skips NamedTuple.__new__'s Python-level argument handling
_SPAN = itemgetter(3, 4)  # (begin, end)


def read_header(path: str) -> tuple[int, dict[str, Any], int]:
    """Read and JSON-decode a safetensors header without reading tensor data.

    Returns:
        ``(header length N, decoded header, file size)``.

    Raises:
        CorruptCheckpointError: the length prefix or the JSON is unusable.
    """
    with fileio.open_binary(path) as f:
        size = fileio.file_size(f)
        prefix = f.read(8)
        if len(prefix) < 8:
            raise CorruptCheckpointError(f"{path}: {size} bytes is too short for a safetensors "
                                         "header; the file is truncated")
        n = int.from_bytes(prefix, "little")
        # checked before reading so an absurd length never allocates
        if n > size - 8:
            raise CorruptCheckpointError(f"{path}: header length {n} exceeds file size {size}; "
                                         "the file is truncated or not safetensors")
        if n > MAX_HEADER_SIZE:
            raise CorruptCheckpointError(f"{path}: header length {n} exceeds the safetensors "
                                         f"limit of {MAX_HEADER_SIZE} bytes; the file is damaged")
        raw = f.read(n)
    if _LAST_HEADER.get(raw) is not None:  # scan, then the reader: one decode of the same bytes
        return n, _LAST_HEADER[raw], size
    try:
        header = _plain_header(raw)
        if header is None:
            header = json.loads(raw, object_pairs_hook=_unique_keys)
    except _DuplicateKey as e:
        raise CorruptCheckpointError(f"{path}: header names {e.args[0]!r} twice; readers "
                                     "disagree on which entry counts, the file is damaged") from e
    except (UnicodeDecodeError, ValueError) as e:
        raise CorruptCheckpointError(f"{path}: header is not valid JSON ({_first_line(e)}); "
                                     "the file is damaged") from e
    if not isinstance(header, dict):
        raise CorruptCheckpointError(f"{path}: header is a JSON {type(header).__name__}, not an "
                                     "object; the file is damaged")
    _LAST_HEADER.clear()
    _LAST_HEADER[raw] = header
    return n, header, size


# the last header decoded and its parsed tensors, keyed by the header's bytes (never mutated)
_LAST_HEADER: dict[bytes, dict[str, Any]] = {}
_LAST_TENSORS: list[Any] = []  # [(path, header, data_size), tensors]


class _DuplicateKey(Exception):
    """A JSON object names one key twice (``json`` keeps the last, serde refuses)."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)  # one C call per object; a name given twice makes it shorter
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return out


def _plain_header(raw: bytes) -> dict[str, Any] | None:
    """The header decoded without a call per object, when it provably names no key twice;
    None when that is not proven (then ``_unique_keys`` checks each object).

    Each object of the JSON text puts one ``{`` and each of its keys one ``:`` outside
    strings; strings only add more. So when the ``{`` count equals the objects decoded at
    the top and one level below, no other object exists, and when the ``:`` count equals
    the keys those objects hold, every key the text names survived decoding: none was
    named twice (``json`` keeps the last of two). 20,000 entries: 10 ms less than a hook."""
    try:
        header = json.loads(raw)
    except ValueError:
        return None  # the checked decode reports it, duplicates first as before
    if type(header) is not dict:
        return None
    inner = [v for v in header.values() if type(v) is dict]
    if raw.count(b"{") != 1 + len(inner) or raw.count(b":") != len(header) + sum(map(len, inner)):
        return None
    return header


def _first_line(e: Exception) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def _parse_entry(path: str, name: str, info: Any) -> _Tensor:
    if not isinstance(info, dict):
        raise CorruptCheckpointError(f"{path}: header entry {name!r} is not an object; "
                                     "the file is damaged")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype not in DTYPES:
        if dtype in PACKED_DTYPES:
            raise UnsupportedError(f"{path}: tensor {name!r} has packed dtype {dtype}, which "
                                   "torch cannot hold unpacked")
        raise CorruptCheckpointError(f"{path}: tensor {name!r} has unknown dtype {dtype!r}; "
                                     "the file is damaged or from a newer safetensors")
    numel = 1
    if isinstance(shape, list):
        for d in shape:  # one loop checks and multiplies (no generator per entry)
            if type(d) is not int or d < 0:
                shape = None
                break
            numel *= d
    if not isinstance(shape, list):
        raise CorruptCheckpointError(f"{path}: tensor {name!r} has a bad shape "
                                     f"{info.get('shape')!r}; expected a list of non-negative "
                                     "integers")
    begin, end = offsets if isinstance(offsets, list) and len(offsets) == 2 else (None, None)
    if type(begin) is not int or type(end) is not int or not 0 <= begin <= end:
        raise CorruptCheckpointError(f"{path}: tensor {name!r} has bad data_offsets "
                                     f"{offsets!r}; expected [begin, end]")
    if end - begin != numel * DTYPES[dtype][1]:
        raise CorruptCheckpointError(
            f"{path}: tensor {name!r} spans {end - begin} bytes but {dtype} {shape} needs "
            f"{numel * DTYPES[dtype][1]}; the header is inconsistent")
    return _NEW_TUPLE(_Tensor, (name, dtype, tuple(shape), begin, end))


def parse_tensors(path: str, header: dict[str, Any], data_size: int) -> list[_Tensor]:
    """Validate every header entry against a data section of ``data_size`` bytes.

    Returns:
        The tensors in data (offset) order.

    Raises:
        CorruptCheckpointError: a bad entry, an overlap, a hole, or bytes missing or left over.
    """
    last = _LAST_TENSORS[0] if _LAST_TENSORS else None
    if last is not None and last[1] is header and (last[0], last[2]) == (path, data_size):
        return list(_LAST_TENSORS[1])  # scan validated this header a moment ago
    tensors = _parse_tensors(path, header, data_size)
    _LAST_TENSORS[:] = [(path, header, data_size), tuple(tensors)]
    return tensors


def _parse_tensors(path: str, header: dict[str, Any], data_size: int) -> list[_Tensor]:
    tensors = [_parse_entry(path, name, info) for name, info in header.items()
               if name != "__metadata__"]
    tensors.sort(key=_SPAN)
    expected = 0
    for t in tensors:
        if t.begin < expected:
            raise CorruptCheckpointError(f"{path}: tensor {t.name!r} overlaps the tensor before "
                                         f"it (offset {t.begin} < {expected}); the file is damaged")
        if t.begin > expected:
            raise CorruptCheckpointError(f"{path}: {t.begin - expected} unused bytes before "
                                         f"tensor {t.name!r}; the header is inconsistent")
        expected = t.end
    if expected > data_size:
        raise CorruptCheckpointError(f"{path}: tensor data needs {expected} bytes but the data "
                                     f"section holds {data_size}; the file is truncated")
    if expected < data_size:
        raise CorruptCheckpointError(f"{path}: {data_size - expected} bytes after the last "
                                     "tensor; the file is damaged or was appended to")
    return tensors


def _parse_metadata(path: str, value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise CorruptCheckpointError(f"{path}: __metadata__ must map strings to strings; "
                                     "the file is damaged")
    return dict(value)


class SafetensorsReader(CheckpointReader):
    """Reads one safetensors file: entries from the header (no torch), tensors by mmap."""

    format = Format.SAFETENSORS

    def __init__(self, path: str | os.PathLike[str], *, trust: bool = False) -> None:
        super().__init__(path, trust=trust)
        try:
            n, header, size = read_header(self.path)
        except FileNotFoundError as e:
            from ckpttools.errors import CheckpointNotFoundError

            raise CheckpointNotFoundError(f"{self.path}: no such file") from e
        self._data_start = 8 + n
        self._metadata = _parse_metadata(self.path, header.get("__metadata__"))
        self._tensors = {t.name: t for t in parse_tensors(self.path, header, size - 8 - n)}
        self._tensor_entries: tuple[TensorEntry, ...] | None = None
        self._handle: Any = None

    def tensor_entries(self) -> tuple[TensorEntry, ...]:
        if self._tensor_entries is None:
            where = os.path.basename(self.path)
            self._tensor_entries = tuple([
                tensor_entry(t.name, DTYPES[t.dtype][0], t.shape, t.end - t.begin, where)
                for t in self._tensors.values()])
        return self._tensor_entries

    def entries(self) -> tuple[Entry, ...]:
        view = self._manifest_view(self.tensor_entries())
        return view[1] if view else self.tensor_entries()

    def tree(self) -> Any:
        view = self._manifest_view(self.tensor_entries())
        return view[0] if view else super().tree()

    def metadata(self) -> dict[str, str]:
        return dict(self._metadata)

    def raw_source(self, key: str) -> RawSource | None:
        t = self._tensors[key]
        return RawSource(self.path, self._data_start + t.begin, t.end - t.begin)

    def load(self, key: str) -> torch.Tensor:
        t = self._tensors[key]  # KeyError for an unknown key, as the interface says
        if t.dtype in ("F8_E4M3FNUZ", "F8_E5M2FNUZ"):
            return self._load_direct(t)  # safetensors itself does not know these
        local = fileio.local_path(self.path)
        if local is None:
            return self._load_direct(t)  # a URL: the tensor's bytes by one ranged request
        from safetensors import SafetensorError, safe_open

        try:
            if self._handle is None:
                self._handle = safe_open(local, framework="pt", device="cpu")
            return self._handle.get_tensor(key)
        except SafetensorError as e:
            raise CorruptCheckpointError(f"{self.path}: safetensors cannot load {key!r} "
                                         f"({_first_line(e)}); the file is damaged") from e

    def _load_direct(self, t: _Tensor) -> torch.Tensor:
        import torch

        dtype = getattr(torch, DTYPES[t.dtype][0])
        if t.end == t.begin:
            return torch.empty(t.shape, dtype=dtype)
        with fileio.open_binary(self.path) as f:
            f.seek(self._data_start + t.begin)
            data = bytearray(f.read(t.end - t.begin))
        return torch.frombuffer(data, dtype=torch.uint8).view(dtype).reshape(t.shape)

    def close(self) -> None:
        self._handle = None


def user_metadata(reader: CheckpointReader) -> tuple[tuple[str, str], ...]:
    """A safetensors file's own metadata: what its writer put there beside ``format`` and the
    ckpttools manifest (a kohya LoRA's ``ss_*`` settings, a model card's fields); () for other
    formats."""
    from ckpttools.formats.manifest import MANIFEST_KEY

    if reader.format is not Format.SAFETENSORS:
        return ()
    return tuple((k, v) for k, v in reader.metadata().items() if k not in ("format", MANIFEST_KEY))
