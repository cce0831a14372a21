"""Key lists in the formats of loaders other than ``nn.Module.load_state_dict`` and in prose.

detectron2/fvcore print key lists one per line with brace groups (``fpn.{bias, weight}``), mlx prints
``Received N parameters not in model: ...``, PyTorch <= 0.3 named one shape mismatch per message,
hand-written loaders fail with a bare ``KeyError: 'key'``, and people paste the middle of a key
list without its header or name keys in a sentence. Each finder returns what it read and leaves
the decision to the cause rules.
"""

from __future__ import annotations

import re

from ckpttools.ops.diagnose.prose_names import WRAPPER_SEGMENTS, emphasis_keys

_KEY = r"[A-Za-z_][\w.\-/:#$@+]*"
_DOTTED = re.compile(r"^[A-Za-z_][\w\-]*(?:\.[\w\-]+)+$")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_SIZE = r"torch\.Size\(\[([\d,\s]*)\]\)"

# detectron2 / fvcore checkpointer
_D2_HEADERS = (
    ("missing", re.compile(r"(?:Some model parameters or buffers are not found in the checkpoint"
                           r"|Some model parameters are not in the checkpoint):\s*\n")),
    ("unexpected", re.compile(r"The checkpoint(?: state_dict)? contains keys that are not used by "
                              r"the model:\s*\n")),
)
# fvcore says "Skip loading parameter" since 2020 and said "Unable to load" before.
_D2_SKIP = re.compile(r"(?:Skip loading parameter|Unable to load) '(" + _KEY + r")' to the model due "
                      r"to incompatible shapes: \(([\d,\s]*)\) in the checkpoint but \(([\d,\s]*)\) "
                      r"in the model")
# fvcore's checkpointer of 2019 (detectron2's first release, fastreid): "'k' has shape (81, 1024)
# in the checkpoint but (68, 1024) in the model! Skipped."
_D2_EARLY = re.compile(r"'(" + _KEY + r")' has shape \(([\d,\s]*)\) in the checkpoint but "
                       r"\(([\d,\s]*)\) in the model! Skipped")
# accelerate's set_module_tensor_to_device (transformers' low_cpu_mem_usage and device_map loads):
# the tensor's own name only, the value (checkpoint) first
_ACCELERATE = re.compile(r"Trying to set a tensor of shape " + _SIZE + r' in "(' + _KEY + r')" '
                         r"\(which has shape " + _SIZE + r"\), this looks incorrect")
# detectron2's Caffe2/Detectron weight conversion (c2_model_loading)
_D2_C2 = re.compile(r"Shape of (" + _KEY + r") in checkpoint is " + _SIZE + r", while shape "
                    r"of \S+ in model is " + _SIZE)
# transformers >= 5: a LOAD REPORT table, one key per row with its status
_HF_ROW = re.compile(r"^(?:[^|\n]*\s)?(" + _KEY + r")\s*\|\s*(MISSING|UNEXPECTED|MISMATCH)\s*\|([^\n]*)$", re.M)
_HF_SHAPES = re.compile(r"ckpt:\s*" + _SIZE + r"\s*vs\s*model:\s*" + _SIZE)
# PyTorch <= 0.3: one message per parameter, model shape first
# (a Sequential's keys start with a digit: "0.weight")
_OLD_COPY = re.compile(r"While\s+copying\s+the\s+parameter\s+named\s+[\"']?(\w[\w.\-/:#$@+]*)[\"']?,\s+"
                       r"whose\s+dimensions\s+in\s+the\s+model\s+are\s+" + _SIZE + r"\s+and\s+whose\s+"
                       r"dimensions\s+in\s+the\s+checkpoint\s+are\s+" + _SIZE)
# The copy_state_dict of re-id code bases (open-reid and its forks): it prints each tensor it
# skips, the file's size first, then loads the rest and lists what stayed missing
_COPY_PRINT = re.compile(r"^\s*mismatch:\s+(" + _KEY + r")\s+" + _SIZE + r"\s+" + _SIZE + r"\s*$", re.M)
# CenterNet's load_model (and FairMOT, CenterTrack ...): the model's shape first, no space
# before torch.Size ("required shapetorch.Size([2, 256, 1, 1]), loaded shapetorch.Size(...)")
_CENTERNET = re.compile(r"Skip\s+loading\s+parameter\s+(" + _KEY + r"),\s+required\s+shape\s*" + _SIZE
                        + r",\s+loaded\s+shape\s*" + _SIZE)
