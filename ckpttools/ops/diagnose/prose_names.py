"""What a sentence about a failed load names when it quotes no key list: a prefix, state names.

Reporters describe the failure instead of pasting it: "every key has a "model." prefix", "the
loader expected "head.x" but I got "module.head.x"", "the compiled module is replaced by
`_orig_mod`", "the quantized model has scale and zero_point". Each finder returns what the
sentence names, in the terms the cause rules read (a prefix, key leaves), or nothing.
"""

from __future__ import annotations

import re

# The segments wrappers put in front of a model's keys (DataParallel/DDP, torch.compile,
# accelerate, FSDP, activation checkpointing). Defined in this parser-level module so that the
# parsers and evidence (which imports them) share one list.
WRAPPER_SEGMENTS = frozenset({"module", "_orig_mod", "_forward_module", "_fsdp_wrapped_module",
                              "_checkpoint_wrapped_module"})
_LOAD_WORDS = re.compile(r"state_dict|checkpoint|load|weights|pretrained", re.I)
# "prefix", "prefixed" (or cut: "prefi"), "prepended" and its common misspellings (preprended, prepanded)
_PREFIX_WORDS = re.compile(r"\bprefi|\bpre\w{0,3}p?[ae]nd", re.I)
_QUOTED_PREFIX = re.compile(r"[\"'`]([A-Za-z_]\w*)\.[\"'`]")
_QUOTED_DOTTED = re.compile(r"[\"'`_*]([A-Za-z_][\w\-]*(?:\.[\w\-]+)+)[\"'`_*]")
# torch.compile's and FSDP's segments: no other code names a module so; quoted alone, they are
# the wrapper's prefix whatever the sentence calls it.
_WRAPPER_ONLY = re.compile(r"[\"'`](_orig_mod|_fsdp_wrapped_module|_forward_module)\.?[\"'`]")
# Markdown emphasis around a key (_a.b.c_ or *a.b.c*), as chat and issue editors render it.
_EMPHASIS_KEY = re.compile(r"(?<![\w*])[_*]{1,2}([A-Za-z][\w\-]*(?:\.[\w\-]+)*\.[\w\-]*[A-Za-z0-9])"
                           r"[_*]{1,2}(?![\w*])")
# State a quantized or adapter layer saves in place of weight/bias (torch.ao, bitsandbytes, GPTQ,
# PEFT), named as words in a sentence.
_STATE_NAMES = re.compile(r"\b(zero_point|_packed_params|qweight|qzeros|g_idx|absmax|quant_state"
                          r"|quant_map|SCB|lora_[AB]|lora_(?:up|down))\b")
_UNEXPECTED = re.compile(r"unexpected|not\s+used|extra|unused", re.I)


def named_prefix(text: str) -> str | None:
    """The key prefix a sentence about loading names, if it names one.

    A quoted ``name.`` next to the word prefix (or prepended); a quoted compile/FSDP segment; or
    two quoted keys of which one is the other with one or two leading segments more.
    """
    if not _LOAD_WORDS.search(text):
        return None
    if m := _WRAPPER_ONLY.search(text):
        return m.group(1) + "."
    if _PREFIX_WORDS.search(text) and (m := _QUOTED_PREFIX.search(text)):
        return m.group(1) + "."
    keys = list(dict.fromkeys(m.group(1) for m in _QUOTED_DOTTED.finditer(text)))
    for short in keys:
        for long in keys:
            parts = long.split(".")
            for n in (1, 2):
                if len(parts) > n and ".".join(parts[n:]) == short:
                    return ".".join(parts[:n]) + "."
    return None


def wrapper_pair(keys: list[str]) -> str | None:
    """The wrapper segment that tells apart two keys read on one side (``_orig_mod.a.b`` beside
    ``a.b``, both taken as missing): the reporter contrasts the saved name with the expected one,
    which no list of a real load holds together; ``None`` when no two keys are so related."""
    names = set(keys)
    for key in names:
        seg, _, rest = key.partition(".")
        if seg in WRAPPER_SEGMENTS and rest in names:
            return seg + "."
    return None


def emphasis_keys(sentence: str) -> list[str]:
    """Dotted keys set in markdown emphasis (``_a.b.weight_``), which quote-based finders miss."""
    return [m.group(1) for m in _EMPHASIS_KEY.finditer(sentence) if "." in m.group(1)]


