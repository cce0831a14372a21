"""Fix texts for buffers and reparametrized weights: buffers one library version saves and
another does not, InstanceNorm's running stats from before PyTorch 0.4, spectral_norm/weight_norm."""

from __future__ import annotations

import re

from ckpttools.ops.diagnose.adapters import QUANT_STATE_LEAVES
from ckpttools.ops.diagnose.evidence import Evidence, Finding
from ckpttools.ops.diagnose.snippet_text import regex_literal as _re, shell_quoted as _q


_REPARAMETRIZED = {"weight_orig": "spectral_norm", "weight_g": "weight_norm"}


def _reparametrize(layers: dict[str, str]) -> str:
    """Code that gives the model's layers the parametrization the checkpoint was saved with."""
    return "".join(line + "\n" for line in _lines(layers)) + "model.load_state_dict(sd)"


def _lines(layers: dict[str, str]) -> list[str]:
    return [f'torch.nn.utils.{how}(model.get_submodule("{name}"))' for name, how in layers.items()]


def reparametrize_lines(ev: Evidence) -> list[str]:
    """The lines that give the model's layers the parametrization the checkpoint's keys show
    they were saved with (spectral_norm, weight_norm, either form); [] when they show none."""
    return _lines(_saved_reparametrized(ev))


def _saved_reparametrized(ev: Evidence) -> dict[str, str]:
    """Layers whose weight the model misses while the checkpoint holds it as spectral_norm's
    ``weight_orig``, (old) weight_norm's ``weight_g``, or the ``parametrizations.weight.*`` of
    their torch.nn.utils.parametrizations forms: layer -> the function to apply. A
    ``parametrizations.weight.original`` of no known parametrization (orthogonal, a user's own)
    is left out: which one to apply is not in the keys."""
    missing, unexpected = set(ev.missing), set(ev.unexpected)
    # the model's plain weight is missing, or the missing list is not shown (a cut paste)
    def plain(layer: str) -> bool:
        return f"{layer}.weight" in missing or not missing
    found: dict[str, str] = {}
    for key in ev.unexpected:
        layer, _, leaf = key.rpartition(".")
        # weight_orig beside a weight_mask is torch.nn.utils.prune's, not spectral_norm's
        if leaf in _REPARAMETRIZED and plain(layer) and f"{layer}.weight_mask" not in unexpected:
            found[layer] = _REPARAMETRIZED[leaf]
        new = _NEW_FORM.match(key)
        if new is None or not plain(new["layer"]):
            continue
        if new["n"]:  # original0/original1: weight_norm's g and v (a cut text may show one)
            found[new["layer"]] = "parametrizations.weight_norm"
        elif not new["n"] and f"{new['layer']}.parametrizations.weight.0._u" in unexpected:
            found[new["layer"]] = "parametrizations.spectral_norm"
    return found


_NEW_FORM = re.compile(r"^(?P<layer>.+)\.parametrizations\.weight\.original(?P<n>\d?)$")


