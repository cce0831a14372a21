"""The fresh process of verify-resume: forked before torch runs, checked by fingerprints.

The forked path only exists in a process that has not imported torch yet, so these tests run the
real command in a new Python (``python -m ckpttools``), as users do.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ckpttools.ops.resume.compare import compare_states, fingerprint, match_fingerprints
from ckpttools.ops.resume.fresh import prefork

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def _cli(*args: str, tmpdir: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TMPDIR": str(tmpdir)} if tmpdir is not None else None
    return subprocess.run([sys.executable, "-m", "ckpttools", "verify-resume", *args], capture_output=True,
                          text=True, timeout=300, env=env)


def _variant(tmp_path: Path, example: str, body: str) -> str:
    path = tmp_path / f"{example}_variant.py"
    path.write_text("import runpy\n"
                    f"globals().update({{k: v for k, v in runpy.run_path({str(EXAMPLES / example)!r}).items()"
                    " if not k.startswith('__')})\n" + body)
    return str(path)


def test_prefork_refuses_once_torch_is_imported() -> None:
    assert "torch" in sys.modules
    assert prefork() is None  # its OpenMP threads may have started: a fork could hang


@pytest.mark.skipif(sys.platform != "linux", reason="fork is used on Linux only")
def test_prefork_in_a_new_python_forks_and_stops_cleanly() -> None:
    code = ("import os, sys; from ckpttools.ops.resume.fresh import prefork\n"
            "w = prefork(); print(type(w.proc).__name__, os.environ['OMP_WAIT_POLICY'], w.proc.pid != os.getpid())\n"
            "w.close(); print(w.proc.returncode is not None, os.path.exists(w.tmp))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["_Forked", "PASSIVE", "True", "True", "False"]


def test_forked_resume_is_identical_and_imports_the_recipe_itself(tmp_path: Path) -> None:
    pids = tmp_path / "pids.txt"
    recipe = _variant(tmp_path, "tutorial_mlp.py",
                      f"import os\nwith open({str(pids)!r}, 'a') as f:\n    f.write(f'{{os.getpid()}}\\n')\n")
    result = _cli("--recipe", recipe, "--steps", "6", "--resume-at", "3", "--format", "json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["status"] == "identical" and data["fresh_process"] is True
    assert data["first_step_diffs"] and all(d["status"] == "identical" for d in data["first_step_diffs"])
    assert {d["key"] for d in data["final_diffs"]} >= {"model_state_dict.0.weight", "step"}
    # the recipe was imported by two processes: this one and the fresh one
    assert len(set(pids.read_text().split())) == 2


def test_forked_resume_without_rng_state_compares_values(tmp_path: Path) -> None:
    recipe = _variant(tmp_path, "mlp_dropout.py",
                      "def save_checkpoint(path, state):\n"
                      "    import torch\n"
                      "    torch.save({k: v for k, v in state.items() if k != 'rng_state'}, path)\n")
    result = _cli("--recipe", recipe, "--steps", "5", "--resume-at", "3", "--format", "json")
    assert result.returncode == 1, result.stderr
    data = json.loads(result.stdout)
    assert data["status"] == "diverged" and data["diverged_step"] == 3 and data["missing"] == ["rng"]
    assert [a["piece"] for a in data["attributions"] if a["explains"]] == ["rng"]
    differing = [d for d in data["first_step_diffs"] if d["status"] == "differs"]
    assert differing and all(d["max_abs"] is None or d["max_abs"] > 0 for d in differing)
    assert any(d["max_abs"] for d in differing)  # values, not just a changed fingerprint


def test_forked_resume_reports_a_missing_recipe_function(tmp_path: Path) -> None:
    recipe = tmp_path / "broken.py"
    recipe.write_text("def build_model():\n    pass\n")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    result = _cli("--recipe", str(recipe), "--steps", "2", "--resume-at", "1", tmpdir=scratch)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "build_optimizer" in result.stderr
    # the forked process is stopped and its folder removed (torch._dynamo keeps its own cache folder)
    assert [p.name for p in scratch.iterdir() if p.name.startswith("ckpttools")] == []


def _state() -> dict:
    g = torch.Generator().manual_seed(0)
    return {"step": 3, "model_state_dict": {"w": torch.randn(4, 5, generator=g), "b": torch.zeros(()),
                                            "h": torch.ones(3, dtype=torch.bfloat16)},
            "optimizer_state_dict": {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(7, generator=g)}},
                                     "param_groups": [{"lr": 0.1, "params": [0]}]},
            "rng_state": {"python": (3, tuple(range(5)), None)}, "loss": 0.5}


def test_fingerprints_match_what_comparing_values_reports() -> None:
    state = _state()
    rows = match_fingerprints(fingerprint(state), fingerprint(_state()))
    assert rows == compare_states(state, _state(), 0.0)
    # JSON turns the tuples into lists; they still match
    assert match_fingerprints(json.loads(json.dumps(fingerprint(state))), fingerprint(state)) == rows


def test_fingerprints_differ_for_one_flipped_bit_and_for_other_keys() -> None:
    state, other = _state(), _state()
    other["model_state_dict"]["w"].view(torch.int32)[2, 3] ^= 1
    assert match_fingerprints(fingerprint(state), fingerprint(other)) is None
    diffs = {d.key: d.status for d in compare_states(state, other, 0.0)}
    assert diffs["model_state_dict.w"] == "differs" and list(diffs.values()).count("differs") == 1
    renamed = _state()
    renamed["model_state_dict"]["w2"] = renamed["model_state_dict"].pop("w")
    assert match_fingerprints(fingerprint(state), fingerprint(renamed)) is None


def test_unreadable_tensor_bytes_never_match() -> None:
    sparse = {"m": torch.eye(3).to_sparse()}
    assert fingerprint(sparse)["m"][0] is None
    assert match_fingerprints(fingerprint(sparse), fingerprint(sparse)) is None
