"""Words and fixes for the shape and structure causes (head, variant, renames, code, model)."""

from __future__ import annotations

import re
import shlex

from ckpttools.ops.diagnose.evidence import Evidence, Finding


def _re(text: str) -> str:
    return re.escape(text).replace("\\_", "_")


def head_text(f: Finding, ev: Evidence) -> tuple[str, str, list[str]]:
    """A classifier/vocabulary head of another size."""
    c, m = f.facts["checkpoint_size"], f.facts["model_size"]
    keys = f.facts["keys"]
    if f.facts["vocab"]:
        what = (f"the vocabulary has another size: {c} rows in the checkpoint, {m} in the model"
                + (" (one side is padded to a multiple of 64)" if f.facts["padded"] else "")
                + "; resize the embeddings to the checkpoint's size before loading")
        code = f"model.resize_token_embeddings({c})\nmodel.load_state_dict(sd)"
        return what, code, []
    what = (f"the output head has another size: {c} in the checkpoint, {m} in the model "
            f"({', '.join(keys[:2])}); build the model with {c} outputs, or drop the head to fine-tune")
    prefixes = sorted({k.rsplit(".", 1)[0] + "." for k in keys})
    pattern = "^(" + "|".join(_re(p) for p in prefixes) + ")"
    code = (f'sd = {{k: v for k, v in sd.items() if not re.match(r"{pattern}", k)}}\n'
            "result = model.load_state_dict(sd, strict=False)  # the head starts fresh")
    return what, code, ["--drop", shlex.quote(pattern)]


def architecture_text(f: Finding, ev: Evidence) -> tuple[str, str, list[str]]:
    """Another depth/width, positional-embedding grid or input channel count."""
    kind = f.facts["kind"]
    if kind == "pos_grid":
        c, m = f.facts["checkpoint_shape"], f.facts["model_shape"]
        what = (f"the positional-embedding grid has another size ({list(c)} in the checkpoint, "
                f"{list(m)} in the model): the model was built for another input size")
        code = ("# build the model for the checkpoint's input size, e.g. img_size=..., or resample:\n"
                "from timm.layers import resample_abs_pos_embed\n"
                'sd["pos_embed"] = resample_abs_pos_embed(sd["pos_embed"], new_size=GRID_HW)\n'
                "model.load_state_dict(sd)")
        return what, code, []
    if kind == "in_chans":
        c, m = f.facts["checkpoint_channels"], f.facts["model_channels"]
        what = f"the first layer takes {c} input channels in the checkpoint and {m} in the model"
        code = (f"model = build_model(..., in_chans={c})  # or adapt the stem weight:\n"
                "from timm.models import adapt_input_conv\n"
                f'sd[STEM_KEY] = adapt_input_conv({m}, sd[STEM_KEY])\nmodel.load_state_dict(sd)')
        return what, code, []
    if kind == "config":  # a setting named by convention (scale factor, maximum length)
        what = f"another configuration of the same network: {f.facts['setting']}"
        code = "model = build_model(...same config as the checkpoint...)\nmodel.load_state_dict(sd)"
        return what, code, []
    if kind == "depth":
        where = "the model only" if f.facts["side"] == "missing" else "the checkpoint only"
        what = (f"another depth of the same architecture: {f.facts['group']}.{f.facts['first']}.."
                f"{f.facts['last']} exist in {where}")
        code = "model = build_model(..., depth=DEPTH_OF_THE_CHECKPOINT)\nmodel.load_state_dict(sd)"
        return what, code, []
    ratio = f.facts["ratio"]
    what = (f"another width of the same architecture: {f.facts['count']} tensors differ in size"
            + (f", by the same factor {ratio:g}" if f.facts["consistent"] else "")
            + "; build the model with the checkpoint's configuration (hidden size, variant)")
    code = "model = build_model(...same variant/config as the checkpoint...)\nmodel.load_state_dict(sd)"
    return what, code, []


def renamed_text(f: Finding, ev: Evidence) -> tuple[str, str, list[str]]:
    """The same tensors under other names."""
    renames = f.facts["renames"]
    what = ("the same tensors are stored under other names: "
            + ", ".join(f"'{a}' -> '{b}'" for a, b in renames)
            + (" (old LayerNorm names)" if f.facts.get("legacy") else ""))
    lines = [f'sd = {{re.sub(r"(^|\\.){_re(a)}(?=\\.|$)", r"\\g<1>{b}", k): v for k, v in sd.items()}}'
             for a, b in renames]
    args: list[str] = []
    for a, b in renames:
        args += ["--rename", shlex.quote(rf"(^|\.){_re(a)}(?=\.|$)=\g<1>{b}")]
    return what, "\n".join(lines) + "\nmodel.load_state_dict(sd)", args


