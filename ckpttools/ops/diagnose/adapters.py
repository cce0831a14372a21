"""The adapter and quantization rule: LoRA/PEFT keys, quantization state, on one side or resized.

Library naming conventions decide it: PEFT's ``base_model.model.``/``base_layer``/``lora_A``,
torchtune's ``lora_a``, kohya's ``lora_up``, bitsandbytes' ``absmax``, GPTQ's ``qweight``,
torch.ao's ``_packed_params``/``scale``/``zero_point``, gpt-fast's ``scales``.
"""

from __future__ import annotations

import re

from ckpttools.ops.diagnose.evidence import Evidence, Finding

_ADAPTER = re.compile(
    # PEFT's lora_A/lora_B, torchtune's lora_a/lora_b, kohya's lora_up/lora_down
    r"lora_[ABab](?![a-z])|lora_(up|down|magnitude|embedding)|\.base_layer\.|modules_to_save|hada_w|lokr_"
    r"|(^|\.)(absmax|quant_map|quant_state|SCB|weight_format|qweight|qzeros|g_idx|weight_scale"
    r"|input_scale|nested_absmax|nested_quant_map|zero_point|_packed_params|\w*quantizer\w*"
    # int8/int4 weight-only quantization (gpt-fast, torchchat, GPTQ): per-channel or per-group scales
    r"|scales|scales_and_zeros"
    r"|\w*fake_quant\w*)(\.|$)")
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
    """LoRA/adapter keys or quantization state on one side only."""
    if _peft_file(ev):
        hits = [k for k in ev.unexpected if _ADAPTER.search(k)]
        return Finding("adapter_or_quantization", 0.92, frozenset(ev.missing + ev.unexpected),
                       {"examples": hits[:3], "count": len(hits), "quantized": False,
                        "side": "unexpected", "peft": True})
    # Low-rank or quantization tensors of another size (LoRA rank, block size) count too; not
    # base_layer/modules_to_save copies, whose size follows the base model.
    resized = tuple(m.key for m in ev.mismatched if _ADAPTER.search(m.key) and not _FULL_COPY.search(m.key))
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
