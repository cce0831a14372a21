"""Cause rules that read shapes: a head of another size, another depth or width of the model."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

from ckpttools.ops.diagnose.evidence import ShapeMismatch
from ckpttools.ops.diagnose.evidence import (
    Evidence, Finding, numel, packed_4bit, segments, transposed_output, zero_count_keys)
from ckpttools.ops.diagnose.count_pairs import UNRELATED_HEAD, one_count, per_level_rows
from ckpttools.ops.diagnose.fed_input import concatenated_input
from ckpttools.ops.diagnose.layer_roles import (
    CODE_READING, PART_WIDTH, another_kind, bias_of_swapped, in_moved_modules, same_part_added)
from ckpttools.ops.diagnose.hidden_widths import WIDTH_HEAD, WIDTH_READING, hidden_width_sizes
from ckpttools.ops.diagnose.shape_readings import (
    one_count_keys, recurrent, reshaped, round_sizes, width_from_norms_alone)

_HEAD = re.compile(r"(^|[._])(head|heads|[a-z]+_head|fc|classifier|cls|logits|class\w*|score|lm_head|output"
                   r"|embed_tokens|word_embeddings|wte|tok_embeddings|tok_emb|shared|vocab\w*"
                   r"|embeddings|decoder|_proposal_\w+|bbox_pred|cls_score)([._]|$)")
_VOCAB = re.compile(r"embed|vocab|lm_head|shared|wte|tok_")
_LEVELS = re.compile(r"level_embed|scale_embed|num_levels|stage_embed")
_NORM = re.compile(r"(running_mean|running_var|(norm|bn|ln|gn)\w*\.(weight|bias))$")
_POS = re.compile(r"pos_embed|position_embedding|embed_positions|pos\d*_emb|positional_embedding|absolute_pos"
                  r"|relative_position_bias_table|position_embeddings|rel_pos"
                  # Swin V2's continuous position bias: a table of log-spaced relative coordinates
                  r"|relative_coords?_(table|log)|relative_coordinates\w*")


def _length_table(m: ShapeMismatch) -> bool:
    """A learned ``[1, N, D]`` table added to the input (positions, frames: ``time_embed``,
    ``pos_encoder.pe``) whose length N differs: another input length. A layer's weight has no
    leading singleton axis; tokens put beside the input (``temporal_token``, one per class) may
    count classes."""
    c, s = m.checkpoint_shape, m.model_shape
    return (len(c) == len(s) == 3 and c[0] == s[0] == 1 and c[2] == s[2] > 1 and c[1] != s[1]
            and not m.key.endswith(("weight", "bias")) and "token" not in m.key.rpartition(".")[2])


def _positional(m: ShapeMismatch) -> bool:
    return bool(_POS.search(m.key)) or _length_table(m)


def head_named(key: str) -> bool:
    """The key sits in an output head or vocabulary table by the usual names (``fc``,
    ``classifier``, ``bbox_head``, ``lm_head``, ``embed_tokens``)."""
    return bool(_HEAD.search(key) or _VOCAB.search(key))


# The first layer of a network by the usual names: its rows are the model's width, never a count.
_INPUT_LAYER = re.compile(r"^(module\.)?((backbone|model)\.)*(conv1|conv_first|conv0|conv_in|stem|stem(\.conv\w*)+|embed"
                          r"|patch_embed(\.proj)?|input\w*|inc|first\w*"
                          r"|(encoder|features|layers|body|net|model|backbone)\.0)$")


def _input_layer(m: ShapeMismatch, mm: list[ShapeMismatch]) -> bool:
    """``m`` belongs to the layer that reads the input (image channels, or a first-layer name).

    A convolution over 1-4 channels with a spatial kernel reads the image: its output channels
    are the network's width, whatever the module is called (EDSR calls its stem ``head``).
    """
    module = m.key.rpartition(".")[0]
    weights = [w for w in mm if w.key.rpartition(".")[0] == module and len(w.model_shape) == 4]
    reads_image = any(w.model_shape[1] <= 4 and w.model_shape[2] * w.model_shape[3] > 1
                      and w.model_shape[1] == w.checkpoint_shape[1] for w in weights)
    return reads_image or bool(_INPUT_LAYER.match(module))


def fed_inputs(ev: Evidence) -> list[ShapeMismatch]:
    """Every size mismatch shown, when each is an inner layer reading a concatenation with a
    changed count (:func:`~ckpttools.ops.diagnose.fed_input.concatenated_input`); else empty."""
    mm = list(ev.mismatched)
    fed = [m for m in mm if concatenated_input(m) and not _input_layer(m, mm)]
    return fed if fed and len(fed) == len(mm) else []


def _real(ev: Evidence) -> list[ShapeMismatch]:
    """Mismatches between two real tensors of other sizes.

    Not empty or one-element placeholders in the checkpoint (partitioned saves), not the same
    elements in another layout (transposed, permuted or reshaped tensors), not a 4-bit packed
    column (quantized). A layer built with a count of zero (``[0, 2048]``) is a real size.
    """
    zero, one = zero_count_keys(ev.mismatched), one_count_keys(ev.mismatched)
    return [m for m in ev.mismatched
            if (numel(m.checkpoint_shape) > 1 or m.key in one)
            and (numel(m.model_shape) > 0 or m.key in zero)
            and numel(m.checkpoint_shape) != numel(m.model_shape)
            and not packed_4bit(m.checkpoint_shape, m.model_shape)]


def _one_axis(m: ShapeMismatch) -> int | None:
    """The only axis on which the two shapes differ, if exactly one does."""
    c, s = m.checkpoint_shape, m.model_shape
    diff = [i for i, (a, b) in enumerate(zip(c, s)) if a != b] if len(c) == len(s) else []
    return diff[0] if len(diff) == 1 else None


def _count_axis(m: ShapeMismatch) -> bool:
    """The one differing axis holds a count (rows: classes, vocabulary, tokens), not features.

    Features sit on the last axis (embeddings, tokens) and on a weight's input axis (axis 1 of
    Linear and Conv weights); a change there is another width, not another number of classes.
    """
    axis, n = _one_axis(m), len(m.model_shape)
    if axis is None or recurrent(m.key):
        return False
    return n == 1 or (axis < n - 1 and not (axis == 1 and m.key.endswith("weight")))


def _shard_factor(mm: list[ShapeMismatch]) -> tuple[int, str] | None:
    """``(k, side)`` when every tensor differs on one axis by the same factor k; ``side`` (model
    or checkpoint) holds the 1/k piece."""
    factors = set()
    for m in mm:
        axis = _one_axis(m)
        if axis is None:
            return None
        c, s = m.checkpoint_shape[axis], m.model_shape[axis]
        if min(c, s) == 0 or max(c, s) % min(c, s):
            return None
        factors.add((max(c, s) // min(c, s), "model" if s < c else "checkpoint"))
    k, side = factors.pop() if len(factors) == 1 else (0, "")
    return (k, side) if k in (2, 4, 8, 16, 32, 64) else None


def _tensor_parallel(mm: list[ShapeMismatch]) -> bool:
    """Megatron-style tensor parallelism: matrices cut on their output axis (column-parallel) and
    others on their input axis (row-parallel), all by the same factor. A width change cuts inner
    matrices on both axes, a new head or fewer key/value heads on one axis only."""
    axes = {_one_axis(m) for m in mm if len(m.model_shape) == 2}
    return _shard_factor(mm) is not None and {0, 1} <= axes and not _norm_resized(mm)


def _norm_resized(mm: list[ShapeMismatch]) -> bool:
    """A norm layer changed size (running stats, or a 1-D weight whose layer has no matrix among
    the mismatches): the features are wider or narrower. Tensor parallelism replicates norms.
    Sizes under 8 on both sides are no feature width (a norm over 2 or 3 features): a count."""
    matrices = {m.key.rpartition(".")[0] for m in mm if len(m.model_shape) >= 2}
    return any(len(m.model_shape) == 1 and ("running_" in m.key or m.key.rpartition(".")[0] not in matrices)
               and max(m.model_shape[0], m.checkpoint_shape[0]) >= 8 for m in mm)


def _hidden_layer(mm: list[ShapeMismatch]) -> bool:
    """Every tensor is layer 0 of a box, mask or regression head's Sequential (``bbox_head.0.weight``):
    it feeds the layers after it, and such heads do not output one row per class, so its rows are
    a hidden width. A classifier's ``fc.0`` may be its only layer: not this."""
    return all(re.search(r"(bbox|box|reg|mask|seg|kpt|keypoint|ctr|centerness)\w*\.0\.(weight|bias)$",
                         m.key) for m in mm)


