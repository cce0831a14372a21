"""Putting findings into words: what happened, the evidence, the fix as code and as a command."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ckpttools.ops.diagnose.buffer_fixes import buffers_text
from ckpttools.ops.diagnose.shape_fixes import (
    architecture_text, code_changed_text, head_text, new_head_text, profiler_text, renamed_text,
    wrong_model_text)
from ckpttools.ops.diagnose.evidence import Evidence, Finding
from ckpttools.ops.diagnose.snippet_text import regex_literal as _re, shell_quoted as _q
from ckpttools.ops.diagnose.prose_names import WRAPPER_SEGMENTS

_LOAD = 'sd = torch.load("{ckpt}", map_location="cpu", weights_only=True)\n'
# torch.ao's dynamic quantization redone on the model. Quantized layers read the format version their state was saved in; a state saved as a plain
# dict (a comprehension, safetensors) lost it, and they would then look for float weights.
QUANTIZE_DYNAMIC = (
    "model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)\n"
    'if getattr(sd, "_metadata", None) is None:  # saved as a plain dict: give the layers\' versions\n'
    "    sd = collections.OrderedDict(sd)\n"
    '    sd._metadata = {name: {"version": m._version} for name, m in model.named_modules()}\n')
# A first line of a printed fix that the user sets: what the text cannot name (a file, a folder).
SETTING = re.compile(r"^([A-Z][A-Z0-9_]*) = .*  # set: ")


@dataclass(frozen=True)
class Cause:
    """One explained cause: label, confidence, plain words, evidence and the fix."""

    label: str
    confidence: float
    summary: str
    evidence: Mapping[str, Any] = field(default_factory=dict)
    fix_code: str = ""
    fix_command: str | None = None
    confirm_command: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (stable schema, see the README)."""
        return {"label": self.label, "confidence": round(self.confidence, 2),
                "summary": self.summary, "evidence": dict(self.evidence),
                "fix": {"code": self.fix_code, "command": self.fix_command,
                        "confirm": self.confirm_command}}


def _prefix(f: Finding, ev: Evidence) -> tuple[str, str, list[str]]:
    p, infix = f.facts["prefix"], f.facts["infix"]
    inner = p.rstrip(".")
    # module./_orig_mod. come from a wrapper; another name (bert., transformer., backbone.) is a
    # model holding this one under that attribute (a task model around its base model)
    wrapper = all(s in WRAPPER_SEGMENTS for s in inner.split("."))
    if f.label == "prefix_added":
        origin = ("saved from a wrapped model" if wrapper else
                  f"saved from a model that holds this one as '{inner}' (a task model around its "
                  "base model, or a wrapper)")
        what = (f"the checkpoint was {origin}: its keys carry '{p}' "
                f"({'inside the key' if infix else 'in front'}) that the model's keys do not")
        # a holder's other parts (a task model's head) are not this model's: only its keys load
        code = (f'sd = {{k.replace(".{inner}.", "."): v for k, v in sd.items()}}' if infix else
                f'sd = {{k.removeprefix("{p}"): v for k, v in sd.items()}}' if wrapper else
                f'sd = {{k.removeprefix("{p}"): v for k, v in sd.items() if k.startswith("{p}")}}')
        args = ["--rename", _q(rf"\.{_re(inner)}\.=.")] if infix else ["--strip-prefix", _q(p)]
        if f.facts.get("guessed"):  # which wrapper is not shown: strip whichever the file has
            code = ("own = model.state_dict()\n"
                    f"wrappers = {tuple(sorted(WRAPPER_SEGMENTS))!r}\n"
                    "def unwrapped(k):\n"
                    '    while k not in own and k.split(".", 1)[0] in wrappers and "." in k:\n'
                    '        k = k.split(".", 1)[1]\n'
                    "    return k\n"
                    "sd = {unwrapped(k): v for k, v in sd.items()}")
    else:
        what = (f"the model was wrapped (e.g. DataParallel/DDP/torch.compile) before loading, so it "
                f"expects '{p}' in its keys that the checkpoint does not have" if wrapper else
                f"the model holds the checkpoint's model as '{inner}' (a task model around its base "
                f"model, or a wrapper), so it expects '{p}' in its keys that the checkpoint does not have")
        code = ("# load into the inner module before wrapping, e.g. model.module.load_state_dict(sd)\n"
                + (f'sd = {{"{p}" + k: v for k, v in sd.items()}}' if not infix else
                   "model = getattr(model, \"module\", model)"))
        args = ["--add-prefix", _q(p)] if not infix else []
    if f.facts.get("guessed"):
        what = "most likely (the text shows the model's keys only) " + what
    return what, code + "\nmodel.load_state_dict(sd)", args


