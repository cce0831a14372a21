"""Write the example files that the README's commands run on, and keep them.

Usage: python examples/make_examples.py DIR

DIR gets (every file written by the real libraries, deterministic from seed 0):

- ``checkpoint.pth``: PyTorch's "saving a general checkpoint" tutorial convnet, trained with SGD
  and saved at epoch 3 of 5 (``epoch``, ``model_state_dict``, ``optimizer_state_dict``, ``loss``);
- ``model.py``: that convnet (``--model model.py:Net``, or ``--model model:Net`` from DIR);
- ``ddp.pth``: its state_dict as ``nn.DataParallel`` saves it (every key starts with ``module.``);
- ``error.txt``: the error ``Net().load_state_dict(torch.load("ddp.pth"))`` raises;
- ``recipe.py``: the tutorial's linear regression as a verify-resume recipe;
- ``ckpt_epoch3.pt``, ``ckpt_epoch4.pt``: that recipe's training saved after epochs 3 and 4;
- ``checkpoints/``: a folder to audit in CI: ``last.pth`` and ``model.safetensors``.

Run again on the same DIR, it starts afresh (removing what the README's commands wrote there); it
refuses a DIR that holds anything else.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
import traceback
from pathlib import Path
from types import ModuleType

import torch
from safetensors.torch import save_file
from torch import nn

HERE = Path(__file__).resolve().parent
MARKER = ".ckpttools-examples"


def _module(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_example_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_tutorial_pair(recipe: ModuleType, out: Path, epochs: tuple[int, ...] = (3, 4)) -> None:
    """Train the recipe one step per epoch and save the tutorial layout after ``epochs``."""
    torch.manual_seed(0)
    model = recipe.build_model()
    optimizer = recipe.build_optimizer(model)
    for epoch in range(1, max(epochs) + 1):
        optimizer.zero_grad()
        loss = recipe.loss(model, recipe.batch(epoch - 1))
        loss.backward()
        optimizer.step()
        if epoch in epochs:
            torch.save({"epoch": epoch, "model_state_dict": model.state_dict(),
                        "optimizer_state_dict": optimizer.state_dict(), "loss": loss.item()},
                       out / f"ckpt_epoch{epoch}.pt")


def write_load_error(net: nn.Module, ddp: Path, out: Path) -> None:
    """What a user sees when loading a DataParallel state_dict into the bare model."""
    try:
        net.load_state_dict(torch.load(ddp, weights_only=True))
    except RuntimeError:
        out.write_text(traceback.format_exc(limit=0))
    else:  # pragma: no cover - the prefix makes it fail
        raise AssertionError("the DataParallel state_dict loaded into the bare model")


def fresh_folder(out: Path) -> None:
    """An empty ``out``; a folder this script wrote before is emptied, any other is refused."""
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).exists():
            sys.exit(f"{out}: folder is not empty and was not written by this script; pass a new folder")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by examples/make_examples.py; rerunning it empties this folder\n")


def main(dest: str) -> None:
    out = Path(dest)
    fresh_folder(out)
    shutil.copyfile(HERE / "tutorial_checkpoint.py", out / "model.py")
    shutil.copyfile(HERE / "tutorial_linear.py", out / "recipe.py")
    tutorial = _module(HERE / "tutorial_checkpoint.py")
    tutorial.main(str(out / "checkpoint.pth"))
    state = torch.load(out / "checkpoint.pth", weights_only=True)
    net = tutorial.Net()
    net.load_state_dict(state["model_state_dict"])
    torch.save(nn.DataParallel(net).state_dict(), out / "ddp.pth")
    write_load_error(tutorial.Net(), out / "ddp.pth", out / "error.txt")
    write_tutorial_pair(_module(HERE / "tutorial_linear.py"), out)
    (out / "checkpoints").mkdir(exist_ok=True)
    shutil.copyfile(out / "checkpoint.pth", out / "checkpoints" / "last.pth")
    save_file(net.state_dict(), out / "checkpoints" / "model.safetensors")
    print(f"wrote the examples to {out}", file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python examples/make_examples.py DIR")
    main(sys.argv[1])