# ... and its key alone when a reporter retells it ("Skip loading parameter wh.2.weight and so on")
CENTERNET_KEY = re.compile(r"Skip\s+loading\s+parameter\s+([A-Za-z_][\w\-]*(?:\.[\w\-]+)+)")
# Megatron-Core distributed checkpointing (NeMo, Megatron-LM): loaded = checkpoint, expected = model
_MCORE = re.compile(r"Global\s+shape\s+mismatch\s+for\s+loaded\s+\(+([\d,\s]*)\)+\s+and\s+expected\s+"
                    r"\(+([\d,\s]*)\)+\s+tensor\s+for\s+key\s+[\"']?(" + _KEY + r")")
# A one-line issue title that shortens PyTorch's header: "Unexpected in state_dict: a.b, c.d"
_TITLE = re.compile(r"\b(missing|unexpected)\b[^:\n\"']{0,30}?\bstate_dict\s*:[ \t]*", re.I)
# mlx / mlx-lm load_weights
_MLX = (
    ("unexpected", re.compile(r"Received\s+\d+\s+parameters?\s+not\s+in\s+model:\s*")),
    ("missing", re.compile(r"Missing\s+\d+\s+parameters?:\s*")),
)
# A hand-written loader looking a key up: KeyError: 'layer.weight'
_KEYERROR = re.compile(r"KeyError:\s*['\"](" + _KEY + r")['\"]\s*(?:$|\n|\s+in\s)", re.M)
_QUOTED_KEY = re.compile(r"[\"'`](" + _KEY + r")[\"'`]")
_MISSING_WORDS = re.compile(r"missing|not\s+found|not\s+in\s+the\s+checkpoint|newly\s+initiali[sz]ed"
                            r"|absent|lacks?|doesn'?t\s+have|does\s+not\s+have", re.I)
_UNEXPECTED_WORDS = re.compile(r"unexpected|not\s+used|extra|unused|not\s+in\s+(?:the\s+)?model"
                               r"|ignored", re.I)
_LOAD_WORDS = re.compile(r"state_dict|checkpoint|load|weights|pretrained|parameters\s+are\s+saved", re.I)
_CKPT_WORDS = frozenset({"checkpoint", "pretrained", "saved", "file", "ckpt", "weights"})
_MODEL_WORDS = frozenset({"model", "current", "network", "net"})
_PROSE_SIDE = re.compile(r"\b(checkpoint|pretrained|saved|file|ckpt|weights|model|current|network|net)\b",
                         re.I)


def _shape(text: str) -> tuple[int, ...]:
    return tuple(int(d) for d in re.findall(r"\d+", text))


def _expand(line: str) -> list[str]:
    """``a.{bias, weight}`` -> ``a.bias``, ``a.weight`` (detectron2 groups keys by module)."""
    m = re.match(r"^(\S*?)\{([^}]*)\}(\S*)$", line)
    if not m:
        return [line]
    return [f"{m.group(1)}{leaf.strip()}{m.group(3)}" for leaf in m.group(2).split(",") if leaf.strip()]


def detectron2_lists(text: str) -> dict[str, list[str]]:
    """Keys listed one per line under detectron2/fvcore's checkpointer warnings."""
    text = _ANSI.sub("", text)
    out: dict[str, list[str]] = {"missing": [], "unexpected": []}
    for kind, header in _D2_HEADERS:
        for m in header.finditer(text):
            for line in text[m.end():].split("\n"):
                if (key := _d2_key_line(line)) is None:
                    break
                out[kind].extend(_expand(key))
    return out


def detectron2_cut_missing(text: str) -> list[str]:
    """fvcore prints the missing list first: key lines right above its unused-keys header, with
    no header of their own, are the end of that list, its header cut from the paste."""
    text = _ANSI.sub("", text)
    unused = _D2_HEADERS[1][1].search(text)
    if not unused or _D2_HEADERS[0][1].search(text):
        return []
    above: list[str] = []
    for line in reversed(text[:unused.start()].rstrip("\n").split("\n")):
        if (key := _d2_key_line(line)) is None or "." not in key:
            break
        above[:0] = _expand(key)
    return above if len(above) >= 2 else []


