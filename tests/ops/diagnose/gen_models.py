"""Small real architectures for the generated diagnose corpus, and the modules causes add.

Each architecture is built from keyword arguments that the causes change (classes or vocabulary,
depth, width, fused attention), so another configuration is a real other model, not edited keys.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


class ConvNet(nn.Module):
    """torchvision-style: stem conv + BatchNorm, Sequential stages, ``fc`` classifier."""

    def __init__(self, num_classes: int = 10, depth: int = 2, width: int = 8, norm: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        layers: list[nn.Module] = []
        for _ in range(depth):
            layers += [nn.Conv2d(width, width, 3, padding=1)]
            layers += [nn.BatchNorm2d(width)] if norm else []
            layers += [nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(width, num_classes)


class Mlp(nn.Module):
    """A tabular classifier: ``encoder`` Sequential with LayerNorm, ``classifier`` head."""

    def __init__(self, num_classes: int = 4, depth: int = 3, width: int = 12, norm: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(6, width)]
        for _ in range(depth - 1):
            layers += ([nn.LayerNorm(width)] if norm else []) + [nn.GELU(), nn.Linear(width, width)]
        self.encoder = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, num_classes)


class Attention(nn.Module):
    def __init__(self, d: int, fused: bool) -> None:
        super().__init__()
        if fused:
            self.wqkv = nn.Linear(d, 3 * d, bias=False)
        else:
            self.wq, self.wk, self.wv = (nn.Linear(d, d, bias=False) for _ in range(3))
        self.wo = nn.Linear(d, d, bias=False)


class Block(nn.Module):
    def __init__(self, d: int, fused: bool) -> None:
        super().__init__()
        self.attention_norm = nn.LayerNorm(d)
        self.attention = Attention(d, fused)
        self.ffn_norm = nn.LayerNorm(d)
        self.feed_forward = nn.Sequential(nn.Linear(d, 2 * d), nn.SiLU(), nn.Linear(2 * d, d))


class TinyLM(nn.Module):
    """torchtune/llama-style decoder: ``tok_embeddings``, ``layers``, ``output`` tied to the embedding."""

    def __init__(self, vocab: int = 32, depth: int = 2, width: int = 8, fused: bool = False) -> None:
        super().__init__()
        self.tok_embeddings = nn.Embedding(vocab, width)
        self.layers = nn.ModuleList([Block(width, fused) for _ in range(depth)])
        self.norm = nn.LayerNorm(width)
        self.output = nn.Linear(width, vocab, bias=False)
        self.output.weight = self.tok_embeddings.weight


class Encoder(nn.Module):
    """torch building blocks: ``nn.TransformerEncoder`` (fused ``in_proj``), a pooled ``head``."""

    def __init__(self, num_classes: int = 3, depth: int = 2, width: int = 8) -> None:
        super().__init__()
        self.embed = nn.Linear(5, width)
        layer = nn.TransformerEncoderLayer(width, 2, dim_feedforward=2 * width, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.head = nn.Linear(width, num_classes)


class Tagger(nn.Module):
    """A recurrent tagger: embedding, ``nn.LSTM``, ``proj`` output layer."""

    def __init__(self, num_classes: int = 6, depth: int = 2, width: int = 8) -> None:
        super().__init__()
        self.embedding = nn.Embedding(20, width)
        self.rnn = nn.LSTM(width, width, num_layers=depth)
        self.proj = nn.Linear(width, num_classes)


class DetrLike(nn.Module):
    """A multi-scale detector (Deformable-DETR style): a conv ``backbone``, one ``level_embed`` row
    per feature level, encoder layers, a box head with BatchNorm and a ``class_embed`` classifier."""

    def __init__(self, num_classes: int = 5, depth: int = 2, width: int = 8, num_levels: int = 4,
                 head_width: int = 8, norm: bool = True) -> None:
        super().__init__()
        bn = (lambda n: [nn.BatchNorm2d(n)]) if norm else (lambda n: [])
        self.backbone = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), *bn(width), nn.ReLU())
        self.level_embed = nn.Parameter(torch.zeros(num_levels, width))
        self.encoder = nn.ModuleList([nn.Linear(width, width) for _ in range(depth)])
        box_norm = [nn.BatchNorm1d(head_width)] if norm else []
        self.bbox_head = nn.Sequential(nn.Linear(width, head_width), *box_norm, nn.ReLU(),
                                       nn.Linear(head_width, 4))
        self.class_embed = nn.Linear(width, num_classes + 1)


class UNet(nn.Module):
    """A segmentation U-Net: ``inc``, ``downs``/``ups`` stages (conv, norm, transposed conv), a 1x1
    ``outc`` with one channel per class."""

    def __init__(self, num_classes: int = 2, depth: int = 2, width: int = 8, norm: bool = True) -> None:
        super().__init__()
        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1),
                                 *([nn.BatchNorm2d(cout)] if norm else []), nn.ReLU())
        self.inc = block(3, width)
        self.downs = nn.ModuleList([block(width, width) for _ in range(depth)])
        self.ups = nn.ModuleList([nn.ConvTranspose2d(width, width, 2, stride=2) for _ in range(depth)])
        self.outc = nn.Conv2d(width, num_classes, 1)


class VitBlock(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.Module()
        self.attn.qkv, self.attn.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Module()
        self.mlp.fc1, self.mlp.fc2 = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)


class TinyViT(nn.Module):
    """timm-style ViT: ``patch_embed.proj``, ``cls_token``, ``pos_embed``, ``blocks`` with a fused
    ``attn.qkv``, a final ``norm`` and a ``head``."""

    def __init__(self, num_classes: int = 5, depth: int = 2, width: int = 8, img_size: int = 8) -> None:
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, width, 4, stride=4)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, (img_size // 4) ** 2 + 1, width))
        self.blocks = nn.Sequential(*[VitBlock(width) for _ in range(depth)])
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)


class LoraLinear(nn.Module):
    """PEFT's layout: the frozen ``base_layer`` and the low-rank ``lora_A``/``lora_B`` per adapter."""

    def __init__(self, base: nn.Linear, r: int = 2) -> None:
        super().__init__()
        self.base_layer = base
        self.lora_A = nn.ModuleDict({"default": nn.Linear(base.in_features, r, bias=False)})
        self.lora_B = nn.ModuleDict({"default": nn.Linear(r, base.out_features, bias=False)})


