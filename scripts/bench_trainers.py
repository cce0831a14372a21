"""Benchmark consolidating trainer checkpoints into one file: a 2-rank DeepSpeed ZeRO checkpoint
(stage 2 and 3) and a 2-rank FSDP2 DCP checkpoint, ``ckpttools convert`` against the frameworks'
own consolidation (DeepSpeed's ``convert_zero_checkpoint_to_fp32_state_dict``, torch's
``dcp_to_torch_save``), wall time and peak RSS of each in a child process.

The checkpoints are written by the real libraries on 2 CPU ranks (gloo) from a model of
``size`` bytes of fp32 weights, saved right after ``deepspeed.initialize`` / one FSDP step,
and kept in ``bench-data/``. Usage: ``python scripts/bench.py trainers --sizes 1GB``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchlib import DATA, measure  # noqa: E402

PY = sys.executable
CONVERT = ("import sys; from ckpttools.cli.convert_cmd import convert\n"
           "try:\n    convert.main(sys.argv[1:], prog_name='ckpttools convert')\n"
           "except SystemExit as e:\n    sys.exit(7 if e.code else 0)")
ZERO_TO_FP32 = ("import sys; from deepspeed.utils.zero_to_fp32 import "
                "convert_zero_checkpoint_to_fp32_state_dict as c; c(sys.argv[1], sys.argv[2], "
                "safe_serialization=True, max_shard_size='100GB')")
DCP_TO_TORCH = ("import sys; from torch.distributed.checkpoint.format_utils import "
                "dcp_to_torch_save as c; c(sys.argv[1], sys.argv[2])")

def _model(nbytes: int) -> "torch.nn.Module":  # noqa: F821
    import torch

    width = 2048
    torch.manual_seed(0)
    layers = max(1, nbytes // (width * width * 4))
    return torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(layers)])


def _zero_rank(rank: int, out: str, stage: int, nbytes: int) -> None:
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)
    m = _model(nbytes)
    cfg = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": stage},
           "optimizer": {"type": "Adam", "params": {"lr": 1e-3, "torch_adam": True}}}
    engine, *_ = deepspeed.initialize(model=m, model_parameters=m.parameters(), config=cfg)
    engine.save_checkpoint(out)


def _fsdp_rank(rank: int, out: str, _stage: int, nbytes: int) -> None:
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict
    from torch.distributed.fsdp import fully_shard

    dist.init_process_group("gloo", rank=rank, world_size=2)
    m = _model(nbytes)
    for layer in m:
        fully_shard(layer)
    fully_shard(m)
    dcp.save({"model": get_model_state_dict(m)}, checkpoint_id=out)
    dist.barrier()
    dist.destroy_process_group()


def _write_child(kind: str, out: str, nbytes: int) -> None:
    from tests.frameworks.dist_writers import run_ranks

    fn = _fsdp_rank if kind == "dcp" else _zero_rank
    run_ranks(fn, 2, out + ".tmp", 3 if kind == "zero3" else 2, nbytes)
    os.replace(out + ".tmp", out)


def _size(text: str) -> int:
    units = {"MB": 1 << 20, "GB": 1 << 30}
    return int(float(text[:-2]) * units[text[-2:].upper()])


def _write(kind: str, nbytes: int, label: str) -> Path:
    path = DATA / f"{kind}-2ranks-{label}"
    if not path.exists():
        DATA.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(f"{path}.tmp", ignore_errors=True)
        env = {**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONWARNINGS": "ignore"}
        subprocess.run([PY, __file__, "write", kind, str(path), str(nbytes)], check=True,
                       env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return path


def run(sizes: list[str]) -> None:
    for label in sizes:
        nbytes = _size(label)
        for kind, theirs, name in (("zero2", ZERO_TO_FP32, "zero_to_fp32"),
                                   ("zero3", ZERO_TO_FP32, "zero_to_fp32"),
                                   ("dcp", DCP_TO_TORCH, "dcp_to_torch_save")):
            src = _write(kind, nbytes, label)
            out = DATA / "trainers-out"
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            env_cmd = ["env", "DS_ACCELERATOR=cpu", "PYTHONWARNINGS=ignore", PY, "-c"]
            dst = out / ("theirs.pt" if kind == "dcp" else "theirs")
            them = measure(env_cmd + [theirs, str(src), str(dst)], 1)
            ours = measure([PY, "-c", CONVERT, str(src), str(out / "ours.safetensors"),
                            "--force", "--no-verify"], 1)
            print(f"{kind:6} {label:>6}  ckpttools convert {ours}   {name} {them}   "
                  f"peak RSS ratio {ours.rss_mb / them.rss_mb:.2f}, time ratio "
                  f"{ours.wall / them.wall:.2f}", flush=True)
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__" and sys.argv[1:2] == ["write"]:
    _write_child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
