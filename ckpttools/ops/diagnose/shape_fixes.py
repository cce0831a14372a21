"""Words and fixes for the shape and structure causes (head, variant, renames, code, model)."""

from __future__ import annotations

import re
import shlex

from ckpttools.ops.diagnose.evidence import Evidence, Finding
from ckpttools.ops.diagnose.snippet_text import regex_literal as _re


def head_text(f: Finding, ev: Evidence) -> tuple[str, str, list[str]]:
    """A classifier/vocabulary head of another size."""
    c, m = f.facts["checkpoint_size"], f.facts["model_size"]
    keys = f.facts["keys"]
    if not keys and c is None:  # PyTorch 0.1/0.2: neither key nor sizes
        return ("an output head of another size (another number of classes) reads the same; the "
                "message names no key: build the model with the checkpoint's class count"), "", []
    if not keys:  # told in a sentence: no key to drop
        return (f"the output head has another size: {c} in the checkpoint, {m} in the model (as the "
                f"text tells it); build the model with {c} outputs (classes), or drop the head's keys "
                "to fine-tune"), "", []
    if m is None and (fed := f.facts.get("fed")):  # a count fed into an inner layer (fed_input)
        layer, fc, fm = fed
        what = (f"{layer} takes {fc} input channels in the checkpoint and {fm} in the model, a few "
                f"apart and no multiple of 8: it reads features concatenated with a counted output "
                f"(classes, keypoint maps) that changed by {abs(fc - fm)}; that output is most "
                f"likely {keys[0]}, whose sizes are cut from the text; build the model with the "
                "checkpoint's count, or drop these layers to fine-tune")
    elif m is None:  # the sizes were cut from the text: the head by its name only
        what = (f"{', '.join(keys[:2])} has another size in the checkpoint than in the model (the "
                "sizes are cut from the text); by its name an output head: another number of "
                "classes or tokens; build the model with the checkpoint's, or drop the head to fine-tune")
    elif f.facts["vocab"]:
        what = (f"the vocabulary has another size: {c} rows in the checkpoint, {m} in the model"
                + (" (one side is padded to a multiple of 64)" if f.facts["padded"] else "")
                + "; resize the embeddings to the checkpoint's size before loading")
        code = ('if hasattr(model, "resize_token_embeddings"):  # transformers: the tied output '
                "and the config too\n"
                f"    model.resize_token_embeddings({c})\n"
                "else:  # the checkpoint's rows in place of every parameter whose rows alone differ "
                "(a tied output is then its own copy)\n"
                "    own = model.state_dict()\n"
                "    for key, v in sd.items():\n"
                "        if key in own and v.shape != own[key].shape and v.shape[1:] == own[key].shape[1:]:\n"
                '            name, _, leaf = key.rpartition(".")\n'
                "            layer = model.get_submodule(name) if name else model\n"
                "            setattr(layer, leaf, torch.nn.Parameter(torch.empty_like(v)))\n"
                "model.load_state_dict(sd)")
        return what, code, []
    elif f.facts.get("levels"):  # one output layer per feature level (count_pairs)
        what = (f"the output layers of each feature level have other sizes, all in one ratio ({c} "
                f"rows in the checkpoint, {m} in the model for {keys[0]}): each counts anchors x "
                "classes, so the number of classes differs; build the model with the checkpoint's "
                "class count, or drop these layers to fine-tune")
    else:
        what = (f"the output head has another size: {c} in the checkpoint, {m} in the model "
                f"({', '.join(keys[:2])}); build the model with {c} outputs, or drop the head to "
                "fine-tune")
    prefixes = sorted({k.rsplit(".", 1)[0] + "." for k in keys})
    pattern = "^(" + "|".join(_re(p) for p in prefixes) + ")"
    code = (f'sd = {{k: v for k, v in sd.items() if not re.match(r"{pattern}", k)}}\n'
            "result = model.load_state_dict(sd, strict=False)  # the head starts fresh")
    return what, code, ["--drop", shlex.quote(pattern)]


