"""The fix snippet ``diagnose`` prints for a pasted error runs as printed: each case saves a real
checkpoint, takes the real ``load_state_dict`` error, diagnoses the text, puts the checkpoint's path
where the snippet says ``CKPT`` (the text cannot name the file) and runs the snippet with only
``model`` defined; the model then holds the checkpoint's tensors.

A fix that needs more than the text names (the model's own weights file, an adapter's folder, the
other ranks' files) starts with ``NAME = value  # set: what`` lines, which the user sets
(docs/diagnose.md). The tests set exactly those lines to the files they wrote with torch and PEFT
and run the rest of the snippet as printed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from ckpttools.ops.diagnose.diagnosis import diagnose_text
from ckpttools.ops.diagnose.fixes import SETTING
from tests.ops.diagnose.gen_models import Mlp, dynamic_quantized, tensor_parallel_shard
from tests.ops.diagnose.scoring import rules_first


class Net(nn.Module):
    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
        self.fc = nn.Linear(4, 8)
        self.head = nn.Linear(8, classes)


def _seeded(**kwargs: Any) -> Net:
    torch.manual_seed(0)
    return Net(**kwargs)


def _error(model: nn.Module, state: Any) -> str:
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        return f"Traceback (most recent call last):\n  ...\nRuntimeError: {e}"
    raise AssertionError("the state loaded; the case builds no error")


def _prefix_added(path: Path) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    sd = nn.DataParallel(_seeded()).state_dict()
    torch.save(sd, path)
    return Net(), {k.removeprefix("module."): v for k, v in sd.items()}


def _prefix_missing(path: Path) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    sd = _seeded().state_dict()
    torch.save(sd, path)
    return nn.DataParallel(Net()), {f"module.{k}": v for k, v in sd.items()}


def _wrapped(path: Path) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    sd = _seeded().state_dict()
    torch.save({"epoch": 3, "state_dict": sd, "optimizer": {"state": {}, "param_groups": []}}, path)
    return Net(), dict(sd)


def _new_head(path: Path) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    sd = _seeded(classes=10).state_dict()
    torch.save(sd, path)
    return Net(classes=4), {k: v for k, v in sd.items() if not k.startswith("head.")}


class Detector(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = Net()
        del self.backbone.head
        self.neck = nn.Linear(8, 8)
        self.bbox_head = nn.Linear(8, 4)


def _backbone_file(path: Path) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    sd = _seeded().state_dict()  # a classification network's file, passed to the detector
    torch.save(sd, path)
    return Detector(), {f"backbone.{k}": v for k, v in sd.items() if not k.startswith("head.")}


class _Lin(nn.Module):
    def __init__(self, inputs: int, outputs: int) -> None:
        super().__init__()
        self.lin = nn.Linear(inputs, outputs)


class NetLin(Net):
    """Net with its Linear layers one module down (``fc.lin.weight``), as a library rename does."""

    def __init__(self) -> None:
        super().__init__()
        self.fc, self.head = _Lin(4, 8), _Lin(8, 4)


def _renamed(path: Path) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    sd = _seeded().state_dict()
    torch.save(sd, path)
    moved = {k.replace("fc.", "fc.lin.").replace("head.", "head.lin."): v for k, v in sd.items()}
    return NetLin(), moved


def _headless(path: Path) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    # a pretraining file with a projection head (DINO's head.mlp.*), a model built with head=Identity
    full = _seeded()
    full.head = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8))
    sd = full.state_dict()
    torch.save(sd, path)
    model = Net()
    model.head = nn.Identity()
    return model, {k: v for k, v in sd.items() if not k.startswith("head.")}


CASES: dict[str, Callable[[Path], tuple[nn.Module, dict[str, torch.Tensor]]]] = {
    "prefix_added": _prefix_added, "prefix_missing": _prefix_missing,
    "wrapped_checkpoint": _wrapped, "head_size_mismatch": _new_head, "wrong_model": _backbone_file,
    "renamed_keys": _renamed, "new_task_head": _headless,
}


@pytest.mark.parametrize("label", list(CASES))
def test_text_fix_snippet_runs_as_printed(tmp_path: Path, label: str) -> None:
    path = tmp_path / "ckpt.pth"
    model, expected = CASES[label](path)
    saved = torch.load(path, weights_only=True)
    result = diagnose_text(_error(model, saved))
    top = result.causes[0]
    assert top.label == label
    assert "CKPT" in top.fix_code, top.fix_code  # the text cannot name the file; CKPT stands for it
    code = top.fix_code.replace("CKPT", str(path))
    scope: dict[str, Any] = {"model": model}
    exec(compile(code, f"<diagnose fix for {label}>", "exec"), scope)
    loaded = scope["model"].state_dict()
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), key


@pytest.mark.filterwarnings("ignore:.*weight_norm.*:FutureWarning")
@pytest.mark.parametrize("how", ["spectral_norm", "weight_norm"])
def test_reparametrized_checkpoint_snippet_loads_every_weight(tmp_path: Path, how: str) -> None:
    # the fix for a layer saved reparametrized is that parametrization on the model, not
    # strict=False (which would leave the layer's weight at its initial values)
    trained = _seeded()
    getattr(torch.nn.utils, how)(trained.fc)
    path = tmp_path / "ckpt.pth"
    torch.save(trained.state_dict(), path)
    saved = torch.load(path, weights_only=True)
    top = diagnose_text(_error(Net(), saved)).causes[0]
    assert top.label == "version_buffers" and "strict=False" not in top.fix_code, top.fix_code
    scope: dict[str, Any] = {"model": Net()}
    exec(compile(top.fix_code.replace("CKPT", str(path)), f"<fix for {how}>", "exec"), scope)
    loaded = scope["model"].state_dict()
    assert loaded.keys() == saved.keys()
    for key, value in saved.items():
        assert torch.equal(loaded[key], value), key


def _run(code: str, path: Path, scope: dict[str, Any], **settings: Any) -> dict[str, Any]:
    """Run a printed snippet: its ``# set:`` lines get ``settings``, ``"CKPT"`` the file's path."""
    lines = code.split("\n")
    named = []
    for i, line in enumerate(lines):
        if (m := SETTING.match(line)) is None:
            break
        named.append(m.group(1))
        lines[i] = f"{m.group(1)} = {settings[m.group(1)]!r}"
    assert named == list(settings), (named, code)  # the snippet asks for exactly these
    assert not any(SETTING.match(line) for line in lines[len(named):]), code  # settings come first
    code = "\n".join(lines).replace('"CKPT"', repr(str(path)))
    exec(compile(code, "<printed diagnose fix>", "exec"), scope)
    return scope


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        assert torch.equal(value, b[key]), key


