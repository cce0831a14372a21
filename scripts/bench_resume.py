"""resume: verify-resume's own cost beyond the recipe's compute, measured in the same run.

For each size (the model's parameter bytes), a recipe trains an MLP (Adam, batches of 256) for
6 steps with a resume at 3. The baseline is the recipe's raw compute that verify-resume has to
repeat: build the objects and run 6 steps, then build again and run steps 3..5 (no state
capture, no checkpoint, no comparison). verify-resume is timed with the resume in a fresh
process (the default) and in this process (``--in-process``). For scale, the cost a fresh
process cannot avoid is printed too: a new Python importing torch and building an optimizer
(which imports torch._dynamo on first use).
"""

from __future__ import annotations

import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchlib import parse_size  # noqa: E402

STEPS, RESUME_AT, LAYERS, BATCH, REPEAT = 6, 3, 4, 256, 2

RECIPE = '''
import torch
from torch import nn
WIDTH, LAYERS, BATCH = {width}, {layers}, {batch}
g = torch.Generator().manual_seed(0)
X = torch.randn(4 * BATCH, WIDTH, generator=g)
Y = torch.randn(4 * BATCH, WIDTH, generator=g)

def build_model():
    return nn.Sequential(*[m for _ in range(LAYERS) for m in (nn.Linear(WIDTH, WIDTH), nn.ReLU())][:-1])

def build_optimizer(model):
    return torch.optim.Adam(model.parameters(), lr=1e-4)

def batch(i):
    k = i % 4
    return X[k * BATCH:(k + 1) * BATCH], Y[k * BATCH:(k + 1) * BATCH]

def loss(model, batch):
    x, y = batch
    return nn.functional.mse_loss(model(x), y)
'''


def _cpu() -> float:
    """CPU seconds of this process and its finished children (less sensitive to other load than wall time)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _raw(recipe_path: str) -> tuple[float, float]:
    """The recipe's own compute for both runs, no checkpointing or comparison."""
    from ckpttools.ops.recipe import build_objects, load_recipe, run_step, seed_all

    recipe = load_recipe(recipe_path)
    start, cpu = time.perf_counter(), _cpu()
    for first in (0, RESUME_AT):
        seed_all(0)
        objs = build_objects(recipe)
        for i in range(first, STEPS):
            run_step(recipe, objs, i)
    return time.perf_counter() - start, _cpu() - cpu


def _fresh_python() -> tuple[float, float]:
    """A new Python that imports torch and builds an optimizer: the floor of any fresh-process resume."""
    start, cpu = time.perf_counter(), _cpu()
    subprocess.run([sys.executable, "-c", "import torch; torch.optim.Adam([torch.zeros(1)])"], check=True)
    return time.perf_counter() - start, _cpu() - cpu


def _verify(recipe_path: str, fresh_process: bool) -> tuple[float, float]:
    from ckpttools.ops.resume import verify_resume

    start, cpu = time.perf_counter(), _cpu()
    result = verify_resume(recipe_path, steps=STEPS, resume_at=RESUME_AT, fresh_process=fresh_process)
    assert result.status == "identical", result.verdict
    return time.perf_counter() - start, _cpu() - cpu


def run(sizes: list[str]) -> None:
    floor = min(_fresh_python() for _ in range(REPEAT))
    print(f"  a fresh Python importing torch and building an optimizer: {floor[0]:.2f}s wall / {floor[1]:.2f}s cpu",
          flush=True)
    for size in sizes:
        width = max(8, int((parse_size(size) / 4 / LAYERS) ** 0.5))
        with tempfile.TemporaryDirectory(prefix="bench-resume-") as tmp:
            recipe = Path(tmp) / "recipe.py"
            recipe.write_text(RECIPE.format(width=width, layers=LAYERS, batch=BATCH))
            _raw(str(recipe))  # warm-up: first-call costs belong to neither side
            raws, fresh_runs, inproc_runs = [], [], []
            for _ in range(REPEAT):  # interleaved, best of REPEAT: other load on the machine hits all sides
                raws.append(_raw(str(recipe)))
                fresh_runs.append(_verify(str(recipe), True))
                inproc_runs.append(_verify(str(recipe), False))
            raw, fresh, inproc = min(raws), min(fresh_runs), min(inproc_runs)
        print(f"  MLP {LAYERS}x{width}x{width} ({size}, Adam, {STEPS} steps, resume at {RESUME_AT}): "
              f"raw compute {raw[0]:.2f}s wall / {raw[1]:.2f}s cpu", flush=True)
        for label, (wall, cpu) in (("fresh process", fresh), ("in process", inproc)):
            print(f"    verify-resume, {label:13s} {wall:6.2f}s wall (overhead {wall / raw[0] - 1:+5.0%}), "
                  f"{cpu:6.2f}s cpu (overhead {cpu / raw[1] - 1:+5.0%})", flush=True)


if __name__ == "__main__":
    run(sys.argv[1:] or ["16MB", "256MB"])