def _d2_key_line(line: str) -> str | None:
    """A key line of fvcore's grouped lists (``a.b.{bias, weight}``), without a log prefix."""
    line = re.sub(r"^\s*(?:\[\d\d/\d\d [\d:]+ [\w.]+\]:?\s*)?", "", line).strip()
    if not line or not re.match(r"^[\w.{}\-, ]+$", line) or " " in line.replace(", ", ","):
        return None
    return line.replace(", ", ",").replace(",", ", ")


def other_mismatches(text: str) -> list[tuple[str, tuple[int, ...], tuple[int, ...]]]:
    """(key, checkpoint shape, model shape) from detectron2's skip/shape warnings, accelerate's
    refusal, PyTorch <= 0.3, Megatron-Core, CenterNet's skip message and re-id loaders'
    ``mismatch:`` prints."""
    found = [(m.start(), m.group(1), _shape(m.group(2)), _shape(m.group(3)))
             for m in _D2_SKIP.finditer(text)]
    found += [(m.start(), m.group(1), _shape(m.group(3)), _shape(m.group(2)))
              for m in _OLD_COPY.finditer(text)]
    found += [(m.start(), m.group(1), _shape(m.group(2)), _shape(m.group(3)))
              for pattern in (_D2_C2, _D2_EARLY) for m in pattern.finditer(text)]
    found += [(m.start(), m.group(2), _shape(m.group(1)), _shape(m.group(3)))
              for m in _ACCELERATE.finditer(text)]
    found += [(m.start(), m.group(3).rstrip("."), _shape(m.group(1)), _shape(m.group(2)))
              for m in _MCORE.finditer(text)]
    found += [(m.start(), m.group(1), _shape(m.group(2)), _shape(m.group(3)))
              for m in _COPY_PRINT.finditer(text)]
    found += [(m.start(), m.group(1), _shape(m.group(3)), _shape(m.group(2)))
              for m in _CENTERNET.finditer(text)]
    return [(k, c, s) for _, k, c, s in sorted(found)]


def load_report(text: str) -> tuple[dict[str, list[str]], list[tuple[str, tuple[int, ...], tuple[int, ...]]]]:
    """Rows of transformers' LOAD REPORT table: missing, unexpected and mismatched keys."""
    lists: dict[str, list[str]] = {"missing": [], "unexpected": []}
    mismatched = []
    for m in _HF_ROW.finditer(_ANSI.sub("", text)):
        if m.group(2) == "MISMATCH":
            if shapes := _HF_SHAPES.search(m.group(3)):
                mismatched.append((m.group(1), _shape(shapes.group(1)), _shape(shapes.group(2))))
        else:
            lists[m.group(2).lower()].append(m.group(1))
    return lists, mismatched


_RUNNING_STATS = re.compile(r'Unexpected\s+running\s+stats\s+buffer\(s\)\s+((?:"[^"\s]+"(?:\s+and\s+)?)+)')


def running_stats_lists(text: str) -> dict[str, list[str]]:
    """PyTorch's InstanceNorm (``track_running_stats=False``) on a file without version metadata:
    ``Unexpected running stats buffer(s) "m.running_mean" and "m.running_var"`` (saved before 0.4)."""
    found = (re.findall(r'"([^"]+)"', m.group(1)) for m in _RUNNING_STATS.finditer(text))
    return {"unexpected": [k for keys in found for k in keys]}


def mlx_lists(text: str) -> dict[str, list[str]]:
    """Keys after mlx's ``Received N parameters not in model:`` and ``Missing N parameters:``."""
    out: dict[str, list[str]] = {"missing": [], "unexpected": []}
    for kind, header in _MLX:
        for m in header.finditer(text):
            line = text[m.end():].split("\n", 1)[0]
            out[kind] += [k.strip(" .'\"") for k in line.split(",") if k.strip(" .'\"")]
    return out


def title_lists(text: str) -> dict[str, list[str]]:
    """Unquoted dotted keys after a shortened header on one line (``Unexpected in state_dict: a.b``),
    as issue titles write them; only keys with a dot count."""
    out: dict[str, list[str]] = {"missing": [], "unexpected": []}
    for m in _TITLE.finditer(text):
        line = text[m.end():].split("\n", 1)[0]
        keys = [k.strip(" .,;'\"`") for k in re.split(r"[,\s]+", line)]
        out[m.group(1).lower()] += [k for k in keys if _DOTTED.match(k)]
    return out