def architecture_text(f: Finding, ev: Evidence) -> tuple[str, str, list[str]]:
    """Another depth/width, positional-embedding grid or input channel count.

    Only the input channels give code: the key and both channel counts are in the text. The
    other kinds need the checkpoint's configuration (depth, width, input size), which the text
    does not give: words, and the command that decides from the files.
    """
    kind = f.facts["kind"]
    if kind == "pos_grid":
        c, m = f.facts["checkpoint_shape"], f.facts["model_shape"]
        if f.facts.get("length"):
            return (f"the learned position/frame table has another length ({list(c)} in the "
                    f"checkpoint, {list(m)} in the model): the model was built for another input "
                    "length (frames, sequence length); build it with the checkpoint's, or "
                    "interpolate the table along that axis"), "", []
        what = (f"the positional-embedding grid has another size ({list(c)} in the checkpoint, "
                f"{list(m)} in the model): the model was built for another input size; build it for "
                "the checkpoint's (img_size, window size), or resample the grid (timm.layers."
                "resample_abs_pos_embed)")
        return what, "", []
    if kind == "in_chans":
        return _in_chans_text(f)
    if kind == "copies":
        what = (f"the model has numbered copies ({', '.join(f.facts['copies'])}) of the checkpoint's "
                f"{f.facts['module']}, with the same layers: another variant of the network (more "
                "scales or heads); build the model with the checkpoint's configuration")
        return what, "", []
    if kind == "config":  # a setting named by convention (scale factor, maximum length)
        what = (f"another configuration of the same network: {f.facts['setting']}; build the model "
                "with the checkpoint's configuration")
        return what, "", []
    if kind == "depth":
        where = "the model only" if f.facts["side"] == "missing" else "the checkpoint only"
        what = (f"another depth of the same architecture: {f.facts['group']}.{f.facts['first']}.."
                f"{f.facts['last']} exist in {where}; build the model with the checkpoint's depth")
        return what, "", []
    ratio = f.facts["ratio"]
    what = (f"another width of the same architecture: {f.facts['count']} tensors differ in size"
            + (f", by the same factor {ratio:g}" if f.facts["consistent"] else "")
            + "; build the model with the checkpoint's configuration (hidden size, variant)")
    return what, "", []


def _in_chans_text(f: Finding) -> tuple[str, str, list[str]]:
    """Adapt the stem's weight to the model's input channels, as timm's ``adapt_input_conv``
    does: summed for one channel, else repeated and rescaled (the key and sizes are in the text)."""
    c, m = f.facts["checkpoint_channels"], f.facts["model_channels"]
    what = (f"the first layer takes {c} input channels in the checkpoint and {m} in the model; build "
            f"the model with in_chans={c}, or adapt the first layer's weight (below)")
    lines = [f'w = sd["{key}"]  # (out, {c}, kh, kw)\n' + (
        f'sd["{key}"] = w.sum(1, keepdim=True)\n' if m == 1 else
        f'sd["{key}"] = w.repeat(1, {-(-m // c)}, 1, 1)[:, :{m}] * ({c} / {m})\n')
        for key in f.facts["keys"]]
    return what, "".join(lines) + "model.load_state_dict(sd)", []


def renamed_text(f: Finding, ev: Evidence) -> tuple[str, str, list[str]]:
    """The same tensors under other names."""
    renames = f.facts["renames"]
    if names := f.facts.get("attention"):
        what = (f"only attention projections ({', '.join(names)}) are {f.facts['side']}, the rest "
                "loads: the file most likely names them as another library version does (diffusers "
                "renamed q/k/v/proj_out to query/key/value/proj_attn and then to_q/to_k/to_v/"
                "to_out.0); rename them to the model's names (the other key list shows the file's)")
        return what, "", []
    what = ("the same tensors are stored under other names: "
            + ", ".join(f"'{a}' -> '{b}'" for a, b in renames)
            + (" (old LayerNorm names)" if f.facts.get("legacy") else ""))
    # a leading path renamed (layer1.0 -> extractor.4) is replaced at the start of keys only
    lead = r"^" if f.facts.get("prefix_rename") else r"(^|\.)"
    ref = "" if f.facts.get("prefix_rename") else r"\g<1>"
    lines = [f'sd = {{re.sub(r"{lead}{_re(a)}(?=\\.|$)", r"{ref}{b}", k): v for k, v in sd.items()}}'
             for a, b in renames]
    args: list[str] = []
    for a, b in renames:
        args += ["--rename", shlex.quote(rf"{lead}{_re(a)}(?=\.|$)={ref}{b}")]
    return what, "\n".join(lines) + "\nmodel.load_state_dict(sd)", args


# Words-only readings of one tensor that the code changed, by the fact that carries (key,
# checkpoint size, model size): layer_roles' matrix read the other way, a symbol table, input features.
_ONE_TENSOR_CHANGES = {
    "kind_changed": ("the model code may build another kind of layer at {key} now: {c} in the "
                     "checkpoint, {m} in the model (one side's size on the other's other axis, the "
                     "axes scaled apart: e.g. a table of symbols where the model has a layer reading "
                     "features); use the code version the checkpoint was saved with"),
    "channels_swapped": ("the model code may build {key} the other way round now: {c} in the "
                         "checkpoint, {m} in the model (its output and input channels trade places, "
                         "the kernel kept: a layer that now maps the other direction, or a transposed "
                         "convolution where a convolution was); a permute would load numbers that "
                         "mean nothing there: use the code version the checkpoint was saved with"),
    "recurrent_kind": ("the model code builds the recurrence with another module kind: the checkpoint "
                       "holds {c}, the model {m} (e.g. {key}); their tensors hold the same gates, but "
                       "one layer's directions and depth are modules of their own on the cells' "
                       "side: use the code version the checkpoint was saved with"),
    "symbols": ("the code's symbol set may have changed since the checkpoint was saved: {key} "
                "indexes {c} symbols in the checkpoint and {m} in the model (a repository or "
                "library version that lists other characters, phonemes or feature values); use "
                "the version the checkpoint was saved with"),
    "bias_only": ("the library's code may size {key} otherwise now: {c} rows in the checkpoint, {m} in "
                  "the model, while the vocabulary's tables (the word embeddings and the decoder tied "
                  "to them) loaded; a version that resizes those for added tokens but builds the bias "
                  "at the configured size; use the library version the checkpoint was saved with"),
    "features": ("the code that builds the input features may have changed: {key} reads {c} "
                 "features in the checkpoint and {m} in the model (a feature added or dropped); use "
                 "the code version the checkpoint was saved with, or the setting that adds it"),
}


