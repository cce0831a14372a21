#!/usr/bin/env python3
"""Draw the README's pictures (docs/img/) from the example files, with the commands users run.

Usage: python scripts/make_pictures.py [OUT_DIR]      (default: docs/img)

1. ``diff-changes.png``: ``ckpttools diff checkpoint.pth tuned.safetensors --plot``, where
   tuned.safetensors is the example convnet fine-tuned (real SGD steps) with its convolutions
   frozen and one of them pruned away;
2. ``resume-divergence.png``: ``ckpttools verify-resume --plot`` on the MLP recipe whose
   checkpoints leave out the Adam state (it diverges at the resume);
3. ``inspect-stats.png``: ``ckpttools inspect checkpoint.pth --stats --plot``;
4. ``audit-report.png``: the ``audit --html`` page of the example checkpoints, as headless
   Chromium shows it (skipped, with a note, where there is no chromium).

Every picture is kept under 100 KB (PNG at 100 dpi; the screenshot reduced to 64 colours).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 100_000
NO_OPTIMIZER = """import runpy
globals().update({k: v for k, v in runpy.run_path(%r).items() if not k.startswith("__")})
def save_checkpoint(path, state):
    import torch
    torch.save({k: v for k, v in state.items() if k != "optimizer_state_dict"}, path)
"""


def ckpttools(*args: str, cwd: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "ckpttools", *args], cwd=cwd, text=True,
                          capture_output=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    if done.returncode not in (0, 1):
        sys.exit(f"ckpttools {' '.join(args)} failed: {done.stderr}")


def fine_tune(demo: Path) -> None:
    """The example convnet with its fully connected layers trained further, conv2.bias pruned."""
    import torch
    from safetensors.torch import save_file

    sys.path.insert(0, str(demo))
    from model import Net  # the example's model.py

    net = Net()
    net.load_state_dict(torch.load(demo / "checkpoint.pth", weights_only=True)["model_state_dict"])
    for name, p in net.named_parameters():
        p.requires_grad_(name.startswith(("fc2.", "fc3.", "fc1.bias")))
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(3)
    for _ in range(20):
        x, y = torch.randn(16, 3, 32, 32, generator=gen), torch.randint(0, 10, (16,), generator=gen)
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    state = {k: v.detach().contiguous() for k, v in net.state_dict().items() if k != "conv2.bias"}
    save_file(state, str(demo / "tuned.safetensors"))


def screenshot(page: Path, out: Path) -> bool:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("no chromium: the HTML report picture is not drawn", file=sys.stderr)
        return False
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--user-data-dir={profile}", "--window-size=900,560",
                        f"--screenshot={out}", page.as_uri()], capture_output=True, check=True, timeout=120)
    from PIL import Image  # matplotlib's own dependency

    Image.open(out).convert("RGB").quantize(64).save(out, optimize=True)
    return True


def main(dest: str) -> None:
    out = Path(dest).resolve()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        demo = Path(tmp) / "demo"
        subprocess.run([sys.executable, str(ROOT / "examples" / "make_examples.py"), str(demo)],
                       check=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
        fine_tune(demo)
        (demo / "mlp_no_optimizer.py").write_text(NO_OPTIMIZER % str(ROOT / "examples" / "tutorial_mlp.py"))
        ckpttools("diff", "checkpoint.pth", "tuned.safetensors", "--plot", str(out / "diff-changes.png"), cwd=demo)
        ckpttools("verify-resume", "--recipe", "mlp_no_optimizer.py", "--steps", "40", "--resume-at", "24",
                  "--plot", str(out / "resume-divergence.png"), cwd=demo)
        ckpttools("inspect", "checkpoint.pth", "--stats", "--plot", str(out / "inspect-stats.png"), cwd=demo)
        ckpttools("audit", "checkpoints", "checkpoint.pth", "--require", "optimizer", "--html", "audit.html",
                  cwd=demo)
        screenshot(demo / "audit.html", out / "audit-report.png")
    for picture in sorted(out.glob("*.png")):
        size = picture.stat().st_size
        print(f"{picture.relative_to(ROOT) if picture.is_relative_to(ROOT) else picture}: {size // 1000} KB")
        if size > LIMIT:
            sys.exit(f"{picture}: {size} bytes, over the {LIMIT} limit")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(ROOT / "docs" / "img"))