def _inner_layer(mm: list[ShapeMismatch], ev: Evidence) -> bool:
    """Every tensor is a layer of a Sequential that is not its last: the text names a later layer
    of it (``feats.2.*`` missing), or it is layer 0 of a features/hidden Sequential. A head is the
    last layer of its module; an inner layer's rows feed the next layer, so they are a width."""
    others = ev.missing + ev.unexpected

    def inner(m: ShapeMismatch) -> bool:
        hit = re.fullmatch(r"(.+)\.(\d+)\.[A-Za-z_]+", m.key)
        if hit is None:
            return False
        seq, i = hit.group(1), int(hit.group(2))
        later = (re.match(rf"{re.escape(seq)}\.(\d+)\.", k) for k in others)
        return (any(n is not None and int(n.group(1)) > i for n in later)
                or (i == 0 and bool(re.search(r"feat|hidden", seq.rpartition(".")[2], re.I))))
    return bool(mm) and all(inner(m) for m in mm)


def _not_head(mm: list[ShapeMismatch], ev: Evidence) -> bool:
    return _hidden_layer(mm) or _inner_layer(mm, ev)


def partition_factor(ev: Evidence, mm: list[ShapeMismatch]) -> int | None:
    """k when the checkpoint holds 1/k of the model's tensors on one axis and that reads as a
    tensor-parallel rank's piece rather than a count or a width: the text names model
    parallelism, or k >= 8 on an axis of 1024 and more (counts k times apart are rarely so large)."""
    shard = _shard_factor(mm) if mm else None
    if shard is None or shard[1] != "checkpoint":
        return None
    big = all(m.model_shape[_one_axis(m) or 0] >= 1024 for m in mm)
    return shard[0] if ev.parallel or (shard[0] >= 8 and big) else None