def code_changed_text(f: Finding, ev: Evidence) -> tuple[str, str, list[str]]:
    """Same model class, other submodules."""
    moved = f.facts.get("moved")
    if reshaped := f.facts.get("reshaped"):
        what = ("the model code changed the shape of these tensors, not their elements (e.g. "
                + ", ".join(f"'{k}' now {shape}" for k, shape in list(reshaped.items())[:2])
                + "): reshape them to the model's shapes")
        code = "".join(f'sd["{k}"] = sd["{k}"].reshape({shape})\n' for k, shape in reshaped.items())
        return what, code + "model.load_state_dict(sd)", []
    if resized := f.facts.get("resized"):
        return (f"the model code may build this layer differently now: {', '.join(resized[:2])} "
                "has another size while no weight around it is shown to differ (a library version "
                "that builds a stage's layers elsewhere); use the version the checkpoint was saved "
                "with, or show the whole error"), "", []
    if flag := f.facts.get("bias_flag"):
        key, side, n = flag
        what = (f"the model code builds {n} layers of one role ({key.rpartition('.')[0]} and its "
                f"like) {'without' if side == 'checkpoint' else 'with'} a bias now: only their biases "
                f"are in the {side} alone, their weights loaded; use the code version the checkpoint "
                "was saved with (or the layers' bias setting)")
        return what, "", []
    for fact, template in _ONE_TENSOR_CHANGES.items():  # (key, checkpoint size, model size)
        if one := f.facts.get(fact):
            key, c, m = one
            return template.format(key=key, c=c, m=m), "", []
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
    # strict=False still raises on a shape mismatch: what does not fit is left out first
    code = ("# use the code version the checkpoint was saved with, or load what fits:\n"
            "own = model.state_dict()\n"
            "sd = {k: v for k, v in sd.items() if k not in own or v.shape == own[k].shape}\n"
            "result = model.load_state_dict(sd, strict=False)\n"
            "print(result.missing_keys, result.unexpected_keys)  # these stay untrained / unused")
    return what, code, []


_PICK_ANOTHER = "# pick the checkpoint made for this model class/config (check the file and the model spec)"


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
    if tops := f.facts.get("task_modules"):
        what = (f"the checkpoint is a detection or segmentation model's built on this network: its "
                f"{', '.join(tops)} modules are not in the model, which misses only its classifier "
                f"({', '.join(f.facts['examples_missing'][:2])}); build the model the file was saved "
                "from, or take its backbone weights with strict=False and train the classifier")
        return what, _PICK_ANOTHER, []
    matched = f.facts.get("matched")
    if f.facts.get("one_sided") and matched is None:
        what = ("if the file was made for another model, none of this model's keys are in it; the "
                "text shows only the model's keys, so this cannot be told from a missing prefix or "
                "a training dict")
        return what, _PICK_ANOTHER, []
    what = ("the checkpoint belongs to another model: "
            + (f"only {matched} of {f.facts['model_keys']} model keys are in it" if matched is not None
               else "the missing and unexpected keys have almost no module names in common"))
    return what, _PICK_ANOTHER, []


def new_head_text(f: Finding, ev: Evidence) -> tuple[str, str, list[str]]:
    """A task head the checkpoint never had: expected when fine-tuning from a backbone."""
    keys = ", ".join(f.facts["examples"])
    if not keys and not f.facts["dropped"]:  # a report whose key list was not pasted
        what = (f"transformers reports weights that {f.facts.get('class_name') or 'this model'} does "
                "not use or initialises anew, without the list: expected when the class is another "
                "task's or a part of the checkpoint's model (an encoder alone); the list it prints "
                "names them (new task heads are trained, unused parts dropped)")
        return what, "# nothing to change: the report is expected when fine-tuning or using a part", []
    if not keys and not f.facts["report"]:
        top = f.facts["dropped"][0].split(".")[0]
        what = (f"the checkpoint has a head ({', '.join(f.facts['dropped'])}) that "
                f"{f.facts.get('class_name') or 'this model'} was built without (a backbone, or the "
                "head replaced by Identity): expected when the head is not needed; drop its keys "
                "(or build the model with the head to use it)")
        pattern = rf"^{re.escape(top)}\."
        code = (f'sd = {{k: v for k, v in sd.items() if not re.match(r"{pattern}", k)}}\n'
                "model.load_state_dict(sd)")
        return what, code, ["--drop", shlex.quote(pattern)]
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
            "print(result.unexpected_keys)  # the file's other parts (pretraining heads, a decoder): unused\n"
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