def state_names(text: str) -> dict[str, list[str]]:
    """Quantization or adapter state (``zero_point``, ``qweight``, ``lora_A``) a sentence about
    loading names as words, on the side it says (unexpected unless it says missing only); with
    ``zero_point``, torch.ao's ``scale`` too."""
    if not (_LOAD_WORDS.search(text) and re.search(r"missing|unexpected|not\s+used|extra", text, re.I)):
        return {"missing": [], "unexpected": []}  # a sentence about keys that failed to load
    names = list(dict.fromkeys(m.group(1) for m in _STATE_NAMES.finditer(text)))
    if "zero_point" in names and re.search(r"\bscales?\b", text):
        names.append("scale")
    side = "unexpected" if _UNEXPECTED.search(text) or not re.search(r"missing", text, re.I) else "missing"
    return {"missing": [], "unexpected": [], side: names}


# Buffers a library version added or dropped (PyTorch 0.4's num_batches_tracked, transformers'
# position_ids/masked_bias), named as words: the tensor is named, the layer path is not.
_BUFFER_NAMES = re.compile(r"\b(num_batches_tracked|position_ids|masked_bias|inv_freq)\b")
_FAILED = re.compile(r"KeyError|missing|expects?|unexpected|not\s+used|extra|unused|error|crash", re.I)


def buffer_names(text: str) -> dict[str, list[str]]:
    """Version buffers a sentence about a failed load names as words ("normalization layers now
    track ``num_batches_tracked`` ... it expects these tensors and crashes on a KeyError"), on
    the side it says: missing (the model expects them) unless it says unexpected or unused."""
    names = list(dict.fromkeys(m.group(1) for m in _BUFFER_NAMES.finditer(text)))
    if not names or not (_LOAD_WORDS.search(text) and _FAILED.search(text)):
        return {"missing": [], "unexpected": []}
    side = "unexpected" if re.search(r"unexpected|not\s+used|unused", text, re.I) else "missing"
    return {"missing": [], "unexpected": [], side: names}


# "the current model's head has 41 channels, the checkpoint's head has 81": a count per side.
_COUNT = re.compile(r"\b(\d+)\s+(?:output\s+)?(?:classes|channels|outputs|labels|categories)\b", re.I)
_CKPT_SIDE = re.compile(r"checkpoint|pretrained|saved|ckpt|weights", re.I)
_MODEL_SIDE = re.compile(r"\bmodel\b|\bcurrent\b", re.I)
_HEAD_WORDS = re.compile(r"head|classifier|output\s+layer", re.I)


def told_head_sizes(text: str) -> tuple[int, int] | None:
    """``(checkpoint, model)`` counts sentences tell for an output head ("the current model
    detection head has 41 channels, the checkpoint detection head has 81 channels").

    Each count's clause names a head and its side; the checkpoint's words win ("the pretrained
    model's head"). Both sides, two different counts, or nothing.
    """
    sizes: dict[str, int] = {}
    for m in _COUNT.finditer(text):
        clause = re.split(r"[.,;:\n]", text[:m.start()])[-1]
        if not _HEAD_WORDS.search(clause):
            continue
        side = "checkpoint" if _CKPT_SIDE.search(clause) else "model" if _MODEL_SIDE.search(clause) else ""
        if side:
            sizes.setdefault(side, int(m.group(1)))
    ckpt, model = sizes.get("checkpoint"), sizes.get("model")
    return (ckpt, model) if ckpt is not None and model is not None and ckpt != model else None


# PyTorch's size-mismatch sentence without its "size mismatch for <key>:" (an issue title cut to
# GitHub's length keeps the end of the line): the two shapes, no key.
_KEYLESS_SHAPES = re.compile(
    r"copying\s+a\s+param\s+with\s+shape\s+torch\.Size\(\[([\d,\s]*)\]\)\s+from\s+checkpoint,"
    r"\s+the\s+shape\s+in\s+current\s+model\s+is\s+torch\.Size\(\[([\d,\s]*)\]\)")


def keyless_row_counts(text: str) -> tuple[int, int] | None:
    """``(checkpoint, model)`` rows of a size-mismatch sentence that names no key, when the two
    shapes differ in their rows alone: a count (classes, characters, vocabulary) of some head,
    which a candidate reads as such; another axis (a width) is not told here."""
    if re.search(r"size\s+mismatch\s+for\s+\S", text) or not (m := _KEYLESS_SHAPES.search(text)):
        return None
    ckpt, model = ([int(x) for x in g.replace(" ", "").split(",") if x] for g in m.groups())
    if len(ckpt) != len(model) or not ckpt or ckpt[0] == model[0] or ckpt[1:] != model[1:]:
        return None
    return ckpt[0], model[0]