def _wrapped(f: Finding, ev: Evidence) -> tuple[str, str, list[str]]:
    if f.facts.get("container") is None and f.facts.get("one_sided"):
        # only the model's keys are shown: the file's entries are a guess, said as one
        what = ("if the file is a whole training checkpoint (a dict such as {'state_dict': ..., "
                "'epoch': ...}), the model's weights are one of its entries: load that entry")
        code = (_setting("ENTRY", '"state_dict"', "the entry holding the model's weights "
                                                    "(print(list(ckpt)) lists them)")
                + 'ckpt = torch.load("{ckpt}", map_location="cpu", weights_only=True)\n'
                + "model.load_state_dict(ckpt[ENTRY])")
        return what, code, []
    c = f.facts.get("container") or "state_dict"
    what = (f"a whole training checkpoint (top-level keys: {', '.join(f.facts['top_keys'][:6])}) "
            f"was passed to load_state_dict; the model's weights are one entry of it ('{c}')")
    code = (f'ckpt = torch.load("{{ckpt}}", map_location="cpu", weights_only=True)\n'
            f'model.load_state_dict(ckpt["{c}"])')
    return what, code, ["@convert", "--key", _q(c)]


def _setting(name: str, value: str, what: str) -> str:
    """A first line of a snippet that names what the text cannot give: the user sets it."""
    return f"{name} = {value}  # set: {what}\n"


def _optimizer(f: Finding, ev: Evidence) -> tuple[str, str, list[str]]:
    what = ("an optimizer's state_dict ('state', 'param_groups') was loaded into the model; "
            "load the model's file (or the model entry of the checkpoint) instead")
    heads = [h for h in f.facts["examples"] if h not in ("state", "param_groups")]
    code = _setting("MODEL_WEIGHTS", '"model_weights.pth"', "the file with the model's own state_dict")
    if heads:  # a file of several optimizers (optimG, optimD): the text cannot say whose is whose
        code += _setting("ENTRY", f'"{heads[0]}"', f"this optimizer's entry ({', '.join(heads)})")
    code += 'model.load_state_dict(torch.load(MODEL_WEIGHTS, map_location="cpu", weights_only=True))\n'
    if heads:
        code += ('optimizers = torch.load("{ckpt}", map_location="cpu", weights_only=True)\n'
                 "optimizer.load_state_dict(optimizers[ENTRY])")
    else:
        code += 'optimizer.load_state_dict(torch.load("{ckpt}", map_location="cpu", weights_only=True))'
    return what, code, []