def code_changed_text(f: Finding, ev: Evidence) -> tuple[str, str, list[str]]:
    """Same model class, other submodules."""
    moved = f.facts.get("moved")
    if inserted := f.facts.get("inserted"):
        what = (f"the model code changed since the checkpoint was saved: layers from {inserted}.1 on "
                f"are missing while {inserted}.0 loads, so a layer was most likely inserted into "
                f"{inserted} (a norm or dropout) and moved every index behind it")
    elif moved:
        what = ("the model code changed since the checkpoint was saved: the same tensors now sit at "
                "other paths (e.g. " + ", ".join(f"'{a}' -> '{b}'" for a, b in moved[:2]) + ")")
    else:
        what = (f"the model code changed since the checkpoint was saved: {f.facts['missing']} keys "
                f"exist only in the model and {f.facts['unexpected']} only in the checkpoint")
    code = ("# use the code version the checkpoint was saved with, or map the keys:\n"
            "result = model.load_state_dict(sd, strict=False)\n"
            "print(result.missing_keys, result.unexpected_keys)  # these stay untrained / unused")
    return what, code, []


def wrong_model_text(f: Finding, ev: Evidence) -> tuple[str, str, list[str]]:
    """Another model altogether."""
    if part := f.facts.get("part"):
        where = part.rstrip(".")
        what = (f"the checkpoint holds one part of the model only (the weights of `{where}`, e.g. a "
                f"pretrained backbone), not a checkpoint of this model: "
                f"{', '.join(f.facts['not_in_file'])} are not in it; load it into that part, or pass "
                "the whole model's checkpoint")
        code = (f"missing, unexpected = model.{where}.load_state_dict(sd, strict=False)\n"
                "print(unexpected)  # e.g. the backbone's own classifier, unused by this model")
        return what, code, []
    matched = f.facts.get("matched")
    what = ("the checkpoint belongs to another model: "
            + (f"only {matched} of {f.facts['model_keys']} model keys are in it" if matched is not None
               else "the missing and unexpected keys have almost no module names in common"))
    code = "# pick the checkpoint made for this model class/config (check the file and the model spec)"
    return what, code, []


def new_head_text(f: Finding, ev: Evidence) -> tuple[str, str, list[str]]:
    """A task head the checkpoint never had: expected when fine-tuning from a backbone."""
    keys = ", ".join(f.facts["examples"])
    if not keys:
        what = (f"the checkpoint's pretraining head ({', '.join(f.facts['dropped'])}) is not used by "
                f"{f.facts.get('class_name') or 'this model'}, which has no such head; this is "
                "expected and the rest loaded: nothing to fix")
        return what, "# nothing to change: the report lists weights this model does not use", []
    what = (f"the model has a task head ({keys}) that the checkpoint never had (a backbone or "
            "pretraining checkpoint); this is expected when fine-tuning: train the head"
            + ("; transformers reports it and loads the rest" if f.facts["report"] else
               "; load the rest non-strictly, or use the library's pretrained loader, which adapts the head"))
    code = ("result = model.load_state_dict(sd, strict=False)\n"
            "assert not result.unexpected_keys or print(result.unexpected_keys)  # pretraining heads, unused\n"
            "# then train the new head; with transformers a head of another size needs\n"
            "# from_pretrained(..., num_labels=N, ignore_mismatched_sizes=True)")
    return what, code, []


def profiler_text(f: Finding, ev: Evidence) -> tuple[str, str, list[str]]:
    """Counters a FLOP profiler registered on the model."""
    where = "the model" if f.facts["side"] == "missing" else "the checkpoint"
    what = (f"a FLOP profiler (thop/ptflops) registered counters such as total_ops/total_params on "
            f"{where}; they are not weights: profile a copy of the model, or drop them")
    code = ('sd = {k: v for k, v in sd.items() if not re.search(r"(total_ops|total_params)$", k)}\n'
            "model.load_state_dict(sd, strict=False)  # or: profile copy.deepcopy(model)")
    return what, code, ["--drop", shlex.quote(r"(^|\.)(total_ops|total_params)$")]