def _trained_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    model.fc(model.features(torch.ones(2, 3, 5, 5)).mean((2, 3))).sum().backward()
    optimizer.step()
    return optimizer


def test_optimizer_file_snippet_loads_model_and_optimizer(tmp_path: Path) -> None:
    trained = _seeded()
    optimizer = _trained_optimizer(trained)
    weights, path = tmp_path / "weights.pth", tmp_path / "optimizer.pth"
    torch.save(trained.state_dict(), weights)
    torch.save(optimizer.state_dict(), path)
    top = diagnose_text(_error(Net(), torch.load(path, weights_only=True))).causes[0]
    assert top.label == "optimizer_state_passed" and "MODEL_WEIGHTS.pth" not in top.fix_code
    model = Net()
    fresh = torch.optim.Adam(model.parameters(), lr=0.1)
    _run(top.fix_code, path, {"model": model, "optimizer": fresh}, MODEL_WEIGHTS=str(weights))
    _equal(model.state_dict(), trained.state_dict())
    for i, state in optimizer.state_dict()["state"].items():
        _equal(fresh.state_dict()["state"][i], state)


def test_file_of_several_optimizers_snippet_loads_the_named_one(tmp_path: Path) -> None:
    optimizer = _trained_optimizer(_seeded())
    other = torch.optim.SGD(Net().parameters(), lr=0.5)
    path, weights = tmp_path / "optimizers.pth", tmp_path / "weights.pth"
    torch.save({"optimG": optimizer.state_dict(), "optimD": other.state_dict()}, path)
    torch.save(_seeded().state_dict(), weights)
    top = diagnose_text(_error(Net(), torch.load(path, weights_only=True))).causes[0]
    assert top.label == "optimizer_state_passed", top
    model = Net()
    fresh = torch.optim.Adam(model.parameters(), lr=0.1)
    _run(top.fix_code, path, {"model": model, "optimizer": fresh}, MODEL_WEIGHTS=str(weights),
         ENTRY="optimG")
    loaded = fresh.state_dict()["state"]
    assert loaded and all(torch.equal(loaded[i]["exp_avg"], s["exp_avg"])
                          for i, s in optimizer.state_dict()["state"].items())


