"""Converting a model folder (transformers ``save_pretrained``, accelerate ``save_state``).

Such a folder holds the model's weights (``model.safetensors``, ``pytorch_model.bin`` or a
sharded set with its index) beside other files: optimizer and scheduler states, RNG states,
``config.json``, tokenizer files. ``convert`` takes the model weights as one state_dict; the
other checkpoint files are named in the report, each selectable with ``--key <file name>``.
When the output is a folder, the non-checkpoint files (``config.json`` ...) are copied into it,
with ``torch_dtype`` updated after a ``--dtype`` cast.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from dataclasses import dataclass

from ckpttools.errors import CkptError
from ckpttools.formats.base import Format

# weight file names of transformers, diffusers and accelerate (model_1 ... for extra models)
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "diffusion_pytorch_model.safetensors",
                "diffusion_pytorch_model.bin", "model.pth", "model.pt", "model.bin")
CONFIG = "config.json"
_DTYPE_KEYS = ("torch_dtype", "dtype")  # transformers < 5 writes torch_dtype, >= 5 dtype


@dataclass(frozen=True)
class FolderPlan:
    """What to convert out of a folder.

    Attributes:
        open_path: the file or folder to open as the source.
        key: the key to select inside it (None: all of it).
        member: the file of the folder that was picked (None: the folder as a whole).
        others: the folder's other checkpoint files, each selectable with ``--key``.
        side_files: non-checkpoint files to copy into a folder output (``config.json`` ...).
    """

    open_path: str
    key: str | None
    member: str | None = None
    others: tuple[str, ...] = ()
    side_files: tuple[str, ...] = ()


def plan_source(path: str, key: str | None) -> FolderPlan:
    """Pick the model weights of a model folder, or the member file ``key`` starts with.

    A file, a DCP folder or a folder without a known weight file is converted as it is.
    """
    if not os.path.isdir(path):
        return FolderPlan(path, key)
    from ckpttools.formats.folder import checkpoint_files
    from ckpttools.formats.registry import detect_format

    names = sorted(os.listdir(path))
    side = tuple(n for n in names if os.path.isfile(os.path.join(path, n))
                 and not n.endswith(".index.json") and n not in checkpoint_files(path))
    try:
        fmt = detect_format(path)
    except CkptError:  # opening the folder below reports what is wrong
        return FolderPlan(path, key)
    if fmt is not Format.FOLDER:  # sharded set or DCP: already one checkpoint
        return FolderPlan(path, key, side_files=side if fmt is not Format.DCP else ())
    files = checkpoint_files(path)
    member, inner = _member_for(files, key)
    if member is None:
        return FolderPlan(path, key)
    others = tuple(f for f in files if f != member)
    return FolderPlan(os.path.join(path, member), inner, member, others, side)


def _member_for(files: list[str], key: str | None) -> tuple[str | None, str | None]:
    if key:
        for name in sorted(files, key=len, reverse=True):
            if key == name or key.startswith(name + "."):
                return name, key[len(name) + 1:] or None
        return None, key
    return next((f for f in WEIGHT_FILES if f in files), None), None


def copy_side_files(src: str, out_dir: str, plan: FolderPlan, dtype: str | None) -> list[str]:
    """Copy ``plan.side_files`` from folder ``src`` into ``out_dir``; ``config.json`` gets the
    cast dtype. Returns the names copied."""
    for name in plan.side_files:
        if name == CONFIG and dtype is not None:
            _write_config(os.path.join(src, name), os.path.join(out_dir, name), dtype)
        else:
            shutil.copyfile(os.path.join(src, name), os.path.join(out_dir, name))
    return list(plan.side_files)


def _write_config(src: str, dest: str, dtype: str) -> None:
    with open(src, encoding="utf-8") as f:
        config = json.load(f)
    for k in _DTYPE_KEYS:
        if k in config or k == "torch_dtype":
            config[k] = dtype
    with open(dest, "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")


def warn_stale_config(src: str, plan: FolderPlan, dtype: str | None) -> None:
    """Warn when a cast's single-file output leaves ``config.json`` naming the old dtype."""
    if dtype is None or CONFIG not in plan.side_files:
        return
    try:
        with open(os.path.join(src, CONFIG), encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError):
        return
    old = next((config[k] for k in _DTYPE_KEYS if k in config), None)
    if old is not None and old != dtype:
        warnings.warn(f"{os.path.join(src, CONFIG)}: says torch_dtype {old}, the output holds "
                      f"{dtype}; from_pretrained(torch_dtype='auto') reads the config, so set "
                      f"torch_dtype to {dtype} there or convert to a folder "
                      "(--max-shard-size) to get an updated copy", stacklevel=3)