def add_lora(model: nn.Module) -> nn.Module:
    """Wrap every ``nn.Linear`` inside the model's blocks in a LoRA layer (not the head)."""
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Linear) and name and type(module) is not TinyLM:
                setattr(module, child_name, LoraLinear(child))
    return model


def add_profiler_buffers(model: nn.Module) -> nn.Module:
    """What thop's ``profile`` leaves on a model: ``total_ops``/``total_params`` on every module."""
    for module in model.modules():
        module.register_buffer("total_ops", torch.zeros(1, dtype=torch.float64))
        module.register_buffer("total_params", torch.zeros(1, dtype=torch.float64))
    return model


class Detector(nn.Module):
    """A detector around a classification network: its ``backbone`` (without the classifier),
    a ``neck`` and a ``bbox_head``, as mmdet/detectron2-style models name them."""

    def __init__(self, backbone: nn.Module, classifier: str) -> None:
        super().__init__()
        delattr(backbone, classifier)
        self.backbone = backbone
        self.neck = nn.Linear(8, 8)
        self.bbox_head = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))


def dynamic_quantized(model: nn.Module) -> nn.Module:
    """``torch.ao.quantization.quantize_dynamic`` on the model's Linear layers (int8 weights)."""
    with warnings.catch_warnings():
        # NOTE(torch>=2.10): torch.ao.quantization warns that it moves to torchao; the files
        # people already have were written by it, which is what this case reproduces.
        warnings.filterwarnings("ignore", "torch.ao.quantization is deprecated", DeprecationWarning)
        return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)