def _count_change(ev: Evidence) -> list[ShapeMismatch]:
    """A few tensors that differ on one axis only: a count (classes, tokens, vocabulary) changed.

    Not 1-D norm statistics alone (those are a width change inside a head), not grids or levels
    (another input size or number of feature levels).
    """
    mm = _real(ev)
    if not mm or len(mm) != len(ev.mismatched):
        return []
    if not all(_count_axis(m) or transposed_output(m, mm) for m in mm) or any(
            _positional(m) or _LEVELS.search(m.key) for m in mm):
        return []
    if all(len(m.model_shape) == 1 for m in mm) and any(_NORM.search(m.key) for m in mm):
        return []
    if all(_input_layer(m, mm) for m in mm):
        return []  # the input layer's rows: another width
    # Many tensors: a count only in a head by name whose every tensor changes between the same
    # two sizes (a multi-level detection head's anchors x (classes + 5)); a width changes the
    # layers after it too, and fewer key/value heads change every block of a stack alike.
    sizes = {(m.checkpoint_shape[a], m.model_shape[a]) for m in mm if (a := _one_axis(m)) is not None}
    named = all(_HEAD.search(m.key) for m in mm)
    # The same difference on every layer is one count changed by that much in layers that count
    # it with and without a background class (81 -> 4 boxes, 80 -> 3 masks); a width scales.
    same_change = len(sizes) == 1 or len({c - s for c, s in sizes}) == 1
    # Parallel output layers (one per feature level) whose rows stand in one exact ratio: anchors
    # x classes per level (count_pairs); a width would change the input of a layer after them.
    return mm if len(mm) <= 6 or (same_change and named) or per_level_rows(mm) else []


def counted(ev: Evidence) -> list[tuple[ShapeMismatch, tuple[int, int]]]:
    """Each tensor read as a count (:func:`head_size_mismatch`'s) with its two sizes on that axis."""
    return [(m, (m.checkpoint_shape[a], m.model_shape[a])) for m in _count_change(ev)
            if (a := _one_axis(m)) is not None]


