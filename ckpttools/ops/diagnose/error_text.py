"""Parsing ``load_state_dict`` error texts: PyTorch, transformers, timm, mmengine, old PyTorch.

The input is whatever a user pastes: a whole traceback, a noisy log, a notebook's JSON-escaped
output, keys in straight or typographic quotes, lists cut short with ``...``. The result holds the
same facts ``diff`` finds from files: missing keys, unexpected keys and shape mismatches.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ckpttools.ops.diagnose.loader_formats import (
    CENTERNET_KEY, detectron2_lists, headless_keys, keyerror_lookups, load_report, missed_unmatched,
    mlx_lists,
    other_mismatches, running_stats_lists, detectron2_cut_missing,
    prose_keys, prose_mismatches, prose_prefix, title_lists, listed_mismatches)
from ckpttools.ops.diagnose.prose_names import (
    buffer_names, keyless_row_counts, named_prefix as prose_named_prefix, state_names, wrapper_pair,
    told_head_sizes)
from ckpttools.ops.diagnose.evidence import ShapeMismatch
from ckpttools.ops.diagnose.pasted_text import normalize_text

_KEY_CHARS = r"[\w.\-/:#$@+]"
_UNQUOTED_KEY = re.compile(rf"\s*({_KEY_CHARS}+)")
_SIZE = r"torch\.Size\(\[([\d,\s]*)\]\)"
# Some loaders print the checkpoint side as a (key, shape) tuple: ('a.weight', torch.Size([..])).
_CKPT_SIZE = rf"(?:\(\s*['\"][^'\"]*['\"],\s*)?{_SIZE}\)?"
_W = r"\s+"  # any run of blanks, newlines included, because pastes wrap long lines

_MISMATCH_PATTERNS = (
    # retyped by hand, the colon after the key may be left out and a word slip in ("with shape for")
    re.compile(rf"size{_W}mismatch{_W}for{_W}([^\s:]+):?{_W}copying{_W}a{_W}param{_W}with{_W}shape"
               rf"(?:{_W}for)?{_W}{_CKPT_SIZE}{_W}from{_W}checkpoint,?\s*the{_W}shape{_W}in{_W}current"
               rf"{_W}model{_W}is{_W}{_SIZE}"),
    re.compile(rf"size{_W}mismatch{_W}for{_W}([^\s:]+):{_W}copying{_W}a{_W}param{_W}of{_W}{_SIZE}"
               rf"{_W}from{_W}checkpoint,?{_W}where{_W}the{_W}shape{_W}is{_W}{_SIZE}"),
    re.compile(rf"-{_W}([^\s:]+):{_W}found{_W}shape{_W}{_SIZE}{_W}in{_W}the{_W}checkpoint{_W}and"
               rf"{_W}{_SIZE}{_W}in{_W}the{_W}model{_W}instantiated"),
    # a paste that starts at the key of torch's line ("size mismatch for" cut off the front),
    # after whatever came before it (a traceback, a log record's prefix, a quoted log field)
    re.compile(rf"(?m)(?:^[ \t]*|(?<=[\"\s]))(?<!for )(?<!for\n)([\w.\-]+):{_W}copying{_W}a{_W}param{_W}with{_W}shape"
               rf"{_W}{_CKPT_SIZE}{_W}from{_W}checkpoint,?\s*the{_W}shape{_W}in{_W}current{_W}model"
               rf"{_W}is{_W}{_SIZE}"),
)

# A mismatch line's key, whatever follows (a paste may end inside the shapes).
_CUT_MISMATCH = re.compile(rf"size{_W}mismatch{_W}for{_W}([\w.\-]+\.[\w\-]+|[\w\-]+):")
# ... and one quoted in a title or a sentence, where the quote, the bold or the line ends after the
# key; a module's name (pts_voxel_encoder) without a dot as well, when it is snake_case
_QUOTED_MISMATCH = re.compile(rf"(?m)size{_W}mismatch{_W}for{_W}([\w.\-]+\.[\w\-]+|[A-Za-z]\w*_\w+)"
                              rf"(?=[\"'`]|\*\*|[ \t]*$)")
# SlowFast's (and its forks') loader logs each model key the file has no tensor of that shape for
# ("absent or of another size"), then loads the rest with strict=False
_NOT_LOADED = re.compile(r"Network weights (" + r"[A-Za-z_][\w.\-]*" + r") not loaded\.")
# ... whose checkpoint side shows an empty tensor (ZeRO-3/FSDP save a partitioned parameter so)
_CUT_EMPTY = re.compile(rf"size{_W}mismatch{_W}for{_W}([\w.\-]+):{_W}copying{_W}a{_W}param{_W}with"
                        rf"{_W}shape{_W}torch\.Size\(\[0\]\){_W}from{_W}checkpoint")

# (kind, pattern whose match ends where the key list starts)
_LIST_HEADERS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("missing", re.compile(r"missing_keys\s*=\s*(?=\[)")),
    ("unexpected", re.compile(r"unexpected_keys\s*=\s*(?=\[)")),
    ("missing", re.compile(r"missing\s+keys\s+in\s+source\s+state_dict:\s*")),
    ("unexpected", re.compile(r"unexpected\s+keys?\s+in\s+source\s+state_dict:\s*")),
    ("missing", re.compile(r"missing\s+key\(s\)\s+in\s+state_dict:?\s*", re.I)),
    ("unexpected", re.compile(r"unexpected\s+key\(s\)\s+in\s+state_dict:?\s*", re.I)),
    ("missing", re.compile(r"missing\s+keys\s+in\s+state_dict:\s*[\"']?\s*(?=\{)")),
    ("missing", re.compile(r"were\s+not\s+initialized\s+from\s+the\s+model\s+checkpoint\s+at\s+\S+"
                           r"\s+and\s+are\s+newly\s+initialized:\s*")),
    ("unexpected", re.compile(r"were\s+not\s+used\s+when\s+initializing\s+\w+:\s*")),
    ("missing", re.compile(r"Weights\s+of\s+\w+\s+not\s+initialized\s+from\s+pretrained\s+model:\s*")),
    ("unexpected", re.compile(r"Weights\s+from\s+pretrained\s+model\s+not\s+used\s+in\s+\w+:\s*")),
    ("missing", re.compile(r"Missing\s+keys\s+\(\s*(?=[^)]*\)\s+discovered)")),
    ("unexpected", re.compile(r"Unexpected\s+keys\s+\(\s*(?=[^)]*\)\s+found)")),
)
_OLD_MISSING_SET = re.compile(r"missing\s+keys\s+in\s+state_dict:\s*[\"']?\s*\{")
_OLD_KEY = re.compile(r"(unexpected|missing)\s+key\s+[\"'](" + _KEY_CHARS + r"+)[\"']\s+in\s+state_dict")
_HEADER_ONLY = re.compile(
    r"Error\(s\)\s+in\s+loading\s+state_dict|do\s+not\s+match\s+exactly|newly\s+initialized"
    r"|were\s+not\s+used\s+when\s+initializing|_IncompatibleKeys")
# A load report (transformers, pytorch_pretrained_bert): the model loaded and says what it did.
# The text names model (tensor) parallelism: Megatron's "model-parallel size", DeepSpeed's
# mp_rank_00 files, tensor_model_parallel_size, tp_size/tp_rank.
_PARALLEL = re.compile(r"model[-_ ]parallel|tensor[-_ ]parallel|tensor_model_parallel|mp_rank_\d"
                       r"|\btp_(size|rank|degree)\b|\bmp_size\b", re.I)
_REPORT = re.compile(r"newly\s+initiali[sz]ed|not\s+initiali[sz]ed\s+from\s+(?:the\s+model\s+checkpoint"
                     r"|pretrained\s+model)|were\s+not\s+used\s+when\s+initiali[sz]ing"
                     r"|not\s+used\s+in\s+\w+:|LOAD\s+REPORT")
_UNUSED_REPORT = re.compile(r"were\s+not\s+used\s+when\s+initiali[sz]ing")
# PyTorch 0.1/0.2's load_state_dict copied each tensor (own_state[name].copy_(param)) and TH
# raised "inconsistent tensor size": a size mismatch whose key and shapes it does not name
_UNNAMED_COPY = re.compile(r"copy_\(param\)[\s\S]*inconsistent\s+tensor\s+size")
_CLASS_NAMES = (
    re.compile(r"Error\(s\)\s+in\s+loading\s+state_dict\s+for\s+([A-Za-z_][\w.]*)"),
    re.compile(r"Some\s+weights\s+of\s+([A-Za-z_]\w*)\s+were\s+not\s+initialized"),
    re.compile(r"when\s+initializing\s+([A-Za-z_]\w*)"),
    re.compile(r"Weights\s+of\s+([A-Za-z_]\w*)\s+not\s+initialized"),
    re.compile(r"([A-Za-z_]\w*)\s+LOAD\s+REPORT"),
)
_TRUNCATION = re.compile(r"^\s*(?:\.\.\.|\[\s*\.\.\.\s*\]|\[\.\.\.\s*trimmed|\.\.\.\s*trimmed)")


@dataclass(frozen=True)
class ParsedError:
    """What a ``load_state_dict`` error text says, in ``diff``'s terms.

    ``found`` is false when the text holds no such error at all. ``truncated`` is true when a
    key list was cut short (``...``, an unterminated key), so counts are lower bounds.
    """

    missing: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()
    mismatched: tuple[ShapeMismatch, ...] = ()
    class_name: str | None = None
    truncated: bool = False
    found: bool = False
    formats: tuple[str, ...] = field(default=())
    lookups: tuple[str, ...] = ()
    report: bool = False
    parallel: bool = False
    named_prefix: str | None = None  # a wrapper prefix a sentence names, when no key is shown
    # keys of "size mismatch for KEY: ..." lines whose shapes were cut from the paste
    cut_mismatches: tuple[str, ...] = ()
    cut_empty: tuple[str, ...] = ()  # those of them saved as torch.Size([0])
    head_sizes: tuple[int, int] | None = None  # (checkpoint, model) a sentence tells for a head

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return {"missing": list(self.missing), "unexpected": list(self.unexpected),
                "mismatched": [m.to_dict() for m in self.mismatched],
                "class_name": self.class_name, "truncated": self.truncated, "found": self.found,
                "lookups": list(self.lookups), "report": self.report}


def _read_quoted(text: str, pos: int, quote: str) -> tuple[str | None, int]:
    end = text.find(quote, pos + 1)
    if end == -1 or end - pos > 400:
        return None, len(text)
    raw = text[pos + 1:end]
    if raw.count("\n") > 1:
        return None, pos
    return re.sub(r"\s+", "", raw), end + 1


def _parse_quoted_list(text: str, pos: int) -> tuple[list[str], bool]:
    keys: list[str] = []
    while True:
        after_key = pos
        m = re.compile(r"[\s,`\[{(]*").match(text, pos)
        pos = m.end() if m else pos
        if keys and text.startswith(("]", "}", ")"), pos):
            return keys, False  # the list's closing bracket: the whole list (a set, a Python list)
        m = re.compile(r"[\s,`\[\]{}()]*").match(text, pos)
        pos = m.end() if m else pos
        # PyTorch ends its lists with a period; a comma after the last key read (before the end,
        # a closing code fence or prose) is a list the paste cut
        cut = bool(keys) and "," in text[after_key:pos]
        if pos >= len(text):
            return keys, cut
        if _TRUNCATION.match(text, pos) or text.startswith("..", pos):
            return keys, True
        if text[pos] not in "\"'":
            return keys, cut
        key, pos = _read_quoted(text, pos, text[pos])
        if key is None:
            return keys, True
        if key:
            keys.append(key)
        if text.startswith("...", pos) or text.startswith("…", pos):
            return keys, True


def _parse_unquoted_list(text: str, pos: int) -> tuple[list[str], bool]:
    keys: list[str] = []
    while True:
        m = _UNQUOTED_KEY.match(text, pos)
        if not m:
            return keys, _TRUNCATION.match(text, pos) is not None
        key = m.group(1).rstrip(".:")
        if key.endswith("...") or not key:
            return keys, True
        # A dotless word followed by more words is prose or the next header ("Missing key(s) in
        # state_dict error after ...", an empty list before "Unexpected key(s) ...").
        if "." not in key and re.match(r"[ \t]+[A-Za-z(]", text[m.end():]):
            return keys, False
        keys.append(key)
        pos = m.end()
        sep = re.compile(r"[ \t]*,[ \t]*\n?").match(text, pos)
        if not sep:
            return keys, text[pos:pos + 3] == "..."
        pos = sep.end()


def _parse_list(text: str, pos: int) -> tuple[list[str], bool]:
    m = re.compile(r"[\s`\[{(]*").match(text, pos)
    start = m.end() if m else pos
    if start < len(text) and text[start] in "\"'":
        return _parse_quoted_list(text, pos)
    if _TRUNCATION.match(text, start):
        return [], True
    # the header closes a code block and a dotless word follows ("Missing key(s) in state_dict:"
    # ``` and): the list was left out of the paste, the word is prose
    first = text[start:start + 60].split(None, 1)[:1]
    if "```" in text[pos:start] and first and "." not in first[0]:
        return [], True
    return _parse_unquoted_list(text, start)


def _shape(text: str) -> tuple[int, ...]:
    # a terminal wraps a long line inside a number ("[12\n8, 512]"); sizes are comma-separated
    text = re.sub(r"(?<=\d)[ \t]*\r?\n[ \t]*(?=\d)", "", text)
    return tuple(int(d) for d in re.findall(r"\d+", text))


def _unique(items: Iterable[Any]) -> tuple[Any, ...]:
    return tuple(dict.fromkeys(items))


def _find_mismatches(text: str) -> list[ShapeMismatch]:
    found: list[tuple[int, ShapeMismatch]] = []
    for pattern in _MISMATCH_PATTERNS:
        for m in pattern.finditer(text):
            found.append((m.start(), ShapeMismatch(m.group(1), _shape(m.group(2)), _shape(m.group(3)))))
    return [mm for _, mm in sorted(found, key=lambda t: t[0])]


def _class_name(text: str) -> str | None:
    for pattern in _CLASS_NAMES:
        for m in pattern.finditer(text):
            name = m.group(1).rstrip(".:")
            if name not in ("{}", "model", "the"):
                return name
    return None


_TORCH_UNEXPECTED = re.compile(r"unexpected\s+key\(s\)\s+in\s+state_dict", re.I)
_KEY_RUN = re.compile(r"((?:[\"'][\w.\-/]+[\"']\s*,\s*)*[\"'][\w.\-/]+[\"'])\s*\.?\s*$")


def _orphan_missing(text: str) -> list[str]:
    """Keys pasted without their header, right before PyTorch's ``Unexpected key(s)`` line.

    PyTorch prints the missing keys first, so a headless run of quoted keys there is the tail of
    a missing-key list whose beginning the user did not paste.
    """
    header = _TORCH_UNEXPECTED.search(text)
    run = _KEY_RUN.search(text[:header.start()]) if header else None
    if run is None:
        return []
    keys = re.findall(r"[\"']([\w.\-/]+)[\"']", run.group(1))
    return [k for k in keys if "." in k] if len(keys) >= 2 else []


def parse_error_text(text: str) -> ParsedError:
    """Find every ``load_state_dict`` error in ``text`` and merge what they say.

    Args:
        text: anything that holds the error somewhere (traceback, log, notebook output).

    Returns:
        The missing and unexpected keys and the shape mismatches, in order of appearance and
        without repeats (logs from several ranks repeat the same error), the model's class name
        if the text names it, whether a list was cut short, and whether any error was found.

    Example:
        >>> parse_error_text('Missing key(s) in state_dict: "fc.weight".').missing
        ('fc.weight',)
    """
    text = normalize_text(text)
    lists, truncated, formats = _torch_lists(text)
    named_prefix = None
    report_lists, report_mismatched = load_report(text)
    titles = title_lists(text) if not any(lists.values()) else {}
    truncated = _merge_loader_lists(text, lists, formats, (report_lists, titles)) or truncated
    truncated = truncated or any(titles.values())  # a title names example keys, not the lists
    # Megatron-Core stops at the first tensor whose global shape differs: others may follow.
    truncated = truncated or bool(re.search(r"Global\s+shape\s+mismatch", text))
    mismatched = _find_mismatches(text) + [ShapeMismatch(k, c, s) for k, c, s in
                                           other_mismatches(text) + report_mismatched]
    lookups = [k for k in keyerror_lookups(text) if k not in lists["missing"] + lists["unexpected"]]
    unmatched: list[str] = []
    if not (formats or mismatched or lookups) and (dict_lists := missed_unmatched(text)):
        lists["missing"], unmatched = dict_lists
        formats = ["missed_unmatched"]  # the unmatched are size mismatches without shapes
    if not (formats or mismatched or lookups):
        if keys := headless_keys(text):
            lists["missing"], truncated, formats = keys, True, ["headless"]
        else:
            lists = {k: v for k, v in prose_keys(text).items()}
            # a key beside itself under a wrapper's segment, both on one side: the sentence
            # names the prefix, not two lists (sided apart, the lists decide as usual)
            if wrapped := wrapper_pair(lists["missing"]) or wrapper_pair(lists["unexpected"]):
                lists = {"missing": [], "unexpected": []}
            told = prose_mismatches(text) + listed_mismatches(text)
            mismatched = [ShapeMismatch(k, c, s) for k, c, s in told]
            formats = ["prose"] if any(lists.values()) or mismatched else []
            named_prefix = None if formats else (wrapped or prose_prefix(text))
            formats = formats or (["prose_prefix"] if named_prefix else [])
            truncated = bool(formats)  # a sentence names example keys, not the whole lists
    if not (any(lists.values()) or mismatched or lookups or named_prefix):
        # A header whose list was cut before its first key, or prose: what the sentences name.
        named_prefix = prose_prefix(text) or prose_named_prefix(text)
        state = {} if named_prefix else state_names(text)
        state = state if named_prefix or any(state.values()) else buffer_names(text)
        for kind, keys in state.items():
            lists[kind] += keys
        formats += ["prose_prefix"] if named_prefix else ["prose_state"] if any(state.values()) else []
        truncated = truncated or bool(named_prefix) or any(state.values())
    told = None if any(lists.values()) or mismatched or lookups or named_prefix else (
        told_head_sizes(text) or keyless_row_counts(text))
    formats += ["prose_sizes"] if told else []
    if not any(lists.values()) and _UNUSED_REPORT.search(text):
        formats += ["unlisted_unused"]  # the report's sentence, its list of keys not pasted
    if not (any(lists.values()) or mismatched or lookups) and _UNNAMED_COPY.search(text):
        formats += ["unnamed_size"]
    tail = re.search(r"size\s+mismatch\s+for\s+\S+:(?:(?!torch\.Size\(\[[\d,\s]*\]\)[^\n]*torch\.Size)"
                     r"[^\n])*$", text.rstrip())
    truncated = truncated or (tail is not None and not text.rstrip().endswith(")."))
    shown = {m.key for m in mismatched}
    cut = [k for k in _CUT_MISMATCH.findall(text) + _QUOTED_MISMATCH.findall(text)
           + _NOT_LOADED.findall(text) + CENTERNET_KEY.findall(text) + unmatched if k not in shown]
    truncated = truncated or bool(cut and not mismatched)  # else the tail check above decides
    # a paste that starts at a mismatch's key: the lines before it (key lists, header) are cut
    truncated = truncated or bool(_MISMATCH_PATTERNS[-1].search(text))
    found = bool(formats or mismatched or lookups or cut or _HEADER_ONLY.search(text))
    # a loader that skips tensors of another size lists them as missing after (re-id code bases,
    # fvcore): one tensor, not two findings; torch itself never names a key in both lists
    lists["missing"] = [k for k in lists["missing"] if k not in shown]
    return ParsedError(missing=_unique(lists["missing"]), unexpected=_unique(lists["unexpected"]),
                       mismatched=_unique(mismatched), class_name=_class_name(text),
                       truncated=truncated, found=found, formats=_unique(formats),
                       lookups=_unique(lookups), report=bool(_REPORT.search(text)),
                       parallel=bool(_PARALLEL.search(text)), named_prefix=named_prefix,
                       cut_mismatches=_unique(cut),
                       cut_empty=_unique([k for k in _CUT_EMPTY.findall(text) if k in cut]),
                       head_sizes=told)


def _merge_loader_lists(text: str, lists: dict[str, list[str]], formats: list[str],
                        extras: Iterable[dict[str, list[str]]]) -> bool:
    """Add other loaders' key lists (fvcore, mlx, PyTorch's InstanceNorm message, ``extras``) to
    ``lists`` and ``formats``; true when fvcore's missing list was pasted without its header."""
    stats = running_stats_lists(text)
    for extra in (detectron2_lists(text), mlx_lists(text), *extras, stats):
        for kind, keys in extra.items():
            lists[kind] += keys
            formats += [kind] if keys else []
    formats += ["running_stats"] if stats["unexpected"] else []
    if not lists["missing"] and (cut_top := detectron2_cut_missing(text)):
        lists["missing"] = cut_top
        return True
    return False


def _torch_lists(text: str) -> tuple[dict[str, list[str]], bool, list[str]]:
    """Key lists under PyTorch's, transformers', timm's and mmengine's headers."""
    lists: dict[str, list[str]] = {"missing": [], "unexpected": []}
    truncated, formats = False, []
    for kind, pattern in _LIST_HEADERS:
        for m in pattern.finditer(text):
            keys, cut = _parse_list(text, m.end())
            lists[kind].extend(keys)
            # Only the repr of _IncompatibleKeys prints an empty list ("missing_keys=[]"); every
            # other header is printed for a non-empty list, so no key read means it was cut.
            truncated = truncated or cut or not (keys or "_keys" in m.group())
            formats.append(kind)
    if not lists["missing"] and (orphans := _orphan_missing(text)):
        lists["missing"].extend(orphans)
        truncated = True
    for m in _OLD_KEY.finditer(text):
        lists[m.group(1).lower()].append(m.group(2))
        formats.append("keyerror")
    if _OLD_MISSING_SET.search(text):
        formats.append("missing_set")  # PyTorch <= 0.3: raised after every checkpoint key loaded
    return lists, truncated, formats
