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


def tiny_gpt2() -> Any:
    """A 2-layer GPT-2 of width 16 built from its config (tied ``lm_head``)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=64, n_positions=16, n_embd=HIDDEN, n_layer=2, n_head=2)
    return GPT2LMHeadModel(config)


def token_dataset(n: int = 32, length: int = 8) -> list[dict[str, Any]]:
    """``n`` seeded sequences of token ids, labels equal to the inputs."""
    import torch

    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 64, (n, length), generator=g)
    return [{"input_ids": row, "labels": row.clone()} for row in ids]


def training_args(output_dir: Path, **overrides: Any) -> Any:
    """``TrainingArguments`` for a CPU run of a few steps that saves every 2 steps."""
    from transformers import TrainingArguments

    kw: dict[str, Any] = dict(
        output_dir=str(output_dir), per_device_train_batch_size=4, max_steps=4, save_steps=2,
        save_strategy="steps", logging_steps=1, learning_rate=1e-3, warmup_steps=1, seed=0,
        report_to=[], use_cpu=True, dataloader_num_workers=0, disable_tqdm=True)
    kw.update(overrides)
    return TrainingArguments(**kw)


def hf_trainer_run(output_dir: Path) -> Path:
    """Run ``transformers.Trainer`` for 4 steps, saving ``checkpoint-2`` and ``checkpoint-4``."""
    from transformers import Trainer

    trainer = Trainer(model=tiny_gpt2(), args=training_args(output_dir),
                      train_dataset=token_dataset())
    trainer.train()
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
    """``lightning.Trainer.fit`` for 2 epochs with ``ModelCheckpoint`` on a validation loss."""
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint

    from tests.frameworks.lightning_module import TinyData, TinyModule

    L.seed_everything(0, verbose=False)
    ckpt = ModelCheckpoint(dirpath=str(output_dir), monitor="val_loss", save_top_k=2,
                           save_last=True, filename="epoch{epoch}-step{step}",
                           auto_insert_metric_name=False)
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", devices=1, callbacks=[ckpt],
                        logger=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=str(output_dir))
    trainer.fit(TinyModule(), datamodule=TinyData())
    del torch
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
                    "dcp2": dist_writers.fsdp_dcp_2ranks})
    for name in argv[1:]:
        writers[name](root / name)


if __name__ == "__main__":
    main(sys.argv[1:])
