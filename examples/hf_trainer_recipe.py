"""verify-resume recipe for transformers.Trainer: a tiny GPT-2 built from its config, 32 seeded
sequences, 4 steps saving every 2 (``checkpoint-2``, ``checkpoint-4``).

    python examples/hf_trainer_recipe.py out            # train, writes out/checkpoint-{2,4}
    ckpttools verify-resume --recipe examples/hf_trainer_recipe.py out/checkpoint-2 out/checkpoint-4

ckpttools calls ``build_trainer(output_dir)`` in a fresh process and resumes with
``trainer.train(resume_from_checkpoint=CKPT)``: Trainer's own resume path (optimizer, scheduler,
RNG, the sampler's skipped batches), nothing copied from its internals.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments


def tiny_gpt2() -> GPT2LMHeadModel:
    """A 2-layer GPT-2 of width 16 (tied ``lm_head``, dropout on), seeded."""
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=2,
                                      n_head=2, bos_token_id=0, eos_token_id=0))


def token_dataset(n: int = 32, length: int = 8) -> list[dict[str, Any]]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 64, (n, length), generator=g)
    return [{"input_ids": row, "labels": row.clone()} for row in ids]


def build_trainer(output_dir: str) -> Trainer:
    args = TrainingArguments(
        output_dir=output_dir, per_device_train_batch_size=4, max_steps=4, save_steps=2,
        logging_steps=1, learning_rate=1e-3, warmup_steps=1, seed=0, report_to=[],
        use_cpu=True, dataloader_num_workers=0, disable_tqdm=True)
    return Trainer(model=tiny_gpt2(), args=args, train_dataset=token_dataset())


if __name__ == "__main__":
    build_trainer(sys.argv[1] if len(sys.argv) > 1 else "out").train()