def head_size_mismatch(ev: Evidence) -> Finding | None:
    """A classifier or vocabulary head of another size (only the output dimension differs)."""
    mm = _count_change(ev)
    if not mm:
        return None
    headish = [m for m in mm if _HEAD.search(m.key)]
    vocab = any(_VOCAB.search(m.key) for m in mm)
    axis = _one_axis(mm[0]) or 0
    sizes = (mm[0].checkpoint_shape[axis], mm[0].model_shape[axis])
    padded = vocab and any(n % 64 == 0 for n in sizes) and abs(sizes[0] - sizes[1]) < 1024
    # A weight and its bias changing together on the output axis is a classifier's signature
    # (one layer's; a conv and the norm after it changing together is a width).
    layers = {m.key.rpartition(".")[0] for m in mm if len(m.model_shape) >= 2}
    pair = any(len(m.model_shape) == 1 and m.key.rpartition(".")[0] in layers for m in mm)
    conf = 0.7 + (0.2 if 2 * len(headish) >= len(mm) or (pair and axis == 0) else 0.0)
    if conf > 0.8 and not headish and round_sizes(sizes):
        conf = 0.75  # a pair with no head name between two powers of two: a width reads the same
    if not headish and not vocab and hidden_width_sizes(sizes):
        conf = WIDTH_HEAD  # two hidden widths (4096 against 5120): a projection's width first
    if _not_head(mm, ev) or (not headish and _norm_resized(mm)):
        conf = 0.55  # an inner layer of a Sequential: a width (architecture_variant) competes
    if (not headish and (_shard_factor(mm) or (0, ""))[1] == "model") or partition_factor(ev, mm):
        conf = 0.5  # one side's tensors are the other's cut in k: sharding competes
    if not one_count(pair for _, pair in counted(ev)):
        conf = min(conf, UNRELATED_HEAD)  # sizes one count does not give: two settings (count_pairs)
    return Finding("head_size_mismatch", conf, frozenset(m.key for m in mm),
                   {"keys": [m.key for m in mm], "checkpoint_size": sizes[0], "model_size": sizes[1],
                    "vocab": vocab, "padded": padded, "levels": per_level_rows(mm)})


def sharded_tensors(ev: Evidence) -> Finding | None:
    """One side holds 1/k of every other-side tensor on one axis: a tensor-parallel shard."""
    mm = _real(ev)
    shard = _shard_factor(mm) if mm and len(mm) == len(ev.mismatched) else None
    if shard is None:
        return None
    tp, (k, side), piece = _tensor_parallel(mm), shard, partition_factor(ev, mm)
    if not tp and not piece and (side != "model" or any(_HEAD.search(m.key) for m in mm)):
        return None  # a head with k times (or 1/k) the classes reads the same
    # The text naming model parallelism (mp_rank_00, model-parallel size 8) decides a 1/k piece.
    conf = 0.88 if ev.parallel and (tp or piece) else 0.82 if tp else 0.6
    return Finding("partitioned_checkpoint", conf, frozenset(m.key for m in mm),
                   {"examples": [m.key for m in mm[:3]], "count": len(mm), "side": side,
                    "factor": k, "tensor_parallel": tp})