@pytest.mark.filterwarnings("ignore:torch.ao.quantization is deprecated:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor, torch.quantize_per_channel:UserWarning")
@pytest.mark.filterwarnings("ignore:TypedStorage is deprecated:UserWarning")  # saving packed params
@pytest.mark.parametrize("plain_dict", [False, True], ids=["state_dict", "plain_dict"])
def test_dynamic_quantized_checkpoint_snippet_quantizes_then_loads(tmp_path: Path,
                                                                   plain_dict: bool) -> None:
    """Also from a plain dict, which has lost the format versions quantized layers read."""
    torch.manual_seed(0)
    quantized = dynamic_quantized(Mlp())
    path = tmp_path / "ckpt.pth"
    torch.save(dict(quantized.state_dict()) if plain_dict else quantized.state_dict(), path)
    top = diagnose_text(_error(Mlp(), torch.load(path, weights_only=True))).causes[0]
    assert top.label == "adapter_or_quantization" and top.fix_code, top
    scope = _run(top.fix_code, path, {"model": Mlp()})
    x = torch.randn(5, 6)
    model = scope["model"]
    assert torch.equal(model.classifier(model.encoder(x)), quantized.classifier(quantized.encoder(x)))


def test_quantized_state_of_another_library_prints_no_code() -> None:
    # bitsandbytes/GPTQ state needs that library and the model's config: words, not a snippet
    text = ('RuntimeError: Error(s) in loading state_dict for LlamaForCausalLM:\n\tUnexpected key(s) in '
            'state_dict: "model.layers.0.mlp.up_proj.weight.absmax", "model.layers.0.mlp.up_proj.weight.'
            'quant_map", "model.layers.0.mlp.up_proj.weight.quant_state.bitsandbytes__nf4". ')
    top = diagnose_text(text).causes[0]
    assert top.label == "adapter_or_quantization" and top.fix_code == ""
    assert "quantization_config" in top.summary


def _rank_files(tmp_path: Path, full: nn.Module, ways: int) -> list[Path]:
    paths = []
    for rank in range(ways):
        paths.append(tmp_path / f"mp_rank_{rank:02d}.pt")
        torch.save(tensor_parallel_shard(full, ways, rank), paths[-1])
    return paths


def test_tensor_parallel_rank_file_snippet_merges_every_rank(tmp_path: Path) -> None:
    torch.manual_seed(0)
    full = Mlp(width=16)
    paths = _rank_files(tmp_path, full, 2)
    text = _error(Mlp(width=16), torch.load(paths[0], weights_only=True))
    top = diagnose_text(text).causes[0]
    assert (top.label, top.evidence["facts"]["factor"]) == ("partitioned_checkpoint", 2)
    scope = _run(top.fix_code, paths[0], {"model": Mlp(width=16)}, RANK_FILES=[str(p) for p in paths])
    _equal(scope["model"].state_dict(), full.state_dict())


