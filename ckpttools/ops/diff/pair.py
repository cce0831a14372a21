"""``diff A B``: two checkpoints of any formats, compared key by key and value by value.

Tensor pairs are streamed one at a time, in chunks: when both readers expose a tensor's bytes as
one file range (``raw_source``) the bytes are read in pieces and never mapped whole, so memory
stays near one chunk, not the checkpoint; otherwise each pair is loaded with ``reader.load``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ckpttools.entries import Entry, ObjectEntry, RawSource, TensorEntry
from ckpttools.formats import fileio
from ckpttools.formats.base import CheckpointReader
from ckpttools.ops.diff.pair_result import CheckpointDiffResult, ObjectComparison, TensorComparison
from ckpttools.ops.tensor_stats import one_thread

if TYPE_CHECKING:
    import torch

# Bytes per side per step; float64 temporaries make the working set ~20x this.
CHUNK_BYTES = 2 << 20
# Elements per side per step when reading raw bytes into reused buffers: larger steps mean
# fewer thread barriers per byte; float64 work copies make ~3 x 8 bytes per element at most.
RAW_CHUNK_ITEMS = 2 << 20
ITEMSIZE = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4,
            "int16": 2, "int8": 1, "uint8": 1, "bool": 1, "complex64": 8, "complex128": 16,
            "float8_e4m3fn": 1, "float8_e5m2": 1, "uint16": 2, "uint32": 4, "uint64": 8}


@dataclass
class _Stats:
    bitwise: bool = True
    max_abs: float = 0.0
    max_rel: float = 0.0
    close: bool = True
    sq_diff: float = 0.0  # sum of (B - A)^2, for the relative L2 change
    sq_a: float = 0.0  # sum of A^2, over every chunk (equal chunks count toward ||A|| too)

    @property
    def rel_l2(self) -> float:
        if self.sq_diff == 0.0:
            return 0.0
        return math.sqrt(self.sq_diff / self.sq_a) if self.sq_a > 0 else math.inf

    def add_equal(self, a: torch.Tensor) -> None:
        """A chunk equal on both sides: it adds nothing to the change, only to ``||A||``."""
        self.sq_a += _sum_squares(a)

    def add(self, a: torch.Tensor, b: torch.Tensor, atol: float, rtol: float,
            owned: bool = False) -> None:
        """Fold one chunk pair into the statistics.

        Args:
            owned: ``a`` and ``b`` are scratch buffers the caller rewrites next; they are
                overwritten here (fewer passes and no temporaries).
        """
        import torch

        if a.dtype.is_complex or b.dtype.is_complex:
            a, b = (torch.view_as_real(t.to(torch.complex128)) for t in (a, b))
            owned = True
        # float32 holds every float16/bfloat16/float32 difference well enough to rank it
        low = {torch.float32, torch.float16, torch.bfloat16}
        work = torch.float32 if a.dtype in low and b.dtype in low else torch.float64
        x, y = a.to(work), b.to(work)
        owned = owned or (x is not a and y is not b)
        integral = not (a.is_floating_point() or b.is_floating_point())
        diff = _integer_diff(a, b, x, y) if integral else torch.sub(x, y).abs_()
        if diff.numel() == 0:
            return
        top = float(diff.max())
        if not math.isfinite(top):
            self._add_nonfinite(x, y, atol, rtol)
            return
        flat_diff, flat_x = diff.reshape(-1), x.reshape(-1)
        self.sq_diff += float(torch.dot(flat_diff, flat_diff))
        self.sq_a += float(torch.dot(flat_x, flat_x))
        self.max_abs = max(self.max_abs, top)
        if top == 0:
            return  # equal values (0.0 and -0.0): nothing relative, close at any tolerance
        ya = y.abs_() if owned else y.abs()
        scale = torch.maximum(x.abs_() if owned else x.abs(), ya, out=None if not owned else x)
        scale.clamp_min_(torch.finfo(work).tiny)
        self.max_rel = max(self.max_rel, float(torch.div(diff, scale, out=scale).max()))
        if atol == 0 and rtol == 0:
            self.close = False  # some value differs
        elif self.close:
            # torch.isclose's rule, |x - y| <= atol + rtol * |y|, without its extra passes
            self.close = bool((diff <= ya.mul_(rtol).add_(atol)).all())

    def _add_nonfinite(self, x: torch.Tensor, y: torch.Tensor, atol: float, rtol: float) -> None:
        import torch

        both_nan = torch.isnan(x) & torch.isnan(y)
        same = (x == y) | both_nan  # equal infinities and NaN pairs differ by nothing
        diff = torch.where(same, 0.0, (x - y).abs())
        diff = torch.where(torch.isnan(diff), math.inf, diff)  # NaN on one side only
        self.max_abs = max(self.max_abs, float(diff.max()))
        self.sq_diff = math.inf
        scale = torch.maximum(x.abs(), y.abs())
        rel = torch.where(scale > 0, diff / scale, torch.where(diff > 0, math.inf, 0.0))
        self.max_rel = max(self.max_rel, float(torch.nan_to_num(rel, nan=math.inf).max()))
        self.close = self.close and bool(torch.isclose(x, y, rtol=rtol, atol=atol,
                                                       equal_nan=True).all())


def _integer_diff(a: torch.Tensor, b: torch.Tensor, x: torch.Tensor, y: torch.Tensor
                  ) -> torch.Tensor:
    """``|a - b|`` of integer tensors, exact where float64 is not: it rounds integers past
    2**53, so 2**62 and 2**62 + 1 (seeds, hashes, ids) would compare equal."""
    import torch

    rough = torch.sub(x, y).abs_()
    # uint64 reinterpreted as int64: the difference modulo 2**64 is exact when it is small
    ai, bi = (t.view(torch.int64) if t.dtype == torch.uint64 else t.to(torch.int64)
              for t in (a, b))
    return torch.where(rough < 2.0 ** 62, torch.sub(ai, bi).abs_().to(torch.float64), rough)


def _sum_squares(t: torch.Tensor) -> float:
    import torch

    if t.dtype.is_complex:
        t = torch.view_as_real(t.to(torch.complex128))
    x = t.reshape(-1)
    if x.dtype not in (torch.float32, torch.float64):
        x = x.to(torch.float32 if x.is_floating_point() else torch.float64)
    return float(torch.dot(x, x))


def _read_into(f: Any, view: memoryview) -> None:
    got = 0
    while got < len(view):
        n = f.readinto(view[got:])
        if not n:
            raise EOFError(f"{f.name}: file ends inside a tensor")
        got += n


def _fill(src: RawSource, view: memoryview, size: int) -> Iterator[int]:
    """Fill ``view`` with ``src``'s bytes ``size`` at a time, yielding each chunk's length: read
    in turn from a local file, several ranges in flight from a URL."""
    spans = [(start, min(size, src.length - start)) for start in range(0, src.length, size or 1)]
    if fileio.is_url(src.path):
        from ckpttools.formats import remote

        ranges = [(src.offset + start, src.offset + start + n) for start, n in spans]
        for (_, n), data in zip(spans, remote.stream_ranges(src.path, ranges)):
            if len(data) != n:
                raise EOFError(f"{src.path}: the server sent {len(data)} of {n} bytes")
            view[:n] = data
            yield n
        return
    with open(src.path, "rb", buffering=0) as f:
        f.seek(src.offset)
        for _, n in spans:
            _read_into(f, view[:n])
            yield n


def _compare_raw(a: RawSource, b: RawSource, dtype: str, atol: float, rtol: float,
                 advance: Callable[[int], None]) -> _Stats:
    """Both tensors' bytes read into two reused buffers, compared chunk by chunk (no
    allocation per chunk: fresh pages cost more than the comparison)."""
    import torch

    stats = _Stats()
    tdtype = getattr(torch, dtype)
    item = ITEMSIZE[dtype]
    size = min(a.length, RAW_CHUNK_ITEMS * item)
    size -= size % item
    bufs = bytearray(size), bytearray(size)
    views = memoryview(bufs[0]), memoryview(bufs[1])
    for n, _ in zip(_fill(a, views[0], size), _fill(b, views[1], size)):
        advance(2 * n)
        if (bufs[0] == bufs[1]) if n == size else torch.equal(
                *(torch.frombuffer(buf, dtype=torch.uint8, count=n) for buf in bufs)):
            stats.add_equal(torch.frombuffer(bufs[0], dtype=tdtype, count=n // item))
            continue
        stats.bitwise = False
        stats.add(torch.frombuffer(bufs[0], dtype=tdtype, count=n // item),
                  torch.frombuffer(bufs[1], dtype=tdtype, count=n // item), atol, rtol,
                  owned=True)
    return stats


def _quantization(t: torch.Tensor) -> tuple[Any, ...]:
    """A quantized tensor's scheme and parameters (its values are ``int_repr`` under these)."""
    import torch

    if t.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric):
        return (t.qscheme(), t.q_scale(), t.q_zero_point())
    return (t.qscheme(), t.q_per_channel_axis(), t.q_per_channel_scales().tolist(),
            t.q_per_channel_zero_points().tolist())


