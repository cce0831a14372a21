"""Figures for scan, inspect and audit on the hostile, malformed and benign corpora (#14).

For each file: what torch.load does with it (a throwaway process with a canary), and the exit
code of each ckpttools command run in its own process (60 s limit; a signal or timeout counts
as a crash or hang). Prints one line per command.

    PYTHONPATH=$PWD python scripts/scan_figures.py [--frameworks]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.hostile_corpus import TorchOracle, build_hostile  # noqa: E402
from tests.malicious_corpus import build_corpus  # noqa: E402


def _benign(dest: Path, frameworks: bool) -> dict[str, Path]:
    import numpy as np
    import torch

    dest.mkdir(parents=True)
    out = {}
    state = {"w": torch.randn(3, 2), "step": 1, "np": np.random.get_state(),
             "gen": np.random.default_rng(0), "rs": np.random.RandomState(0)}
    for protocol in range(1, 6):
        for layout in ("zip", "legacy", "nocrc"):
            path = dest / f"{layout}-p{protocol}.pt"
            torch.serialization.set_crc32_options(layout != "nocrc")
            torch.save(state, path, pickle_protocol=protocol,
                       _use_new_zipfile_serialization=layout != "legacy")
            out[path.name] = path
    torch.serialization.set_crc32_options(True)
    if frameworks:
        from accelerate import Accelerator
        from transformers import BertConfig, BertModel

        model = BertModel(BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, vocab_size=50))
        torch.save(model.state_dict(), dest / "pytorch_model.bin")
        out["transformers"] = dest / "pytorch_model.bin"
        acc = Accelerator(cpu=True)
        lin = torch.nn.Linear(2, 1)
        acc.prepare(lin, torch.optim.SGD(lin.parameters(), lr=0.1))
        acc.save_state(dest / "acc")
        for name in ("random_states_0.pkl", "optimizer.bin"):
            out[f"accelerate-{name}"] = dest / "acc" / name
    return out


def _run(cmd: str, path: Path) -> str:
    try:
        run = subprocess.run([sys.executable, "-m", "ckpttools", cmd, str(path)],
                             capture_output=True, timeout=60, cwd=path.parent)
    except subprocess.TimeoutExpired:
        return "hang"
    return "crash" if run.returncode < 0 else str(run.returncode)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--frameworks", action="store_true")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp())
    canary = root / "CANARY"
    hostile, malformed = build_hostile(root / "hostile", canary)
    for case in build_corpus(root / "classic", canary):
        hostile[f"classic-{case.name}"] = case.path
    benign = _benign(root / "benign", args.frameworks)
    oracle = TorchOracle(canary)
    executing = [n for n, p in hostile.items() if oracle.outcome(p, False) == "executes"]
    refused = [n for n, p in {**hostile, **malformed}.items() if oracle.outcome(p, True) != "loads"]
    oracle.close()
    files = {**hostile, **malformed, **benign}
    print(f"corpus: {len(hostile)} hostile ({len(executing)} execute under torch.load), "
          f"{len(malformed)} malformed, {len(benign)} benign; weights_only=True refuses "
          f"{len(refused)}")
    for cmd in ("scan", "inspect", "audit"):
        canary.unlink(missing_ok=True)
        with ThreadPoolExecutor(2) as pool:
            codes = dict(zip(files, pool.map(lambda p: _run(cmd, p), files.values())))
        flagged = sum(codes[n] == "1" for n in executing)
        bad2 = sum(codes[n] == "2" for n in malformed)
        ok = sum(codes[n] == "0" for n in benign)
        broken = sum(c in ("hang", "crash") for c in codes.values())
        unsafe_ok = sum(codes[n] == "0" for n in refused)
        print(f"{cmd}: executing flagged {flagged}/{len(executing)}, executions "
              f"{int(canary.exists())}, hangs/crashes {broken}, malformed exit 2 "
              f"{bad2}/{len(malformed)}, benign pass {ok}/{len(benign)}, "
              f"torch-refused files passed {unsafe_ok}")


if __name__ == "__main__":
    main()