def _depth(keys: Iterable[str]) -> tuple[str, int, int] | None:
    """``blocks.{4..7}.*`` -> ``("blocks", 4, 7)``: keys all in layers from N >= 1 on.

    Over several stages (``layer1.2``, ``layer3.5``) the group reads ``layer{1..4}``.
    """
    groups: set[str] = set()
    numbers: list[int] = []
    for key in keys:
        parts = segments(key)
        i = next((i for i, p in enumerate(parts) if p.isdigit()), None)
        if i is None and (rnn := re.search(r"_l(\d+)(_reverse)?$", parts[-1])):
            parts, i = parts[:-1] + [rnn.group(1)], len(parts) - 1  # nn.LSTM: weight_ih_l2
        if i is None:
            return None
        groups.add(".".join(parts[:i]))
        numbers.append(int(parts[i]))
    # Stages of one network (layer1..layer4, stages.0.blocks..stages.3.blocks) count as one
    # group: a deeper variant adds blocks to every stage (resnet18 -> resnet34).
    kinds = {re.sub(r"\d+", "#", g) for g in groups}
    if not numbers or len(kinds) > 2 or min(numbers) < 1:
        return None
    # two stacks deepened together share their name (encoder.layers, decoder.layers); index 1 of
    # two unrelated Sequentials (x_embedder.proj.1, t_embedder.1) is no depth
    if len({k.rpartition(".")[2] for k in kinds}) > 1 and max(numbers) == 1:
        return None
    if len(groups) > 2:
        stage = re.compile(re.escape(min(kinds)).replace("\\#", r"(\d+)"))
        ids = sorted(int(m.group(1)) for g in groups if (m := stage.fullmatch(g)))
        name = min(kinds).replace("#", f"{{{ids[0]}..{ids[-1]}}}", 1) if ids else sorted(groups)[0]
        return name, min(numbers), max(numbers)
    return sorted(groups)[0], min(numbers), max(numbers)


def _width(mm: list[ShapeMismatch]) -> tuple[float, bool]:
    ratios = Counter(round(c / s, 3) for m in mm
                     for c, s in zip(m.checkpoint_shape, m.model_shape) if c != s and s)
    ratio, n = ratios.most_common(1)[0] if ratios else (1.0, 0)
    return ratio, n >= 0.6 * sum(ratios.values())


def _shape_variant(ev: Evidence) -> Finding | None:
    mm = _real(ev)
    # layers of another kind holding the same elements (a 1x1 convolution where the model has a
    # Linear) come with a variant's setting (Stable Diffusion 2's linear projections): they
    # neither count for nor against the sizes that changed
    if not mm or len(mm) < 0.5 * (len(ev.mismatched) - len(reshaped(ev.mismatched))):
        return None
    keys = frozenset(m.key for m in mm)
    if all(_positional(m) for m in mm):
        return Finding("architecture_variant", 0.86, keys,
                       {"kind": "pos_grid", "keys": [m.key for m in mm],
                        # an nn.Embedding of positions ([N, D] weight) is a length, not a grid
                        "length": not any(_POS.search(m.key) for m in mm) or all(
                            len(m.model_shape) == 2 and m.key.endswith(".weight") for m in mm),
                        "checkpoint_shape": mm[0].checkpoint_shape, "model_shape": mm[0].model_shape})
    stem = [m for m in mm if len(m.model_shape) >= 3 and m.key.endswith("weight")
            and len(m.checkpoint_shape) == len(m.model_shape)
            and m.model_shape[0] == m.checkpoint_shape[0] and m.model_shape[2:] == m.checkpoint_shape[2:]]
    if stem and len(stem) == len(mm) <= 2 and fed_inputs(ev):
        # an inner layer fed a changed count (fed_input): no in_chans setting, a candidate
        return Finding("architecture_variant", 0.6, keys, {
            "kind": "width", "count": len(mm), "examples": [m.key for m in mm[:3]],
            "ratio": _width(mm)[0], "consistent": False})
    if stem and len(stem) == len(mm) <= 2:
        return Finding("architecture_variant", 0.86, keys,
                       {"kind": "in_chans", "keys": [m.key for m in mm],
                        "checkpoint_channels": mm[0].checkpoint_shape[1],
                        "model_channels": mm[0].model_shape[1]})
    if (count := _count_change(ev)) and (_not_head(count, ev) or (
            _norm_resized(count) and not any(_HEAD.search(m.key) for m in count))):
        return Finding("architecture_variant", 0.6, keys, {"kind": "width", "count": len(mm),
                       "examples": [m.key for m in mm[:3]], "ratio": _width(mm)[0], "consistent": False})
    if count:
        axis = _one_axis(count[0]) or 0
        sizes = (count[0].checkpoint_shape[axis], count[0].model_shape[axis])
        if not any(head_named(m.key) for m in count) and hidden_width_sizes(sizes):
            return Finding("architecture_variant", WIDTH_READING, keys, {
                "kind": "width", "count": len(mm), "examples": [m.key for m in mm[:3]],
                "ratio": _width(mm)[0], "consistent": False})
        if not any(_HEAD.search(m.key) for m in count) and round_sizes(sizes):
            # no head name, two powers of two: the other reading of head_size_mismatch's
            return Finding("architecture_variant", 0.6, keys, {
                "kind": "width", "count": len(mm), "examples": [m.key for m in mm[:3]],
                "ratio": _width(mm)[0], "consistent": False})
        return None  # that is a head of another size
    if any(len(m.model_shape) != len(m.checkpoint_shape) for m in mm):
        return None  # another kind of layer at this path (indices moved), not another width
    ratio, consistent = _width(mm)
    # A tensor-parallel pattern, or the input layer alone (its rows): a shard reads the same.
    if _tensor_parallel(mm) or partition_factor(ev, mm) or all(_input_layer(m, mm) for m in mm):
        return Finding("architecture_variant", 0.6, keys, {"kind": "width", "count": len(mm),
                       "examples": [m.key for m in mm[:3]], "ratio": ratio, "consistent": False})
    # A configured width is even (300, 768, 1152); an odd inner width like 979 between unchanged
    # outer widths is computed by the code (int(dim * ratio)), so the code that computes it may
    # have changed as well as the configuration.
    axes = [_one_axis(m) for m in mm]
    computed = all(a in (0, 1) for a in axes) and any(
        x >= 64 and x % 2 for m, a in zip(mm, axes) for x in (m.checkpoint_shape[a], m.model_shape[a]))
    conf = 0.72 if computed else 0.8 + (0.05 if consistent else 0.0)
    if width_from_norms_alone(mm, ev):
        conf = min(conf, 0.75)
    if in_moved_modules(ev, mm) or (len(mm) == 1 and another_kind(mm[0])):
        conf = min(conf, CODE_READING - 0.05)  # the code changed (layer_roles): that reads first
    if all(bias_of_swapped(ev, m) for m in mm):
        conf = min(conf, CODE_READING - 0.05)  # a swapped kernel's bias: the layer's, as the kernel's
    if same_part_added(mm):
        conf = min(conf, PART_WIDTH)  # one part concatenated to every input: the code reads the same
    return Finding("architecture_variant", conf, keys,
                   {"kind": "width", "count": len(mm), "examples": [m.key for m in mm[:3]],
                    "ratio": ratio, "consistent": consistent})