def _compare_quantized(ta: torch.Tensor, tb: torch.Tensor, atol: float, rtol: float,
                       advance: Callable[[int], None]) -> _Stats:
    """Quantized tensors compared by their real values; bitwise equal only with the same
    integers under the same scheme, scales and zero points (a byte view of them crashes)."""
    import torch

    same = (ta.is_quantized and tb.is_quantized and ta.dtype == tb.dtype
            and _quantization(ta) == _quantization(tb) and torch.equal(ta.int_repr(), tb.int_repr()))
    stats = _compare_loaded(*(t.dequantize() if t.is_quantized else t for t in (ta, tb)),
                            atol, rtol, advance)
    stats.bitwise = stats.bitwise and same
    return stats


@functools.cache  # once per dtype, not once per tensor pair
def _arithmetic(dtype: torch.dtype) -> bool:
    """Whether torch can convert ``dtype``'s values to compute with them (not so for packed
    ``float4_e2m1fn_x2`` or the ``bits*`` dtypes: only their bytes can be compared)."""
    import torch

    try:
        torch.zeros(1, dtype=dtype).to(torch.float64)
    except (NotImplementedError, RuntimeError):
        return False
    return True


def _compare_bytes(ta: torch.Tensor, tb: torch.Tensor, advance: Callable[[int], None]) -> _Stats:
    """Tensors of a dtype without arithmetic: equal bytes, or different with no measure of
    how far apart (NaN distances)."""
    import torch

    advance(ta.numel() * ta.element_size() + tb.numel() * tb.element_size())
    same = ta.dtype == tb.dtype and torch.equal(ta.contiguous().view(torch.uint8),
                                                tb.contiguous().view(torch.uint8))
    far = 0.0 if same else math.nan
    return _Stats(bitwise=same, max_abs=far, max_rel=far, close=same,
                  sq_diff=0.0 if same else math.nan, sq_a=1.0)