# A wrapper's prefix quoted in a sentence: "the prefix '_orig_mod.' is added"
_PROSE_PREFIX = re.compile(r"[\"'`](module|_orig_mod|_forward_module|_fsdp_wrapped_module)\.[\"'`]")


def prose_prefix(text: str) -> str | None:
    """The wrapper prefix a sentence about loading names (``'_orig_mod.'``), if one does."""
    if not (_LOAD_WORDS.search(text) and re.search(r"\bprefix", text, re.I)):
        return None
    m = _PROSE_PREFIX.search(text)
    return m.group(1) + "." if m else None


def keyerror_lookups(text: str) -> list[str]:
    """Keys a loader looked up and did not find (``KeyError: 'x'``), side unknown."""
    return [m.group(1) for m in _KEYERROR.finditer(text)]


def headless_keys(text: str) -> list[str]:
    """A run of quoted dotted keys pasted without its header (the middle of a key list)."""
    keys = [m.group(1) for m in _QUOTED_KEY.finditer(text) if _DOTTED.match(m.group(1))]
    separators = len(re.findall(r"[\"']\s*,\s*[\"']", text))
    return keys if len(keys) >= 3 and separators >= 0.6 * len(keys) else []


# Names people quote in prose that are code, not keys of a state_dict.
_API_NAMES = frozenset({"load_state_dict", "state_dict", "model_state_dict", "from_pretrained",
                        "save_pretrained", "map_location", "weights_only", "strict", "torch_load",
                        "load_checkpoint", "missing_keys", "unexpected_keys", "ignore_mismatched_sizes",
                        "save_checkpoint", "resume_from_checkpoint", "load_from_checkpoint"})


def _is_prose_key(m: re.Match[str]) -> bool:
    """A dotted key, or a top-level one in code quotes with an underscore (`total_ops`, `pos_embed`):
    plain words in quotes are not keys."""
    key = m.group(1)
    if key in WRAPPER_SEGMENTS or key.split(".")[0] in ("torch", "nn", "F"):
        return False  # a wrapper's name (its prefix, see prose_names) or a call: not a key
    return bool(_DOTTED.match(key)) or (m.group(0)[0] == "`" and "_" in key.strip("_")
                                        and key not in _API_NAMES)


def prose_keys(text: str) -> dict[str, list[str]]:
    """Dotted keys named in sentences, sided by the words of their sentence.

    A key counts only in a sentence that says missing/unexpected (or a synonym) in a text that
    talks about loading weights, so ordinary logs that mention module paths stay unrecognised.
    """
    out: dict[str, list[str]] = {"missing": [], "unexpected": []}
    if not _LOAD_WORDS.search(text):
        return out
    for sentence in re.split(r"(?<=[.!?])\s+(?=[A-Z])|\n\s*\n", text):
        keys = [m.group(1) for m in _QUOTED_KEY.finditer(sentence) if _is_prose_key(m)]
        keys += emphasis_keys(sentence)
        if not keys:
            continue
        miss, unexp = _MISSING_WORDS.search(sentence), _UNEXPECTED_WORDS.search(sentence)
        if miss and not unexp:
            out["missing"] += keys
        elif unexp and not miss:
            out["unexpected"] += keys
        elif miss and unexp:  # "missing keys like `a` and unexpected ones like `b`"
            for kind, key in _sided(sentence):
                out[kind].append(key)
    return out


def _sided(sentence: str) -> list[tuple[str, str]]:
    """Each dotted key with its side word: the one before it when the sentence names the side
    first ("missing keys like `a`"), the one after it when the keys lead ("`a` is missing")."""
    words = sorted([(m.start(), "missing") for m in _MISSING_WORDS.finditer(sentence)]
                   + [(m.start(), "unexpected") for m in _UNEXPECTED_WORDS.finditer(sentence)])
    keys = [m for m in _QUOTED_KEY.finditer(sentence) if _is_prose_key(m)]
    if not keys:
        return []
    side_first = words[0][0] < keys[0].start()
    out = []
    for m in keys:
        before = [kind for pos, kind in words if pos < m.start()]
        after = [kind for pos, kind in words if pos > m.end()]
        near = (before[-1:] or after[:1]) if side_first else (after[:1] or before[-1:])
        out.append((near[0], m.group(1)))
    return out