def _tensor_parallel_model(full: nn.Module, ways: int, rank: int) -> nn.Module:
    """The model as built for ``ways``-way tensor parallelism: each Linear holds its rank's piece."""
    model = Mlp(width=16)
    piece = tensor_parallel_shard(full, ways, rank)
    for key, value in piece.items():
        module, _, name = key.rpartition(".")
        if isinstance(getattr(model.get_submodule(module), name), nn.Parameter):
            setattr(model.get_submodule(module), name, nn.Parameter(torch.zeros_like(value)))
    return model


def test_tensor_parallel_model_snippet_loads_this_ranks_piece(tmp_path: Path) -> None:
    torch.manual_seed(0)
    full = Mlp(width=16)
    path = tmp_path / "full.pth"
    torch.save(full.state_dict(), path)
    text = _error(_tensor_parallel_model(full, 2, 1), torch.load(path, weights_only=True))
    top = diagnose_text(text).causes[0]
    assert (top.label, top.evidence["facts"]["side"]) == ("partitioned_checkpoint", "model"), top
    scope = _run(top.fix_code, path, {"model": _tensor_parallel_model(full, 2, 1)}, RANK=1)
    _equal(scope["model"].state_dict(), tensor_parallel_shard(full, 2, 1))


def _peft_trained(tmp_path: Path, r: int) -> tuple[nn.Module, Path]:
    """A LoRA adapter on Net's Linear layers, trained (lora_B away from its zero start), saved by
    PEFT's own ``save_pretrained`` (adapter_config.json and adapter_model.safetensors)."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(_seeded(), LoraConfig(r=r, lora_alpha=8, target_modules=["fc", "head"]))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    model.save_pretrained(tmp_path / "adapter")
    return model, tmp_path / "adapter"


def _outputs(model: nn.Module) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model.head(model.fc(torch.linspace(-1, 1, 8).reshape(2, 4)))


@pytest.mark.frameworks
@pytest.mark.parametrize("file", ["peft_state_dict", "adapter_alone"])
def test_peft_checkpoint_in_plain_model_snippet_merges_the_adapter(tmp_path: Path, file: str) -> None:
    from peft import get_peft_model_state_dict

    trained, adapter_dir = _peft_trained(tmp_path, r=4)
    state = trained.state_dict() if file == "peft_state_dict" else get_peft_model_state_dict(trained)
    path = tmp_path / "ckpt.pth"
    torch.save(state, path)
    text = _error(_seeded(), torch.load(path, weights_only=True))
    top = diagnose_text(text).causes[0]
    assert top.label == "adapter_or_quantization", top
    assert rules_first(text).confidence >= 0.8  # the rules decide; reliability.py bounds the report
    scope = _run(top.fix_code, path, {"model": _seeded()}, ADAPTER_DIR=str(adapter_dir))
    assert type(scope["model"]) is Net  # merged: the plain model again, with the adapter's update
    assert torch.allclose(_outputs(scope["model"]), _outputs(trained), atol=1e-6)


@pytest.mark.frameworks
def test_peft_adapter_of_another_rank_snippet_rebuilds_the_adapter(tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model

    trained, adapter_dir = _peft_trained(tmp_path, r=4)
    path = tmp_path / "ckpt.pth"
    torch.save(trained.state_dict(), path)
    user = get_peft_model(_seeded(), LoraConfig(r=2, lora_alpha=8, target_modules=["fc", "head"]))
    top = diagnose_text(_error(user, torch.load(path, weights_only=True))).causes[0]
    assert (top.label, top.evidence["facts"]["side"]) == ("adapter_or_quantization", "resized")
    scope = _run(top.fix_code, path, {"model": user}, ADAPTER_DIR=str(adapter_dir))
    assert scope["model"].peft_config["default"].r == 4
    _equal(scope["model"].state_dict(), trained.state_dict())


class Scaled(nn.Module):
    def __init__(self, scalar: bool) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.logit_scale = nn.Parameter(torch.tensor(2.5) if scalar else torch.tensor([1.0]))


def test_reshaped_tensor_snippet_loads_the_elements(tmp_path: Path) -> None:
    torch.manual_seed(0)
    saved = Scaled(scalar=True)
    path = tmp_path / "ckpt.pth"
    torch.save(saved.state_dict(), path)
    top = diagnose_text(_error(Scaled(scalar=False), torch.load(path, weights_only=True))).causes[0]
    assert top.label == "model_code_changed", top
    scope = _run(top.fix_code, path, {"model": Scaled(scalar=False)})
    assert scope["model"].logit_scale.tolist() == [2.5]
    assert torch.equal(scope["model"].fc.weight, saved.fc.weight)


_ZERO_MODEL = ("import torch\n"
               "from tests.frameworks.writers import HIDDEN\n"
               "model = torch.nn.Sequential(torch.nn.Linear(8, HIDDEN), torch.nn.ReLU(),\n"
               "    torch.nn.Linear(HIDDEN, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, 4))\n")


def _child(code: str, cwd: Path) -> str:
    """Run ``code`` in a fresh interpreter (DeepSpeed sets up its accelerator once per process)."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[3]
    env = {**os.environ, "PYTHONPATH": str(root), "DS_ACCELERATOR": "cpu", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.frameworks
def test_zero3_placeholder_snippet_gathers_the_full_weights(tmp_path: Path) -> None:
    from ckpttools.formats.registry import open_checkpoint

    _child(f"from tests.frameworks.writers import main; main([{str(tmp_path)!r}, 'zero3'])", tmp_path)
    folder = tmp_path / "zero3"
    # the user's load: the engine's model states file, whose ZeRO-3 parameters are placeholders
    states = folder / "global_step2" / "zero_pp_rank_0_mp_rank_00_model_states.pt"
    text = _child(_ZERO_MODEL + (
        f"sd = torch.load({str(states)!r}, weights_only=False)['module']\n"
        "try:\n    model.load_state_dict(sd)\nexcept RuntimeError as e:\n    print(e)\n"), tmp_path)
    top = diagnose_text(text).causes[0]
    assert (top.label, top.evidence["facts"]["side"]) == ("partitioned_checkpoint", "checkpoint"), text
    lines = top.fix_code.split("\n")  # run as printed in a child, with CHECKPOINT_DIR set
    assert SETTING.match(lines[0]) and lines[0].startswith("CHECKPOINT_DIR = ")
    printed = "\n".join([f"CHECKPOINT_DIR = {str(folder)!r}"] + lines[1:])
    out = tmp_path / "loaded.pt"
    _child(_ZERO_MODEL + printed + f"\ntorch.save(model.state_dict(), {str(out)!r})\n", tmp_path)
    loaded = torch.load(out, weights_only=True)
    with open_checkpoint(folder) as reader:  # the trained weights, read without DeepSpeed
        assert sorted(loaded) == sorted(e.key for e in reader.tensor_entries())
        for key, value in loaded.items():
            assert value.numel() > 0 and torch.equal(value, reader.load(key)), key


class TiedLM(nn.Module):
    """torchtune-style naming: ``tok_embeddings`` and an ``output`` tied to it when ``tied``."""

    def __init__(self, tied: bool) -> None:
        super().__init__()
        self.tok_embeddings = nn.Embedding(16, 4)
        self.norm = nn.LayerNorm(4)
        self.output = nn.Linear(4, 16, bias=False)
        if tied:
            self.output.weight = self.tok_embeddings.weight


def test_tied_output_snippet_ties_the_loaded_embedding(tmp_path: Path) -> None:
    torch.manual_seed(0)
    saved = TiedLM(tied=True)
    # saved with the tied alias left out (safetensors' save_model and DeepSpeed do so)
    path = tmp_path / "ckpt.pth"
    torch.save({k: v for k, v in saved.state_dict().items() if k != "output.weight"}, path)
    top = diagnose_text(_error(TiedLM(tied=False), torch.load(path, weights_only=True))).causes[0]
    assert top.label == "tied_weights" and "tie_weights" not in top.fix_code, top
    model = _run(top.fix_code, path, {"model": TiedLM(tied=False)})["model"]
    assert model.output.weight is model.tok_embeddings.weight
    _equal(model.state_dict(), saved.state_dict())


@pytest.mark.frameworks
def test_tied_lm_head_snippet_on_a_transformers_model(tmp_path: Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=96, n_positions=32, n_embd=16, n_layer=1, n_head=2)
    torch.manual_seed(0)
    saved = GPT2LMHeadModel(config)
    path = tmp_path / "ckpt.pth"
    torch.save({k: v for k, v in saved.state_dict().items() if k != "lm_head.weight"}, path)
    top = diagnose_text(_error(GPT2LMHeadModel(config), torch.load(path, weights_only=True))).causes[0]
    assert top.label == "tied_weights", top
    model = _run(top.fix_code, path, {"model": GPT2LMHeadModel(config)})["model"]
    assert model.lm_head.weight is model.transformer.wte.weight
    _equal(model.state_dict(), saved.state_dict())


class Stem(nn.Module):
    def __init__(self, in_chans: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, 8, 3)
        self.bn1, self.fc = nn.BatchNorm2d(8), nn.Linear(8, 4)


@pytest.mark.parametrize("in_chans", [1, 4])
def test_input_channels_snippet_adapts_the_stem(tmp_path: Path, in_chans: int) -> None:
    torch.manual_seed(0)
    saved = Stem(3)
    path = tmp_path / "ckpt.pth"
    torch.save(saved.state_dict(), path)
    top = diagnose_text(_error(Stem(in_chans), torch.load(path, weights_only=True))).causes[0]
    assert (top.label, top.evidence["facts"]["kind"]) == ("architecture_variant", "in_chans"), top
    model = _run(top.fix_code, path, {"model": Stem(in_chans)})["model"]  # a strict load
    w = saved.conv1.weight.detach()
    want = w.sum(1, keepdim=True) if in_chans == 1 else torch.cat([w, w[:, :1]], 1) * (3 / 4)
    assert torch.allclose(model.conv1.weight, want)
    assert torch.equal(model.fc.weight, saved.fc.weight)


def test_a_variants_configuration_is_words_not_code() -> None:
    # another depth, width or input size needs the checkpoint's configuration: no code to run
    deeper = nn.Sequential(*(nn.Linear(4, 4) for _ in range(4)))
    text = _error(nn.Sequential(*(nn.Linear(4, 4) for _ in range(2))), deeper.state_dict())
    top = diagnose_text(text).causes[0]
    assert top.label == "architecture_variant" and top.fix_code == ""
    assert "depth" in top.summary


class _Attention(nn.Module):
    def __init__(self, parts: tuple[str, ...], fused: str | None) -> None:
        super().__init__()
        if fused is not None:
            setattr(self, fused, nn.Linear(8, 8 * len(parts)))
        else:
            for name in parts:
                setattr(self, name, nn.Linear(8, 8))
        self.out = nn.Linear(8, 8)


class _Blocks(nn.Module):
    def __init__(self, parts: tuple[str, ...], fused: str | None) -> None:
        super().__init__()
        self.layers = nn.ModuleList(_Attention(parts, fused) for _ in range(2))


@pytest.mark.parametrize("parts, fused", [(("q_proj", "k_proj", "v_proj"), "qkv"),
                                          (("query", "key", "value"), "c_attn"),
                                          (("q", "k", "v"), "qkv"),
                                          (("q_lin", "k_lin", "v_lin"), "qkv_proj"),
                                          (("gate_proj", "up_proj"), "gate_up_proj")])
@pytest.mark.parametrize("fused_side", ["checkpoint", "model"])
def test_fused_projection_snippet_stacks_or_cuts_the_parts(tmp_path: Path, parts: tuple[str, ...],
                                                           fused: str, fused_side: str) -> None:
    torch.manual_seed(0)
    source = _Blocks(parts, fused if fused_side == "checkpoint" else None)
    model = _Blocks(parts, fused if fused_side == "model" else None)
    path = tmp_path / "ckpt.pth"
    torch.save(source.state_dict(), path)
    top = diagnose_text(_error(model, source.state_dict())).causes[0]
    assert top.label == "fused_projection"
    scope = _run(top.fix_code, path, {"model": model})
    for i in range(2):
        src, dst = source.layers[i], scope["model"].layers[i]
        one, many = (src, dst) if fused_side == "checkpoint" else (dst, src)
        for leaf in ("weight", "bias"):
            stacked = torch.cat([getattr(getattr(many, n), leaf) for n in parts], dim=0)
            assert torch.equal(getattr(getattr(one, fused), leaf), stacked), (i, leaf)


def test_fused_projection_snippet_asks_for_the_fused_name_it_cannot_see(tmp_path: Path) -> None:
    parts = ("q_proj", "k_proj", "v_proj")
    torch.manual_seed(0)
    source, model = _Blocks(parts, "Wqkv"), _Blocks(parts, None)
    path = tmp_path / "ckpt.pth"
    torch.save(source.state_dict(), path)
    text = _error(model, source.state_dict())
    text = text.split("Unexpected key(s)")[0].rstrip().rstrip(".") + "."  # the paste stops there
    top = diagnose_text(text).causes[0]
    assert top.label == "fused_projection" and top.confidence < 0.8
    scope = _run(top.fix_code, path, {"model": model}, FUSED="Wqkv")
    loaded = scope["model"].state_dict()
    for key, value in source.state_dict().items():
        if ".Wqkv." in key:
            head, leaf = key.split(".Wqkv.")
            assert torch.equal(torch.cat([loaded[f"{head}.{n}.{leaf}"] for n in parts]), value)


class _Conv1D(nn.Module):
    """GPT-2's Conv1D: an (in, out) weight where nn.Linear holds (out, in)."""

    def __init__(self, inputs: int, outputs: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(inputs, outputs))
        self.bias = nn.Parameter(torch.randn(outputs))


class _Mlp(nn.Module):
    def __init__(self, conv1d: bool) -> None:
        super().__init__()
        layer = _Conv1D if conv1d else nn.Linear
        self.c_fc, self.c_proj = layer(8, 16), layer(16, 8)


def test_transposed_weights_snippet_transposes_them(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source, model = _Mlp(conv1d=True), _Mlp(conv1d=False)
    path = tmp_path / "ckpt.pth"
    torch.save(source.state_dict(), path)
    top = diagnose_text(_error(model, source.state_dict())).causes[0]
    assert top.label == "transposed_weights"
    loaded = _run(top.fix_code, path, {"model": model})["model"].state_dict()
    for key, value in source.state_dict().items():
        assert torch.equal(loaded[key], value.t() if key.endswith("weight") else value), key


class _Vocoder(nn.Module):
    def __init__(self, new_form: bool) -> None:
        super().__init__()
        self.pre = nn.Conv1d(4, 8, 3)
        self.post = nn.Conv1d(8, 4, 3)
        for conv in (self.pre, self.post):
            if new_form:
                torch.nn.utils.parametrizations.weight_norm(conv)
            else:
                torch.nn.utils.weight_norm(conv)


@pytest.mark.filterwarnings("ignore:.*weight_norm.*:FutureWarning")
@pytest.mark.parametrize("top_level", [False, True], ids=["in-a-module", "top-level-layer"])
def test_weight_norm_of_the_other_form_snippet_loads_g_and_v(tmp_path: Path, top_level: bool) -> None:
    """A file saved with parametrizations.weight_norm, loaded by code using the old
    weight_norm (weight_g/weight_v): the same two learned tensors, renamed, never dropped."""
    torch.manual_seed(0)
    saved_model = _Vocoder(new_form=True)
    model = _Vocoder(new_form=False)
    if top_level:
        saved_model, model = saved_model.pre, model.pre
    path = tmp_path / "ckpt.pth"
    torch.save(saved_model.state_dict(), path)
    saved = torch.load(path, weights_only=True)
    top = diagnose_text(_error(model, saved)).causes[0]
    assert top.label == "version_buffers" and "strict=False" not in top.fix_code, top.fix_code
    exec(compile(top.fix_code.replace("CKPT", str(path)), "<weight_norm fix>", "exec"),
         {"model": model})
    loaded = model.state_dict()
    for key, value in saved.items():
        old = key.replace("parametrizations.weight.original0", "weight_g").replace(
            "parametrizations.weight.original1", "weight_v")
        assert torch.equal(loaded[old], value), key


@pytest.mark.frameworks
def test_peft_state_dict_diagnosed_from_files_loads_base_then_merges(tmp_path: Path) -> None:
    """From files, the plan loads a PEFT model's base weights and drops lora_A/lora_B; the
    adapter's fix is that plan and then the merge, so the model ends with the fine-tuning."""
    from ckpttools.ops.diagnose.diagnosis import diagnose_checkpoint
    from ckpttools.formats.registry import open_checkpoint

    trained, adapter_dir = _peft_trained(tmp_path, r=4)
    path = tmp_path / "ckpt.pth"
    torch.save(trained.state_dict(), path)
    with open_checkpoint(str(path)) as reader:
        result = diagnose_checkpoint(reader, Net())
    cause = next(c for c in result.causes if c.label == "adapter_or_quantization")
    assert cause.fix_code != result.plan.python and result.plan.python in cause.fix_code
    drop = next(s for s in result.plan.steps if s.kind == "drop")  # diff --model shows it too
    assert "LoRA adapter's lora_A/lora_B among them" in drop.summary
    torch.manual_seed(123)  # a model whose own weights differ: the base must come from the file
    scope = _run(cause.fix_code, path, {"model": Net()}, ADAPTER_DIR=str(adapter_dir))
    assert type(scope["model"]) is Net
    assert torch.allclose(_outputs(scope["model"]), _outputs(trained), atol=1e-6)


def _generator(track: bool) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3),
                         nn.InstanceNorm2d(4, affine=True, track_running_stats=track))


def test_instancenorm_stats_before_pytorch_04_snippet_drops_only_theirs(tmp_path: Path) -> None:
    # a file without version metadata (a plain dict, as before 0.4) whose InstanceNorm kept stats
    old = _generator(True)
    old[1].running_mean.fill_(0.5)  # the BatchNorm's stats must still load
    sd = dict(old.state_dict())
    path = tmp_path / "ckpt.pth"
    torch.save(sd, path)
    model = _generator(False)
    text = _error(model, torch.load(path, weights_only=True))
    assert "Unexpected running stats buffer(s)" in text
    top = diagnose_text(text).causes[0]
    assert top.label == "version_buffers" and "InstanceNorm" in top.summary
    scope: dict[str, Any] = {"model": model}
    exec(compile(top.fix_code.replace("CKPT", str(path)), "<diagnose fix>", "exec"), scope)
    loaded = scope["model"].state_dict()
    assert torch.equal(loaded["1.running_mean"], sd["1.running_mean"])
    assert all(torch.equal(loaded[k], v) for k, v in sd.items() if k in loaded)
