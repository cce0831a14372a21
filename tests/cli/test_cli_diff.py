"""ckpttools diff through the CLI: exit codes, stdout/stderr, json, markdown, rules files."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path

import torch
from click.testing import CliRunner
from torch import nn

from ckpttools.cli.main import cli
from tests._models import tiny_net

SPEC = str(Path(__file__).parents[1] / "_models.py") + ":TinyNet"


def test_loads_exit_0(runner: CliRunner, make_checkpoint: Callable[..., Path]) -> None:
    path = make_checkpoint("torch-zip", tiny_net().state_dict())
    r = runner.invoke(cli, ["diff", str(path), "--model", SPEC])
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("OK strict load would succeed: 13 keys match")
    assert r.stderr == ""


def test_prefix_exit_1_with_fix(runner: CliRunner, make_checkpoint: Callable[..., Path]) -> None:
    path = make_checkpoint("torch-zip", nn.DataParallel(tiny_net()).state_dict())
    r = runner.invoke(cli, ["diff", str(path), "--model", SPEC, "-a", "depth=2"])
    assert r.exit_code == 1
    assert "FAIL strict load would fail: 13 missing, 13 unexpected" in r.stdout
    assert "after: 0 missing, 0 unexpected" in r.stdout
    assert "--strip-prefix module." in r.stdout
    assert "module.blocks.{0..1}.0.weight" in r.stdout  # layers folded


def test_json_and_markdown(runner: CliRunner, make_checkpoint: Callable[..., Path]) -> None:
    path = make_checkpoint("torch-zip", tiny_net().state_dict())
    r = runner.invoke(cli, ["diff", str(path), "--model", SPEC, "-a", "num_classes=4",
                            "--format", "json"])
    assert r.exit_code == 1
    data = json.loads(r.stdout)
    assert data["counts"]["shape_mismatches"] == 2
    assert data["shape_mismatches"][0] == {"key": "head.weight", "checkpoint_shape": [10, 8],
                                           "model_shape": [4, 8]}
    assert data["plan"]["steps"][0]["kind"] == "drop"
    assert data["plan"]["after"]["mismatched"] == 0 and data["plan"]["strict"] is False
    md = runner.invoke(cli, ["diff", str(path), "--model", SPEC, "-a", "num_classes=4",
                             "--format", "markdown"])
    assert "## Shape mismatches (2)" in md.stdout and "| head.weight |" in md.stdout


def test_suggest_rules_then_remap_rules(runner: CliRunner, make_checkpoint: Callable[..., Path],
                                        tmp_path: Path) -> None:
    state = {k.replace("blocks.", "layers."): v for k, v in tiny_net().state_dict().items()}
    path = make_checkpoint("torch-zip", state)
    rules = tmp_path / "rules.txt"
    r = runner.invoke(cli, ["diff", str(path), "--model", SPEC, "--suggest-rules", str(rules)])
    assert r.exit_code == 1 and "wrote 1 rule to" in r.stderr
    assert rules.read_text().splitlines()[-1] == r"^layers\.=blocks."
    out = tmp_path / "fixed.pth"
    r = runner.invoke(cli, ["remap", str(path), str(out), "--rules", str(rules)])
    assert r.exit_code == 0, r.output
    assert runner.invoke(cli, ["diff", str(out), "--model", SPEC]).exit_code == 0


def test_two_checkpoints(runner: CliRunner, make_checkpoint: Callable[..., Path]) -> None:
    a = tiny_net().state_dict()
    pa = make_checkpoint("torch-zip", a, name="a")
    pb = make_checkpoint("torch-legacy", a, name="b")
    r = runner.invoke(cli, ["diff", str(pa), str(pb)])
    assert r.exit_code == 0 and r.stdout.startswith("OK checkpoints match")
    c = copy.copy(a)  # keeps the OrderedDict and its _metadata: only a value differs
    c["head.bias"] = a["head.bias"] + 1
    pc = make_checkpoint("torch-zip", c, name="c")
    r = runner.invoke(cli, ["diff", str(pa), str(pc), "--format", "json"])
    assert r.exit_code == 1
    data = json.loads(r.stdout)
    diff = [t for t in data["tensors"] if not t["allclose"]]
    assert [t["key"] for t in diff] == ["head.bias"] and abs(diff[0]["max_abs_diff"] - 1) < 1e-6
    assert runner.invoke(cli, ["diff", str(pa), str(pc), "--atol", "1.5"]).exit_code == 0


def test_could_not_run_exit_2(runner: CliRunner, make_checkpoint: Callable[..., Path],
                              tmp_path: Path) -> None:
    path = make_checkpoint("torch-zip", tiny_net().state_dict())
    cases = [
        ["diff", str(path)],  # neither OTHER nor --model
        ["diff", str(path), str(path), "--model", SPEC],
        ["diff", str(path), "--model", "nonexistent_pkg_xyz:Net"],
        ["diff", str(path), "--model", "tests/_models.py"],
        ["diff", str(tmp_path / "absent.pth"), "--model", SPEC],
        ["diff", str(path), "--model", SPEC, "--key", "nope"],
        ["diff", str(path), "--model", SPEC, "-a", "novalue"],
    ]
    for args in cases:
        r = runner.invoke(cli, args)
        assert r.exit_code == 2, (args, r.output)
        assert r.stdout == "" and "Traceback" not in r.stderr
        assert r.stderr.strip().splitlines()[-1].startswith("ckpttools: error: ")


def test_help_has_an_example(runner: CliRunner) -> None:
    r = runner.invoke(cli, ["diff", "--help"])
    assert r.exit_code == 0 and "ckpttools diff model.pth --model" in r.stdout


def test_diff_never_runs_pickled_code(runner: CliRunner, make_checkpoint: Callable[..., Path],
                                      canary: Path) -> None:
    from tests.conftest import malicious_state

    path = make_checkpoint("torch-zip", {"model": tiny_net().state_dict(),
                                         "x": malicious_state(canary)})
    r = runner.invoke(cli, ["diff", str(path), "--model", SPEC])
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli, ["diff", str(path), str(path)])
    assert r.exit_code == 0, r.output


def test_json_signature_model(runner: CliRunner, make_checkpoint: Callable[..., Path],
                              tmp_path: Path) -> None:
    ref = make_checkpoint("torch-zip", tiny_net().state_dict(), name="ref")
    sig = tmp_path / "ref.json"
    with torch.device("meta"):
        tensors = [{"key": k, "dtype": "float32", "shape": list(v.shape)}
                   for k, v in tiny_net(num_classes=3).state_dict().items()]
    sig.write_text(json.dumps({"tensors": tensors}))
    r = runner.invoke(cli, ["diff", str(ref), "--model", str(sig)])
    assert r.exit_code == 1 and "Shape mismatches (2)" in r.stdout