def _adapter(f: Finding, ev: Evidence) -> tuple[str, str, list[str]]:
    if f.facts["quantized"]:
        return _quantized(f, ev)
    if f.facts["side"] == "resized":
        what = ("the adapter tensors (lora_A/lora_B or quantization state) have another size than the "
                "model's: the adapter was saved with another configuration (LoRA rank r, target "
                "modules, block size); build the adapter with the checkpoint's configuration")
        code = (_setting("ADAPTER_DIR", '"path/to/adapter"', "the adapter's folder (adapter_config.json)")
                + "from peft import PeftModel\n"
                "# unload() drops the adapter layers built with the wrong r; from_pretrained reads\n"
                "# r and the target modules from adapter_config.json\n"
                "model = PeftModel.from_pretrained(model.unload(), ADAPTER_DIR)")
        return what, code, []
    if f.facts["side"] == "unexpected":
        what = ("the checkpoint holds adapter weights (LoRA lora_A/lora_B, base_layer) that the plain "
                "model has no slots for; merge the adapter into the base model or load it with PEFT")
        code = (_setting("ADAPTER_DIR", '"path/to/adapter"',
                         "the folder PEFT's save_pretrained wrote (adapter_config.json)")
                + "from peft import PeftModel\n"
                "# model: the base model, its own weights loaded\n"
                "model = PeftModel.from_pretrained(model, ADAPTER_DIR).merge_and_unload()")
        return what, code, ["--drop", _q(r"lora_|\.base_layer\.")]
    what = ("the model has adapter layers (LoRA) that the base checkpoint does not hold; load the base "
            "weights before adding the adapter, or load non-strictly so only the adapter stays new")
    code = ("result = model.load_state_dict(sd, strict=False)\n"
            'assert all("lora_" in k for k in result.missing_keys)')
    return what, code, []


def _quantized(f: Finding, ev: Evidence) -> tuple[str, str, list[str]]:
    """torch.ao's dynamic quantization can be redone on the model (code); bitsandbytes/GPTQ state
    needs the quantization library and the model's config, which the text does not give (words)."""
    # torch.ao's packed Linear weights in the checkpoint (the float weight is then missing)
    if any("._packed_params." in k for k in ev.unexpected):
        what = ("the checkpoint was saved from a model quantized with torch.ao's quantize_dynamic "
                "(its Linear layers hold _packed_params, scale and zero_point); quantize the model "
                "the same way before loading (dtype: the file's _packed_params.dtype, int8 by default)")
        code = QUANTIZE_DYNAMIC + "model.load_state_dict(sd)"
        return what, code, []
    if f.facts.get("packed") == "model":
        what = ("the model was built with 4-bit weights (bitsandbytes packs two values to a byte: "
                "[n/2, 1]) and the checkpoint holds them whole; build the model without 4-bit "
                "loading (load_in_4bit/--load-4bit) to load this file, or load it through the "
                "library that quantizes (from_pretrained with the quantization_config)")
        return what, "", []
    what = ("the checkpoint holds quantized weights (bitsandbytes/GPTQ state such as absmax, "
            "quant_map, qweight) where the model has plain ones, or the other way round; build the "
            "model with the quantization config the file was saved with (transformers' "
            "from_pretrained(..., quantization_config=...)), or save dequantized weights "
            "(model.dequantize() before saving)")
    return what, "", []


def _ema(f: Finding, ev: Evidence) -> tuple[str, str, list[str]]:
    p = f.facts["prefix"]
    what = (f"the checkpoint carries an EMA/teacher copy of the weights (keys starting '{p}') next "
            "to the model's; use one copy, under the model's names")
    code = (f'ema = {{k.removeprefix("{p}"): v for k, v in sd.items() if k.startswith("{p}")}}\n'
            "model.load_state_dict(ema)  # or drop them to use the raw weights")
    return what, code, ["--drop", _q("^" + _re(p))]