def _side_distance(sentence: str, sizes: list[re.Match[str]], i: int, words: frozenset[str]) -> int:
    """How far size ``i`` is from the nearest of ``words``, not reaching past the other size."""
    lo = sizes[0].end() if i == 1 else 0
    hi = sizes[1].start() if i == 0 else len(sentence)
    here = sizes[i]
    found = [min(abs(w.end() - here.start()), abs(w.start() - here.end()))
             for w in _PROSE_SIDE.finditer(sentence, lo, hi) if w.group(1).lower() in words]
    return min(found, default=10_000)


def prose_mismatches(text: str) -> list[tuple[str, tuple[int, ...], tuple[int, ...]]]:
    """A size mismatch told in a sentence: a key, then the checkpoint's and the model's sizes.

    "size mismatch for fc.weight: the checkpoint has torch.Size([1000, 512]) and my model
    torch.Size([10, 512])": each size is the checkpoint's or the model's by the word before it.
    """
    out = []
    for sentence in re.split(r"(?<=[.!?])\s+(?=[A-Z])|\n", text):
        if "copying a param" in sentence or len(sizes := list(re.finditer(_SIZE, sentence))) != 2:
            continue
        key = re.search(r"(?:mismatch(?:es)?\s+(?:for|in|of)|for|of)\s+[\"'`]?(" + _KEY + r")", sentence)
        name = key.group(1).rstrip(":.,") if key else ""
        if key is None or not (_DOTTED.match(name) or "_" in name.strip("_")):
            continue
        # The reading that puts each side's word nearest to its size (sentences say it both ways).
        d = [[_side_distance(sentence, sizes, i, w) for w in (_CKPT_WORDS, _MODEL_WORDS)] for i in range(2)]
        ckpt_first, model_first = d[0][0] + d[1][1], d[0][1] + d[1][0]
        if min(ckpt_first, model_first) >= 10_000 or ckpt_first == model_first:
            continue
        ckpt, model = sizes if ckpt_first < model_first else sizes[::-1]
        out.append((key.group(1).rstrip(":.,"), _shape(ckpt.group(1)), _shape(model.group(1))))
    return out


_LISTED = re.compile(rf"^\s*[\"'`]?({_KEY})[\"'`]?\s*[:,=]?\s*{_SIZE}\s*,?\s*$")


def listed_mismatches(text: str) -> list[tuple[str, tuple[int, ...], tuple[int, ...]]]:
    """Keys listed with their sizes once for each side (``key torch.Size([...])`` per line), each
    block under a line that names its side ("in my model:", "but in the pretrained model:"); a
    line naming the checkpoint's side names it even beside "model". Keys of two sizes differ."""
    sides: dict[str, dict[str, tuple[int, ...]]] = {"checkpoint": {}, "model": {}}
    side = None
    for line in text.split("\n"):
        m = _LISTED.match(line)
        if m is None:
            words = {w.lower() for w in _PROSE_SIDE.findall(line)}
            side = "checkpoint" if words & _CKPT_WORDS else "model" if words & _MODEL_WORDS else side
        elif side and _DOTTED.match(m.group(1)):
            sides[side][m.group(1)] = _shape(m.group(2))
    ckpt, model = sides["checkpoint"], sides["model"]
    return [(k, ckpt[k], model[k]) for k in model if k in ckpt and ckpt[k] != model[k]]


# A loader that matches the checkpoint to the model by name and shape and prints what it left
# out as a dict (RT-DETR, D-FINE, DEIM: ``{'missed': [...], 'unmatched': [...]}``): ``missed``
# are the model's keys the file lacks, ``unmatched`` keys on both sides whose shapes differ.
_MATCH_DICT = re.compile(r"['\"]missed['\"]\s*:\s*\[([^\]]*)\]\s*,\s*['\"]unmatched['\"]\s*:\s*\[([^\]]*)\]")


def missed_unmatched(text: str) -> tuple[list[str], list[str]] | None:
    """``(missed, unmatched)`` keys of such a loader's dict, or ``None`` when the text has none."""
    m = _MATCH_DICT.search(text)
    if m is None:
        return None
    missed, unmatched = ([k for k in re.findall(r"['\"]([^'\"]+)['\"]", g)] for g in m.groups())
    return missed, unmatched