def _compare_loaded(ta: torch.Tensor, tb: torch.Tensor, atol: float, rtol: float,
                    advance: Callable[[int], None]) -> _Stats:
    import torch

    if ta.is_quantized or tb.is_quantized:
        return _compare_quantized(ta, tb, atol, rtol, advance)
    if not (_arithmetic(ta.dtype) and _arithmetic(tb.dtype)):
        return _compare_bytes(ta, tb, advance)
    stats = _Stats(bitwise=ta.dtype == tb.dtype)
    fa, fb = ta.reshape(-1), tb.reshape(-1)
    step = max(1, CHUNK_BYTES // max(ta.element_size(), 1))
    for start in range(0, fa.numel(), step):
        ca, cb = fa[start:start + step], fb[start:start + step]
        advance(ca.numel() * ca.element_size() + cb.numel() * cb.element_size())
        if ca.dtype == cb.dtype and torch.equal(ca.contiguous().view(torch.uint8),
                                                cb.contiguous().view(torch.uint8)):
            stats.add_equal(ca)
            continue
        stats.bitwise = False
        stats.add(ca, cb, atol, rtol)
    return stats


def compare_tensor_pair(ra: CheckpointReader, rb: CheckpointReader, ea: TensorEntry,
                        eb: TensorEntry, *, atol: float, rtol: float, name: str = "",
                        on_progress: Callable[[int], None] = lambda n: None) -> TensorComparison:
    """Compare one tensor of ``ra`` with one of ``rb`` (same shape), streaming its bytes."""
    if "meta" in (ea.device, eb.device):  # saved without data: nothing to compare, say so
        return TensorComparison(name or ea.key, ea.dtype, eb.dtype, False, 0.0, 0.0, True,
                                compared=False)
    sa, sb = ra.raw_source(ea.key), rb.raw_source(eb.key)
    with one_thread():
        if (sa is not None and sb is not None and ea.dtype == eb.dtype and ea.dtype in ITEMSIZE
                and sa.length == sb.length == ea.nbytes):
            stats = _compare_raw(sa, sb, ea.dtype, atol, rtol, on_progress)
        else:
            stats = _compare_loaded(ra.load(ea.key), rb.load(eb.key), atol, rtol, on_progress)
    return TensorComparison(name or ea.key, ea.dtype, eb.dtype, stats.bitwise, stats.max_abs,
                            stats.max_rel, stats.close, stats.rel_l2)


def diff_checkpoints(a: CheckpointReader, b: CheckpointReader, *, atol: float = 0.0,
                     rtol: float = 0.0,
                     on_progress: Callable[[int], None] = lambda n: None) -> CheckpointDiffResult:
    """Compare two checkpoints: keys, shapes, dtypes, tensor values and non-tensor values.

    Args:
        a: the first checkpoint.
        b: the second checkpoint (any format).
        atol: absolute tolerance of the ``allclose`` test.
        rtol: relative tolerance of the ``allclose`` test.
        on_progress: called with the number of bytes compared, for a progress bar.

    Returns:
        The comparison; ``ok`` when everything matches within tolerance.

    Example:
        >>> with open_checkpoint("a.pth") as a, open_checkpoint("a.safetensors") as b:
        ...     diff_checkpoints(a, b).ok
        True
    """
    ea: dict[str, Entry] = {e.key: e for e in a.entries()}
    eb: dict[str, Entry] = {e.key: e for e in b.entries()}
    ea, eb, note = _align_state_dicts(a, b, ea, eb)
    shapes, kinds, tensors, objects = [], [], [], []
    for key, x in ea.items():
        y = eb.get(key)
        if y is None:
            continue
        if isinstance(x, TensorEntry) and isinstance(y, TensorEntry):
            if x.shape != y.shape:
                shapes.append((key, x.shape, y.shape))
            else:
                tensors.append(compare_tensor_pair(a, b, x, y, atol=atol, rtol=rtol, name=key,
                                                   on_progress=on_progress))
        elif isinstance(x, ObjectEntry) and isinstance(y, ObjectEntry):
            objects.append(ObjectComparison(key, x.value, y.value))
        else:
            kinds.append(key)
    structure, why_not = compare_structure(a, b) if not note else ((), "")
    note = "; ".join(n for n in (note, why_not) if n)
    return CheckpointDiffResult(
        a.path, b.path, tuple(k for k in ea if k not in eb), tuple(k for k in eb if k not in ea),
        tuple(shapes), tuple(kinds), tuple(tensors), tuple(objects), atol, rtol, note,
        structure)


def compare_structure(a: CheckpointReader, b: CheckpointReader) -> tuple[tuple[str, ...], str]:
    """The first difference of the two object graphs' structure (container types, key order,
    attributes such as ``_metadata``), and a note when it cannot be compared."""
    from ckpttools.errors import CkptError
    from ckpttools.ops.object_graph import GraphComparison, reader_graph

    try:
        ga, gb = reader_graph(a), reader_graph(b)
    except CkptError:  # a value the graph cannot encode (a class instance): keys still compared
        return (), "structure not compared: a value needs pickle to be described"
    if ga is None or gb is None:
        side = "A" if ga is None else "B"
        return (), (f"structure not compared: {side} ({(a if ga is None else b).format.value}) "
                    "keeps no container types or _metadata")
    found = GraphComparison(ga[1], gb[1], ("in A", "in B"), structure_only=True) \
        .first_difference(ga[0], gb[0])
    return ((found,) if found else ()), ""


def _align_state_dicts(a: CheckpointReader, b: CheckpointReader, ea: dict[str, Entry],
                       eb: dict[str, Entry]) -> tuple[dict[str, Entry], dict[str, Entry], str]:
    """When the two share no tensor key but their state_dicts do (a training checkpoint against
    the weights extracted from it), compare the state_dicts, keyed as the reader knows them."""
    from ckpttools.ops.state_dict import find_state_dict

    if any(isinstance(e, TensorEntry) and k in eb for k, e in ea.items()):
        return ea, eb, ""
    va, vb = find_state_dict(a), find_state_dict(b)
    if not va.prefix and not vb.prefix:
        return ea, eb, ""
    sa = {e.key: dataclasses.replace(e, key=va.source_key(e.key)) for e in va.entries}
    sb = {e.key: dataclasses.replace(e, key=vb.source_key(e.key)) for e in vb.entries}
    if not set(sa) & set(sb):
        return ea, eb, ""
    where = lambda v: f"'{v.prefix}'" if v.prefix else "the top level"  # noqa: E731
    return (sa, sb, f"no common keys: compared the state_dicts (A: {where(va)}, "
            f"B: {where(vb)})")