def _tied(f: Finding, ev: Evidence) -> tuple[str, str, list[str]]:
    keys = ", ".join(f.facts["examples"])
    if "through" in f.facts:  # from files: the tie is the model's own, and the plan restores it
        pairs = ", ".join(f"{a} is {b}" for a, b in zip(f.facts["examples"], f.facts["through"]))
        return (f"the model ties parameters ({pairs}): the checkpoint stores each tensor once, "
                "so load_state_dict(strict=True) misses the other name; from_pretrained and "
                "model.tie_weights() re-tie them"), "", []
    what = (f"{keys} is tied to the input embedding, so the checkpoint does not store it separately"
            if f.facts["side"] == "missing" else
            f"the checkpoint stores {keys}, which this model ties to the input embedding")
    layers = [k.rpartition(".")[0] for k in f.facts["examples"]]
    if f.facts["side"] != "missing":
        code = (f"for key in {list(f.facts['examples'])!r}:  # the model reads the embedding instead\n"
                "    sd.pop(key)\nmodel.load_state_dict(sd)")
        return what, code, []
    # tie each output layer to the input embedding of its shape, as the saved model was tied
    code = ("result = model.load_state_dict(sd, strict=False)\n"
            f"assert set(result.missing_keys) <= {set(f.facts['examples'])!r}, result\n"
            f"for name in {layers!r}:\n"
            "    out = model.get_submodule(name)\n"
            "    out.weight = next(m.weight for m in model.modules()\n"
            "                      if isinstance(m, torch.nn.Embedding) and m.weight.shape == out.weight.shape)")
    return what, code, []


# The order a fused projection stacks its parts in: q, k, v (gate, up for an MLP's gate_up).
_PART_ORDER = {"q": 0, "query": 0, "wq": 0, "k": 1, "key": 1, "wk": 1, "v": 2, "value": 2, "wv": 2,
               "gate": 0, "w1": 0, "up": 1, "w3": 1}


def _part(name: str) -> int | None:
    return _PART_ORDER.get(name.removeprefix("to_").removesuffix("_proj").removesuffix("_lin"))


def _fused(f: Finding, ev: Evidence) -> tuple[str, str, list[str]]:
    side = f.facts["fused_side"]
    split = sorted(f.facts["split"], key=lambda n: _part(n) if _part(n) is not None else 9)
    fused = f.facts["fused"]
    what = (f"the {'model' if side == 'model' else 'checkpoint'} uses one fused projection "
            f"({'/'.join(fused) or 'not shown, likely qkv'}) where the "
            f"{'checkpoint' if side == 'model' else 'model'} has separate ones ({'/'.join(split)}); "
            "the rows of the fused weight are the separate weights stacked in that order")
    # nn.MultiheadAttention's in_proj_weight is a parameter, not a module; parts of no known role
    # cannot be ordered: words only
    if len(fused) > 1 or any(n.startswith("in_proj") for n in fused) or None in map(_part, split) \
            or len(split) not in (2, 3):
        return what, "", []
    # the fused layer's name is not in the text when only the split side is shown
    code = "" if fused else _setting("FUSED", '"qkv"', "the fused layer's name in the other file")
    name, parts = (repr(fused[0]) if fused else "FUSED"), repr(tuple(split))
    target = fused[0] if fused else "{FUSED}"  # in the f-string the snippet writes
    # the keys to rewrite: the checkpoint's first part (model fused) or its fused layer
    layer = repr(split[0]) if side == "model" else name
    code += (f"layer = {layer}\n"
             'for k in [k for k in sd if re.search(r"(^|\\.)" + re.escape(layer) + r"\\.(weight|bias)$", k)]:\n'
             '    head, leaf = k.rsplit(layer + ".", 1)\n')
    if side == "model":  # the checkpoint's separate weights, stacked into the model's fused layer
        code += (f"    parts = [sd.pop(f\"{{head}}{{n}}.{{leaf}}\") for n in {parts}]\n"
                 f"    sd[f\"{{head}}{target}.{{leaf}}\"] = torch.cat(parts, dim=0)\n")
    else:  # the checkpoint's fused weight, cut into the model's separate layers
        code += (f"    for n, t in zip({parts}, sd.pop(k).chunk({len(split)}, dim=0)):\n"
                 "        sd[f\"{head}{n}.{leaf}\"] = t\n")
    return what, code + "model.load_state_dict(sd)", []


