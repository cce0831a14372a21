"""The adapter and quantization rule: LoRA/PEFT keys, quantization state, on one side or resized.

Library naming conventions decide it: PEFT's ``base_model.model.``/``base_layer``/``lora_A``,
torchtune's ``lora_a``, kohya's ``lora_up``, bitsandbytes' ``absmax``, GPTQ's ``qweight``,
torch.ao's ``_packed_params``/``scale``/``zero_point``, gpt-fast's ``scales``. One vocabulary of
quantization leaves serves both readings: keys named as quantization state, and a layer's
weight-only quantized layout on one side with its float ``weight``/``bias`` on the other.
"""

from __future__ import annotations

import re

from ckpttools.ops.diagnose.evidence import Evidence, Finding, numel, packed_4bit, zero_count_keys

# What weight-only quantized linears save in place of weight: GPTQ/AutoGPTQ qweight/qzeros/g_idx,
# lit-gpt's quant_weight/scales/zeros, gpt-fast/torchchat's int8 scales, torch.ao's scale and
# zero_point.
WEIGHT_ONLY_LEAVES = frozenset({"quant_weight", "qweight", "qzeros", "scales", "zeros", "g_idx",
                                "scales_and_zeros", "weight_scales", "scale", "zero_point"})
# Leaves other layers use too (a scaling layer's scale, a zeros buffer): quantization only beside
# a float weight of the same layer (the layout reading), never by name alone.
_AMBIGUOUS = frozenset({"scale", "zeros"})
_WEAK_QUANT = frozenset({"scale", "scales"})  # "scale(s)" alone is weaker than the others
_QUANTIZED_WEIGHTS = frozenset({"qweight", "quant_weight"})
# Quantization state of other libraries: bitsandbytes (absmax, quant_map, SCB), fp8 (weight_scale,
# input_scale), torch.ao (_packed_params).
_STATE_LEAVES = ("absmax", "quant_map", "quant_state", "SCB", "weight_format", "weight_scale",
                 "input_scale", "nested_absmax", "nested_quant_map", "_packed_params")
# Leaf names that are quantization state by name alone (what reads a quantized weight; not a
# buffer to drop unread). scale and zeros are other layers' buffers too.
QUANT_STATE_LEAVES = (frozenset(_STATE_LEAVES) | WEIGHT_ONLY_LEAVES
                      | {"delta", "bitsandbytes__nf4", "bitsandbytes__fp4"}) - _AMBIGUOUS
_QUANT_NAMES = "|".join(sorted(set(_STATE_LEAVES) | (WEIGHT_ONLY_LEAVES - _AMBIGUOUS),
                               key=lambda n: (-len(n), n)))
_ADAPTER = re.compile(
    # PEFT's lora_A/lora_B, torchtune's lora_a/lora_b, kohya's lora_up/lora_down
    r"lora_[ABab](?![a-z])|lora_(up|down|magnitude|embedding)|\.base_layer\.|modules_to_save|hada_w|lokr_"
    rf"|(^|\.)({_QUANT_NAMES}|\w*quantizer\w*|\w*fake_quant\w*)(\.|$)")
# torch.ao dynamic/static quantization: a quantized layer saves scale, zero_point and
# _packed_params (its weight and bias packed) in place of weight and bias.
_QUANT_LAYER = re.compile(r"^(.*?)\.(zero_point|_packed_params)(\.|$)")
_FULL_COPY = re.compile(r"\.base_layer\.|modules_to_save")
_PEFT_PREFIX = "base_model.model."


def _peft_file(ev: Evidence) -> bool:
    """Every checkpoint key is a PEFT model's (``base_model.model.`` in front; ``base_layer`` or
    ``lora_*`` inside) over the model's own keys: a PEFT model's state_dict, or its adapter alone,
    given to the plain model. PEFT's naming convention decides it, not a prefix."""
    if not ev.unexpected or not all(k.startswith(_PEFT_PREFIX) for k in ev.unexpected):
        return False
    missing, modules = set(ev.missing), {k.rpartition(".")[0] for k in ev.missing}
    inner = [k[len(_PEFT_PREFIX):].replace(".base_layer.", ".") for k in ev.unexpected]
    lora = [k.split(".lora_")[0] for k in inner if ".lora_" in k]
    maps = sum(k in missing for k in inner) + sum(m in modules for m in lora)
    return bool(lora) and maps >= 0.9 * len(inner)


def adapter_or_quantization(ev: Evidence) -> Finding | None:
    """LoRA/adapter keys or quantization state on one side only, or a quantized layout.

    Both readings of the quantization leaves run; the more confident one speaks and the keys
    either explains are explained (the catch-all rules read only what is left).
    """
    if _peft_file(ev):
        hits = [k for k in ev.unexpected if _ADAPTER.search(k)]
        return Finding("adapter_or_quantization", 0.92, frozenset(ev.missing + ev.unexpected),
                       {"examples": hits[:3], "count": len(hits), "quantized": False,
                        "side": "unexpected", "peft": True})
    found = [f for f in (_named_state(ev), _quantized_layout(ev), _packed_layout(ev)) if f is not None]
    if not found:
        return None
    best = max(found, key=lambda f: f.confidence)
    return Finding(best.label, best.confidence, frozenset().union(*(f.explains for f in found)),
                   best.facts)


