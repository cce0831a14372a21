"""Write the checkpoints that trainers write, with the real libraries, on CPU.

Each function trains a tiny model built from a config (nothing downloaded) for a few steps and
returns the folder (or file) the library wrote. The session fixtures in ``conftest.py`` call
them once per test session; ``python -m tests.frameworks.writers DIR`` writes all of them for a
look by hand.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Any

HIDDEN = 16


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def example(name: str) -> Any:
    """The module ``examples/<name>.py`` (the verify-resume recipes write the fixtures)."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_example_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def tiny_gpt2() -> Any:
    """The example recipe's 2-layer GPT-2 of width 16 (a model spec for ``--model``)."""
    return example("hf_trainer_recipe").tiny_gpt2()


def hf_trainer_run(output_dir: Path) -> Path:
    """``examples/hf_trainer_recipe.py``: 4 steps, ``checkpoint-2`` and ``checkpoint-4``."""
    example("hf_trainer_recipe").build_trainer(str(output_dir)).train()
    return output_dir


def accelerate_state(output_dir: Path) -> Path:
    """Train 2 steps with ``accelerate`` (AdamW, a LambdaLR, a DataLoader) and ``save_state``."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    set_seed(0)
    accelerator = Accelerator(cpu=True)
    model = torch.nn.Sequential(torch.nn.Linear(8, HIDDEN), torch.nn.ReLU(),
                                torch.nn.Linear(HIDDEN, 4))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    data = torch.utils.data.TensorDataset(torch.randn(32, 8), torch.randint(0, 4, (32,)))
    loader = torch.utils.data.DataLoader(data, batch_size=8, shuffle=True)
    model, opt, loader, sched = accelerator.prepare(model, opt, loader, sched)
    for step, (x, y) in enumerate(loader):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        accelerator.backward(loss)
        opt.step()
        sched.step()
        opt.zero_grad()
        if step == 1:
            break
    accelerator.save_state(str(output_dir))
    return output_dir


def lightning_fit(output_dir: Path) -> Path:
    """``examples/lightning_recipe.py``: 2 epochs with ``ModelCheckpoint`` on ``val_loss``."""
    recipe = example("lightning_recipe")
    recipe.build_trainer(str(output_dir)).fit(recipe.build_module(),
                                              datamodule=recipe.build_datamodule())
    return output_dir


def deepspeed_zero(output_dir: Path, stage: int) -> Path:
    """Train 2 steps with ``deepspeed.initialize`` (ZeRO ``stage``, fp32, CPU, one process) and
    ``save_checkpoint``: ``latest``, ``global_step2/``."""
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ["DS_ACCELERATOR"] = "cpu"
    import deepspeed
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, HIDDEN), torch.nn.ReLU(),
                                torch.nn.Linear(HIDDEN, HIDDEN), torch.nn.ReLU(),
                                torch.nn.Linear(HIDDEN, 4))
    config = {"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 1,
              "optimizer": {"type": "Adam", "params": {"lr": 1e-3, "torch_adam": True}},
              "scheduler": {"type": "WarmupLR", "params": {"warmup_num_steps": 2}},
              "zero_optimization": {"stage": stage}, "steps_per_print": 1000}
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(),
                                      config=config, dist_init_required=True)
    g = torch.Generator().manual_seed(2)
    for _ in range(2):
        x = torch.randn(4, 8, generator=g)
        loss = engine(x).pow(2).mean()
        engine.backward(loss)
        engine.step()
    engine.save_checkpoint(str(output_dir))
    return output_dir


WRITERS = {
    "hf": lambda d: hf_trainer_run(d),
    "accelerate": lambda d: accelerate_state(d),
    "lightning": lambda d: lightning_fit(d),
    "zero1": lambda d: deepspeed_zero(d, 1),
    "zero2": lambda d: deepspeed_zero(d, 2),
    "zero3": lambda d: deepspeed_zero(d, 3),
}


def main(argv: list[str]) -> None:
    """``python -m tests.frameworks.writers DIR NAME...``: write each named layout to DIR/NAME."""
    from tests.frameworks import dist_writers

    root = Path(argv[0])
    writers: dict[str, Any] = dict(WRITERS)
    writers.update({"zero2x2": lambda d: dist_writers.deepspeed_zero_2ranks(d, 2),
                    "zero3x2": lambda d: dist_writers.deepspeed_zero_2ranks(d, 3),
                    "dcp2": dist_writers.fsdp_dcp_2ranks,
                    "dcp_tp2": dist_writers.tensor_parallel_dcp_2ranks})
    for name in argv[1:]:
        writers[name](root / name)


if __name__ == "__main__":
    main(sys.argv[1:])
