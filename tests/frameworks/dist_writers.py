"""Checkpoints written by several processes (gloo on 127.0.0.1): DeepSpeed ZeRO with 2 ranks
and FSDP2 + DCP with 2 ranks. ``run_ranks`` starts the processes with torch.multiprocessing."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.frameworks.writers import free_port


def _entry(rank: int, world: int, port: int, fn: Callable[..., None], args: tuple[Any, ...]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world), DS_ACCELERATOR="cpu",
                      OMP_NUM_THREADS="1")
    fn(rank, *args)


def run_ranks(fn: Callable[..., None], world: int, *args: Any) -> None:
    """Run ``fn(rank, *args)`` in ``world`` fresh processes and wait for all of them."""
    import torch.multiprocessing as mp

    mp.start_processes(_entry, args=(world, free_port(), fn, args), nprocs=world,
                       start_method="spawn", join=True)


def odd_model() -> Any:
    """Linear layers of odd sizes (so ZeRO pads partitions) and a BatchNorm (buffers)."""
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 15), torch.nn.BatchNorm1d(15), torch.nn.ReLU(),
                               torch.nn.Linear(15, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3))


def _zero_rank(rank: int, output_dir: str, stage: int) -> None:
    import deepspeed
    import torch

    deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)
    model = odd_model()
    config = {"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 1,
              "optimizer": {"type": "Adam", "params": {"lr": 1e-2, "torch_adam": True}},
              "scheduler": {"type": "WarmupLR", "params": {"warmup_num_steps": 2}},
              "zero_optimization": {"stage": stage}, "steps_per_print": 1000}
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(),
                                      config=config)
    g = torch.Generator().manual_seed(10 + rank)
    for _ in range(3):
        loss = engine(torch.randn(4, 8, generator=g)).pow(2).mean()
        engine.backward(loss)
        engine.step()
    engine.save_checkpoint(output_dir)
    # a rank that exits with the process group alive can abort in gloo's threads at interpreter
    # exit ("terminate called without an active exception"): tear it down in step on every rank
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def deepspeed_zero_2ranks(output_dir: Path, stage: int) -> Path:
    """ZeRO ``stage`` trained 3 steps on 2 CPU ranks (gloo), saved with ``save_checkpoint``."""
    run_ranks(_zero_rank, 2, str(output_dir), stage)
    return output_dir


def _fsdp_rank(rank: int, output_dir: str) -> None:
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict
    from torch.distributed.fsdp import fully_shard

    dist.init_process_group("gloo", rank=rank, world_size=2)
    model = odd_model()
    for layer in (model[0], model[3], model[5]):
        fully_shard(layer)
    fully_shard(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(20 + rank)
    for _ in range(2):
        model(torch.randn(4, 8, generator=g)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    model_sd, optim_sd = get_state_dict(model, opt)
    dcp.save({"model": model_sd, "optim": optim_sd, "step": 2}, checkpoint_id=output_dir)
    dist.barrier()
    dist.destroy_process_group()


def fsdp_dcp_2ranks(output_dir: Path) -> Path:
    """FSDP2 (``fully_shard``) on 2 CPU ranks, 2 AdamW steps, ``dcp.save`` of model + optimizer:
    every tensor in 2 chunks, one ``.distcp`` file per rank."""
    run_ranks(_fsdp_rank, 2, str(output_dir))
    return output_dir


def _tp_rank(rank: int, output_dir: str) -> None:
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    dist.init_process_group("gloo", rank=rank, world_size=2)
    mesh = init_device_mesh("cpu", (2,))
    g = torch.Generator().manual_seed(30)  # the same full tensors on both ranks
    placements = {"col": ((7, 6), 1, torch.float32), "rows_odd": ((5, 4), 0, torch.float32),
                  "cube": ((3, 5, 4), 1, torch.float32), "last": ((4, 5), -1, torch.float64),
                  "half": ((6, 3), 1, torch.bfloat16), "tiny": ((1, 3), 0, torch.float32)}
    state = {name: distribute_tensor(torch.randn(shape, generator=g).to(dtype), mesh, [Shard(dim)])
             for name, (shape, dim, dtype) in placements.items()}
    dcp.save({"tp": state, "step": 5}, checkpoint_id=output_dir)
    dist.barrier()
    dist.destroy_process_group()


def tensor_parallel_dcp_2ranks(output_dir: Path) -> Path:
    """DTensors sharded on dim 0, 1, the last dim and a 3-D middle dim over 2 CPU ranks (gloo),
    saved with ``dcp.save``: chunks that interleave row by row in the whole tensor."""
    run_ranks(_tp_rank, 2, str(output_dir))
    return output_dir