def _partitioned(f: Finding, ev: Evidence) -> tuple[str, str, list[str]]:
    if k := f.facts.get("factor"):
        return _tensor_parallel(f, k)
    if f.facts["side"] == "model":
        what = ("the model's parameters are partitioned (DeepSpeed ZeRO-3/FSDP): load the full weights "
                "before partitioning (before deepspeed.initialize or FSDP wrapping), or through the "
                "engine's load_checkpoint")
        return what, "", []
    what = ("the checkpoint was saved from partitioned parameters (DeepSpeed ZeRO-3/FSDP): it holds "
            "empty or placeholder tensors; ignoring the size mismatch would load garbage. Gather the "
            "full weights from the DeepSpeed checkpoint folder (below), or save FSDP models with "
            "get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))")
    code = (_setting("CHECKPOINT_DIR", '"path/to/checkpoint"',
                     "the DeepSpeed checkpoint folder (holds latest and global_step*/)")
            + "from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint\n"
            "sd = get_fp32_state_dict_from_zero_checkpoint(CHECKPOINT_DIR)\n"
            "model.load_state_dict(sd)")
    return what, code, []


def _tensor_parallel(f: Finding, k: int) -> tuple[str, str, list[str]]:
    """Merge the ranks' pieces (or cut the full file) on the axis where each tensor differs from
    the model's: the axis is read per tensor, so column- and row-parallel layers both work."""
    if f.facts["side"] == "checkpoint":
        what = (f"the checkpoint holds 1/{k} of each tensor on one axis: a tensor-parallel shard (one "
                f"rank's file); merge the {k} ranks' files on that axis, or load with the parallel "
                "size the file was saved with")
        code = (_setting("RANK_FILES", f'[f"rank{{i}}.pt" for i in range({k})]',
                         f"the {k} ranks' files, in rank order")
                + "shards = [torch.load(f, map_location=\"cpu\", weights_only=True) for f in RANK_FILES]\n"
                "full = model.state_dict()\n"
                "merged = {}\n"
                "for key, piece in shards[0].items():\n"
                "    # the axis where a rank's piece is smaller than the model's; none: replicated\n"
                "    axis = next((d for d in range(piece.dim()) if piece.shape[d] != full[key].shape[d]), None)\n"
                "    merged[key] = piece if axis is None else torch.cat([s[key] for s in shards], dim=axis)\n"
                "model.load_state_dict(merged)")
        return what, code, []
    what = (f"the model holds 1/{k} of each tensor on one axis (built for {k}-way tensor "
            "parallelism) and the checkpoint the whole tensors; load this rank's piece of each, or "
            "build the model without tensor parallelism")
    code = (_setting("RANK", "0", f"this process's tensor-parallel rank (0 to {k - 1})")
            + "piece = model.state_dict()\n"
            "merged = {}\n"
            "for key, t in torch.load(\"{ckpt}\", map_location=\"cpu\", weights_only=True).items():\n"
            "    axis = next((d for d in range(t.dim()) if t.shape[d] != piece[key].shape[d]), None)\n"
            "    merged[key] = t if axis is None else t.chunk(t.shape[axis] // piece[key].shape[axis], dim=axis)[RANK]\n"
            "model.load_state_dict(merged)")
    return what, code, []


def _transposed(f: Finding, ev: Evidence) -> tuple[str, str, list[str]]:
    keys = f.facts["keys"]
    pattern = "|".join(sorted({_re(k.rsplit(".", 2)[-2]) for k in keys}))
    if f.facts.get("swapped", True):
        n = f.facts["count"]
        what = (f"{n} 2-D {'weight has its shape' if n == 1 else 'weights have their shapes'} "
                "swapped: one side stores them as nn.Linear (out, in), the other as GPT-2's "
                "Conv1D (in, out)")
        # every such weight, not only those the text shows (PyTorch <= 0.3 stops at the first)
        code = ("own = model.state_dict()\n"
                "for k, v in sd.items():  # stored (in, out) where the model holds (out, in)\n"
                "    if k in own and v.dim() == 2 and v.shape != own[k].shape and v.t().shape == own[k].shape:\n"
                "        sd[k] = v.t().contiguous()\n"
                "model.load_state_dict(sd)")
        return what, code, []
    else:
        what = (f"{f.facts['count']} weights hold the same elements with their axes in another order "
                "(a kernel layout of another library version); permute them (check the axis order)")
        move = f"sd[k].permute{tuple(f.facts['permutation'])}.contiguous()"
    code = (f'for k in [k for k in sd if re.search(r"(^|\\.)({pattern})\\.weight$", k)]:\n'
            f"    sd[k] = {move}\nmodel.load_state_dict(sd)")
    return what, code, []



