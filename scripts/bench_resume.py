"""resume: verify-resume's own cost beyond the recipe's compute, measured in the same run.

For each size (the model's parameter bytes), a recipe trains an MLP (Adam, batches of 256) for
6 steps with a resume at 3. Run mode: the baseline is the recipe's raw compute that verify-resume
has to repeat, run as a script in a new Python: import torch, build the objects and run 6 steps,
then build again and run steps 3..5 (no state capture, no checkpoint, no comparison). Against it,
the ``ckpttools verify-resume`` command as a user runs it: with the resume in a fresh process (the
default) and with ``--in-process``. CKPT NEXT mode: the baseline is a plain resume (load the
checkpoint saved at 3 into fresh objects, run steps 3..5); against it, ``verify-resume CKPT NEXT``.
Wall and CPU time of each whole process tree; best of ``REPEAT``, interleaved.
"""

from __future__ import annotations

import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import parse_size  # noqa: E402

STEPS, RESUME_AT, LAYERS, BATCH, REPEAT = 6, 3, 4, 256, 3

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


RAW = """
import sys
from ckpttools.ops.resume.recipe import build_objects, load_recipe, run_step, seed_all
recipe = load_recipe(sys.argv[1])
for first in (0, {resume_at}):
    seed_all(0)
    objs = build_objects(recipe)
    for i in range(first, {steps}):
        run_step(recipe, objs, i)
""".format(resume_at=RESUME_AT, steps=STEPS)

# The CKPT NEXT mode: its raw compute is a plain resume (load CKPT into fresh objects, run to NEXT's step).
SAVE_PAIR = """
import sys
from ckpttools.ops.resume.recipe import build_objects, capture_state, load_recipe, run_step, seed_all, write_checkpoint
recipe = load_recipe(sys.argv[1])
seed_all(0)
objs = build_objects(recipe)
loss = None
for i in range({steps}):
    if i == {resume_at}:
        write_checkpoint(recipe, sys.argv[2], capture_state(objs, i, loss, copy=False))
    loss = run_step(recipe, objs, i)
write_checkpoint(recipe, sys.argv[3], capture_state(objs, {steps}, loss, copy=False))
""".format(resume_at=RESUME_AT, steps=STEPS)
RAW_RESUME = """
import sys
from ckpttools.ops.resume.recipe import apply_state, build_objects, load_recipe, read_checkpoint, run_step, seed_all
recipe = load_recipe(sys.argv[1])
seed_all(0)
objs = build_objects(recipe)
apply_state(recipe, objs, read_checkpoint(recipe, sys.argv[2]), sys.argv[2], copy=False)
for i in range({resume_at}, {steps}):
    run_step(recipe, objs, i)
""".format(resume_at=RESUME_AT, steps=STEPS)


def _timed(cmd: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds of ``cmd`` and every process it waited for (CPU is less sensitive to other load)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} exited {proc.returncode}: {(proc.stderr or proc.stdout)[-300:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def _verify(recipe: str, *args: str) -> list[str]:
    run_mode = ["--steps", str(STEPS), "--resume-at", str(RESUME_AT)] if not args or args[0].startswith("-") else []
    return [sys.executable, "-m", "ckpttools", "verify-resume", "--recipe", recipe, *run_mode, *args]


def run(sizes: list[str]) -> None:
    for size in sizes:
        width = max(8, int((parse_size(size) / 4 / LAYERS) ** 0.5))
        with tempfile.TemporaryDirectory(prefix="bench-resume-") as tmp:
            recipe = str(Path(tmp) / "recipe.py")
            Path(recipe).write_text(RECIPE.format(width=width, layers=LAYERS, batch=BATCH))
            ckpt, nxt = str(Path(tmp) / "ckpt.pt"), str(Path(tmp) / "next.pt")
            subprocess.run([sys.executable, "-c", SAVE_PAIR, recipe, ckpt, nxt], check=True)
            sides = {"raw compute": [sys.executable, "-c", RAW, recipe], "fresh process": _verify(recipe),
                     "--in-process": _verify(recipe, "--in-process"),
                     "raw resume": [sys.executable, "-c", RAW_RESUME, recipe, ckpt],
                     "CKPT NEXT": _verify(recipe, ckpt, nxt)}
            _timed(sides["fresh process"])  # warm-up: the page cache holds torch for every side
            runs: dict[str, list[tuple[float, float]]] = {name: [] for name in sides}
            for _ in range(REPEAT):  # interleaved: other load on the machine hits all sides
                for name, cmd in sides.items():
                    runs[name].append(_timed(cmd))
        best = {name: (min(w for w, _ in r), min(c for _, c in r)) for name, r in runs.items()}
        print(f"  MLP {LAYERS}x{width}x{width} ({size}, Adam, {STEPS} steps, resume at {RESUME_AT})", flush=True)
        for raw, modes in (("raw compute", ("fresh process", "--in-process")), ("raw resume", ("CKPT NEXT",))):
            raw_wall, raw_cpu = best[raw]
            print(f"    {raw} in a new Python {raw_wall:6.2f}s wall / {raw_cpu:6.2f}s cpu", flush=True)
            for name in modes:
                wall, cpu = best[name]
                print(f"      verify-resume, {name:13s} {wall:6.2f}s wall (overhead {wall / raw_wall - 1:+5.0%}), "
                      f"{cpu:6.2f}s cpu (overhead {cpu / raw_cpu - 1:+5.0%})", flush=True)


if __name__ == "__main__":
    run(sys.argv[1:] or ["16MB", "256MB"])