def _named_state(ev: Evidence) -> Finding | None:
    """Keys named as adapter or quantization state, on one side or of another size."""
    # Low-rank or quantization tensors of another size (LoRA rank, block size) count too; not
    # base_layer/modules_to_save copies, whose size follows the base model.
    # Nor an empty tensor: a rank is at least 1, so a flattened [0] is a partitioned parameter's
    # placeholder (ZeRO-3 saved without gathering), whatever the key is named.
    empty = {m.key for m in ev.mismatched if 0 in (numel(m.checkpoint_shape), numel(m.model_shape))}
    empty -= zero_count_keys(ev.mismatched)
    resized = tuple(m.key for m in ev.mismatched if _ADAPTER.search(m.key)
                    and not _FULL_COPY.search(m.key) and m.key not in empty)
    keys = ev.missing + ev.unexpected + resized
    hits = [k for k in keys if _ADAPTER.search(k)]
    # The float weight/bias and scale of a quantized layer belong to the same change.
    layers = {m.group(1) for k in hits if (m := _QUANT_LAYER.match(k))}
    # torch.ao's quantized Linear saves scale and zero_point where the float layer has weight
    missing = set(ev.missing)
    layers |= {k.rpartition(".")[0] for k in ev.unexpected if k.rpartition(".")[2] in
               ("scale", "zero_point") and k.rpartition(".")[0] + ".weight" in missing}
    hits += [k for k in keys if k not in hits and k.rpartition(".")[0] in layers]
    # a cut text whose every checkpoint key shown is a quantized layer's: the rest is cut away
    cut_quantized = ev.truncated and layers and all(k in hits for k in ev.unexpected)
    if not hits or (len(hits) < 0.3 * len(keys) and not cut_quantized):
        return None
    quant = any(re.search(r"absmax|quant|qweight|qzeros|SCB|g_idx|scale|zero_point", k) for k in hits)
    side = ("unexpected" if all(k in ev.unexpected for k in hits) else
            "missing" if any(k in ev.missing for k in hits) else
            "resized" if all(k in resized for k in hits) else "unexpected")
    conf = 0.5 + 0.45 * len(hits) / len(keys)
    return Finding("adapter_or_quantization", max(conf, 0.75) if cut_quantized else conf, frozenset(hits),
                   {"examples": hits[:3], "count": len(hits), "quantized": quant, "side": side})


def _packed_layout(ev: Evidence) -> Finding | None:
    """Weights one side holds packed two 4-bit values to a byte (``[n/2, 1]``, bitsandbytes'
    ``Params4bit``) where the other holds them whole: a model built 4-bit given a float file
    through ``load_state_dict``, or the other way round."""
    hits = [m for m in ev.mismatched if packed_4bit(m.checkpoint_shape, m.model_shape)]
    if not hits or len(hits) < 0.5 * len(ev.mismatched):
        return None
    packed_model = all(len(m.model_shape) == 2 and m.model_shape[1] == 1 for m in hits)
    return Finding("adapter_or_quantization", 0.9, frozenset(m.key for m in hits),
                   {"examples": [m.key for m in hits[:3]], "count": len(hits), "quantized": True,
                    "side": "resized", "packed": "model" if packed_model else "checkpoint"})


def _quantized_layout(ev: Evidence) -> Finding | None:
    """Layers whose keys are a quantized layout's (``scales``, ``zeros``, ``qweight``) on one side,
    their float ``weight``/``bias`` (or nothing) on the other: a quantized model and a float file,
    or the other way round. One side made only of such keys decides for a cut other side."""
    mm = [m.key for m in ev.mismatched]
    keys = ev.missing + ev.unexpected + tuple(mm)
    hits = [k for k in keys if k.rpartition(".")[2] in WEIGHT_ONLY_LEAVES]
    if not hits:
        return None
    layers = {k.rpartition(".")[0] for k in hits}
    explained = set(hits) | {k for k in keys if k.rpartition(".")[0] in layers
                             and k.rpartition(".")[2] in ("weight", "bias")}
    leaves = {k.rpartition(".")[2] for k in hits}
    if leaves <= _WEAK_QUANT and len(explained) == len(hits) and not set(hits) <= set(mm):
        return None  # a lone "scale" buffer (LPIPS' scaling layer) without a float weight beside it
    sides = [s for s in (ev.missing, ev.unexpected, tuple(mm)) if s]
    one_side_all = any(all(k in hits for k in s) for s in sides)
    if one_side_all and all(k in hits or k.rpartition(".")[2] in ("weight", "bias") for k in keys):
        explained = set(keys)  # quantized state on one side, float weights on the other: all layers
    share = len(explained) / len(keys)
    if share < 0.5 and not one_side_all:
        return None
    # A quantized weight (qweight), or the float weight the layout replaces shown beside it:
    # scales and zeros alone are buffers many layers have.
    anchored = bool(leaves & _QUANTIZED_WEIGHTS) or len(explained) > len(hits)
    strong = bool(leaves - _WEAK_QUANT) and len(leaves) >= 2 and anchored
    # names read from a sentence (no module path) are examples, not a layer's keys
    conf = 0.85 if strong and share >= 0.8 and all("." in k for k in hits) else 0.7
    side = ("missing" if any(k in ev.missing for k in hits) else
            "resized" if set(hits) <= set(mm) else "unexpected")
    return Finding("adapter_or_quantization", conf, frozenset(explained),
                   {"examples": hits[:3], "count": len(hits), "quantized": True, "side": side})