def tensor_parallel_shard(model: nn.Module, ways: int = 2, rank: int = 0) -> dict[str, torch.Tensor]:
    """One rank's file of Megatron-style tensor parallelism: Linear layers alternate between
    column-parallel (weight and bias cut on the output axis) and row-parallel (weight cut on the
    input axis, bias replicated); everything else is replicated."""
    out = dict(model.state_dict())
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    for i, (name, layer) in enumerate(linears):
        axis = i % 2
        if layer.weight.shape[axis] % ways:
            continue
        out[f"{name}.weight"] = layer.weight.detach().chunk(ways, axis)[rank].clone()
        if layer.bias is not None and axis == 0:
            out[f"{name}.bias"] = layer.bias.detach().chunk(ways)[rank].clone()
    return out


class LinInside(nn.Module):
    """PyG's ``GCNConv`` since 2.0: the weight sits in a ``lin`` submodule, the bias stays outside."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.lin = nn.Linear(linear.in_features, linear.out_features, bias=False)
        if linear.bias is not None:
            self.bias = nn.Parameter(linear.bias.detach().clone())


def weights_in_submodule(model: nn.Module) -> nn.Module | None:
    """Every plain ``nn.Linear`` becomes a :class:`LinInside` (a layer class that changed its
    layout); ``None`` when the model has fewer than two."""
    spots = [(module, name) for module in model.modules() for name, child in module.named_children()
             if type(child) is nn.Linear]
    if len(spots) < 2:
        return None
    for module, name in spots:
        setattr(module, name, LinInside(getattr(module, name)))
    return model


def vocab_parallel_shard(model: nn.Module, ways: int = 8) -> dict[str, torch.Tensor]:
    """Rank 0's file of a vocabulary-parallel model: embedding and output rows cut in ``ways``."""
    out = dict(model.state_dict())
    for name, layer in model.named_modules():
        if isinstance(layer, (nn.Embedding, nn.Linear)) and name in ("tok_embeddings", "output"):
            out[f"{name}.weight"] = layer.weight.detach().chunk(ways)[0].clone()
    return out


def modified_network(model: nn.Module, channels: int = 11) -> nn.Module:
    """The network as a user modified it for training: the stem conv reads ``channels`` inputs
    and new modules (``attention``, ``conv_reduce``) were added."""
    stem = next(((parent, name, child) for parent in model.modules()
                 for name, child in parent.named_children()
                 if isinstance(child, nn.Conv2d) and child.in_channels == 3), None)
    if stem is None:
        return model
    parent, name, conv = stem
    setattr(parent, name, nn.Conv2d(channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding))
    model.attention = nn.MultiheadAttention(conv.out_channels, 2)
    model.conv_reduce = nn.Conv2d(2 * conv.out_channels, conv.out_channels, 1)
    return model


class Conv1D(nn.Module):
    """GPT-2's ``Conv1D``: an ``nn.Linear`` whose weight is stored (in, out)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.weight = nn.Parameter(linear.weight.detach().t().clone())
        if linear.bias is not None:
            self.bias = nn.Parameter(linear.bias.detach().clone())


def to_conv1d(model: nn.Module) -> nn.Module:
    """Replace every ``nn.Linear`` with GPT-2's transposed ``Conv1D``."""
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Linear) and child.in_features != child.out_features:
                setattr(module, child_name, Conv1D(child))
    return model


@dataclass(frozen=True)
class Arch:
    """An architecture and the arguments causes change: ``count`` (classes/vocabulary), depth, width."""

    name: str
    build: Callable[..., nn.Module]
    count: str
    head: str
    has_norm_arg: bool = False
    kwargs: dict[str, Any] = field(default_factory=dict)

    def make(self, seed: int = 0, **overrides: Any) -> nn.Module:
        """The model with the default configuration, changed by ``overrides``."""
        torch.manual_seed(seed)
        return self.build(**{**self.kwargs, **overrides})


ARCHS = (
    Arch("convnet", ConvNet, "num_classes", "fc", has_norm_arg=True),
    Arch("mlp", Mlp, "num_classes", "classifier", has_norm_arg=True),
    Arch("tinylm", TinyLM, "vocab", "output"),
    Arch("encoder", Encoder, "num_classes", "head"),
    Arch("tagger", Tagger, "num_classes", "proj"),
    Arch("detr", DetrLike, "num_classes", "class_embed", has_norm_arg=True),
    Arch("unet", UNet, "num_classes", "outc", has_norm_arg=True),
    Arch("vit", TinyViT, "num_classes", "head"),
)