def architecture_variant(ev: Evidence) -> Finding | None:
    """Another width of the same architecture, another input size (grid) or input channels."""
    return _shape_variant(ev)


def inserted_layer_group(keys: Iterable[str]) -> str | None:
    """The flat ``nn.Sequential`` whose layers from index 1 on are missing, where index 0 is not.

    A deeper model adds blocks after the checkpoint's last one; a flat Sequential (``features.1.
    running_mean``: the index names a layer, not a block) that misses layer 1 and up while layer
    0 loads had a layer inserted (a norm after the first conv), which moved every index behind it.
    Several such Sequentials (a backbone and a head) read the same.
    """
    lows: dict[str, int] = {}
    for key in keys:
        m = re.fullmatch(r"(.+)\.(\d+)\.[A-Za-z_]+", key)
        if m is None:
            return None
        lows[m.group(1)] = min(lows.get(m.group(1), 1 << 30), int(m.group(2)))
    if not lows or set(lows.values()) != {1}:
        return None
    return sorted(lows)[0]


def another_depth(ev: Evidence) -> Finding | None:
    """Another depth: the extra keys all sit in layers N and up (runs on unexplained keys)."""
    for side, keys, other in (("missing", ev.missing, ev.unexpected),
                              ("unexpected", ev.unexpected, ev.missing)):
        depth = _depth(keys) if keys and not other else None
        if depth is not None and not (side == "missing" and inserted_layer_group(keys)):
            group, low, high = depth
            # one layer's keys alone (PyTorch <= 0.3 names the first one): an extra layer at the
            # end, or a layer shifted by one (a norm inserted) read the same
            one = len({k.rpartition(".")[0] for k in keys}) == 1
            return Finding("architecture_variant", 0.62 if one else 0.78, frozenset(keys),
                           {"kind": "depth", "side": side, "group": group, "first": low,
                            "last": high, "count": len(keys), "examples": list(keys[:3])})
    return None