def buffers_text(f: Finding, ev: Evidence) -> tuple[str, str, list[str]]:
    """What happened, the fix code and the remap arguments for a ``version_buffers`` finding."""
    if f.facts.get("reparametrized"):
        layers = [k.rpartition(".")[0] for k in f.facts["examples"]]
        what = (f"only the weight of {', '.join(layers)} is missing, not its bias: the "
                "checkpoint most likely stores it reparametrized (spectral_norm's weight_orig/"
                "weight_u/weight_v, weight_norm's weight_g/weight_v); apply the same "
                "parametrization to the model before loading (weight_norm if the checkpoint "
                "holds weight_g), or remove it before saving")
        return what, _reparametrize(dict.fromkeys(layers, "spectral_norm")), []
    if layers := _saved_reparametrized(ev):
        what = (f"the checkpoint stores {', '.join(layers)} reparametrized "
                f"({', '.join(sorted(set(layers.values())))}: the weight as weight_orig/weight_u/"
                "weight_v, weight_g/weight_v or parametrizations.weight.original*); apply the "
                "same parametrization to the model's layers before loading, so that every weight "
                "loads (torch.nn.utils.parametrize.remove_parametrizations, or remove_spectral_norm"
                " / remove_weight_norm for the old forms, gives plain weights after)")
        return what, _reparametrize(layers), []
    if ev.legacy_norm_stats:
        return _legacy_norm_stats()
    leaves = f.facts["leaves"]
    shown = {k.rpartition(".")[2] for k in ev.missing + ev.unexpected}
    if {"original0", "original1", "weight_g", "weight_v"} <= shown:
        return _weight_norm_forms(ev)
    names = ", ".join(leaves[:4])
    side = f.facts["side"]
    where = ("in the checkpoint only" if side == "unexpected" else
             "expected by the model only" if side == "missing" else "on both sides")
    # weight_g/weight_v, a bias, quantization state among them: not buffers to drop unread
    learned = any(n in ("bias", "gamma", "beta") or n.startswith("weight") for n in leaves)
    quant = [n for n in leaves if n in QUANT_STATE_LEAVES]
    what = (f"{'entries' if learned or quant else 'buffers'} ({names}) that one library version "
            f"saves and another does not ({where}); "
            + (f"{', '.join(quant)} {'is' if len(quant) == 1 else 'are'} quantization state, "
               "needed to read quantized weights: drop "
               f"{'it' if len(quant) == 1 else 'them'} only when loading float weights" if quant
               else "some of them hold learned values: check the layers they belong to before "
               "dropping them" if learned else "they hold no learned weights"))
    pattern = r"(^|\.)(" + "|".join(_re(n) for n in leaves) + r")$"
    if side == "unexpected":
        code = (f'sd = {{k: v for k, v in sd.items() if not re.search(r"{pattern}", k)}}\n'
                "model.load_state_dict(sd)")
        return what, code, ["--drop", _q(pattern)]
    code = ("result = model.load_state_dict(sd, strict=False)\n"
            f'assert all(re.search(r"{pattern}", k) for k in result.missing_keys + result.unexpected_keys)')
    return what, code, []


def _weight_norm_forms(ev: Evidence) -> tuple[str, str, list[str]]:
    """weight_norm's two forms: ``parametrizations.weight.original0/1`` (torch.nn.utils.
    parametrizations, PyTorch >= 2.1) and ``weight_g``/``weight_v`` (the old hook). The same two
    learned tensors, g then v: rename them (the new form's load converts the old keys itself, so
    the file is the new form when the model wants the old one)."""
    new_in_file = any(k.endswith(".original0") or k.endswith(".original1") for k in ev.unexpected)
    what = ("the layers are weight-normalised in two forms: "
            + ("the checkpoint holds parametrizations.weight.original0/1 (torch.nn.utils."
               "parametrizations.weight_norm) and the model weight_g/weight_v (the old "
               "torch.nn.utils.weight_norm)" if new_in_file else
               "the checkpoint holds weight_g/weight_v and the model parametrizations.weight."
               "original0/1")
            + "; they are the same learned tensors (g, then v): rename them")
    pairs = ([(r"(^|\.)parametrizations\.weight\.original0$", r"\1weight_g"),
              (r"(^|\.)parametrizations\.weight\.original1$", r"\1weight_v")] if new_in_file else
             [(r"(^|\.)weight_g$", r"\1parametrizations.weight.original0"),
              (r"(^|\.)weight_v$", r"\1parametrizations.weight.original1")])
    code = (f"for pattern, repl in {pairs!r}:\n"
            "    sd = {re.sub(pattern, repl, k): v for k, v in sd.items()}\n"
            "model.load_state_dict(sd)")
    return what, code, [a for p, r in pairs for a in ("--rename", _q(f"{p}={r}"))]


def _legacy_norm_stats() -> tuple[str, str, list[str]]:
    """InstanceNorm saved running stats before PyTorch 0.4; the model's InstanceNorm layers (not
    its BatchNorm layers, which need theirs) drop them."""
    what = ("the checkpoint was saved before PyTorch 0.4, when InstanceNorm layers kept running "
            "stats; the model's InstanceNorm layers do not track them: drop those buffers of the "
            "InstanceNorm layers (not of BatchNorm layers) before loading")
    code = ("norms = {n for n, m in model.named_modules() if isinstance(m, (torch.nn.InstanceNorm1d, "
            "torch.nn.InstanceNorm2d, torch.nn.InstanceNorm3d)) and not m.track_running_stats}\n"
            "stats = (\"running_mean\", \"running_var\", \"num_batches_tracked\")\n"
            "sd = {k: v for k, v in sd.items() if not (k.rpartition(\".\")[0] in norms "
            "and k.rpartition(\".\")[2] in stats)}\n"
            "model.load_state_dict(sd)")
    return what, code, []