_WRITERS: dict[str, Callable[[Finding, Evidence], tuple[str, str, list[str]]]] = {
    "prefix_added": _prefix, "prefix_missing": _prefix, "wrapped_checkpoint": _wrapped,
    "optimizer_state_passed": _optimizer, "version_buffers": buffers_text,
    "adapter_or_quantization": _adapter, "ema_weights": _ema, "tied_weights": _tied,
    "fused_projection": _fused, "partitioned_checkpoint": _partitioned,
    "transposed_weights": _transposed, "head_size_mismatch": head_text,
    "architecture_variant": architecture_text, "renamed_keys": renamed_text,
    "model_code_changed": code_changed_text, "wrong_model": wrong_model_text,
    "new_task_head": new_head_text, "profiler_buffers": profiler_text,
}


def _evidence(f: Finding, ev: Evidence) -> dict[str, Any]:
    counts = {"missing": len(ev.missing), "unexpected": len(ev.unexpected),
              "mismatched": len(ev.mismatched)}
    if ev.matched is not None:
        counts["matched"] = ev.matched
    facts = {k: v for k, v in f.facts.items() if k not in ("keys",)}
    examples = sorted(f.explains)[:5]
    return {"counts": counts, "explained": len(f.explains), "examples": examples,
            "truncated": ev.truncated, "facts": facts}


def _assigns_sd(code: str) -> bool:
    """The first line naming ``sd`` assigns it from elsewhere (torch.load, DeepSpeed's gathering)."""
    first = next((line for line in code.split("\n") if re.search(r"\bsd\b", line)), "")
    head, eq, value = first.partition(" = ")
    return head == "sd" and bool(eq) and not re.search(r"\bsd\b", value)


def describe(f: Finding, ev: Evidence) -> Cause:
    """Turn a finding into a :class:`Cause` with plain words, evidence and the fix."""
    what, code, args = _WRITERS[f.label](f, ev)
    ckpt = ev.checkpoint_path or "CKPT"
    if code:
        # What the text cannot give stays on the first lines, for the user to set (# set:).
        lines = code.split("\n")
        n = next((i for i, line in enumerate(lines) if not SETTING.match(line)), len(lines))
        rest = "\n".join(lines[n:])
        load = ("" if "ckpt = torch.load" in rest or "sd" not in rest or _assigns_sd(rest)
                else ev.load_code or _LOAD)  # a safetensors file or a folder is no torch.load
        imports = "import collections, re, torch\n" if "collections." in rest else "import re, torch\n"
        code = "".join(line + "\n" for line in lines[:n]) + imports + load + rest
    command = None
    if ev.source == "files" and args:
        if args[0] == "@convert":
            command = f"ckpttools convert {_q(ckpt)} model_weights.pth " + " ".join(args[1:])
        else:
            key = f" --key {_q(ev.used_key)}" if ev.used_key else ""
            command = f"ckpttools remap {_q(ckpt)} fixed.pth {' '.join(args)}{key}"
    confirm = None
    if ev.source == "text":
        confirm = "ckpttools diagnose --checkpoint CKPT --model SPEC  # or: ckpttools diff CKPT --model SPEC"
    return Cause(f.label, f.confidence, what, _evidence(f, ev), code.replace("{ckpt}", ckpt),
                 command, confirm)
