"""``ckpttools diagnose`` through the CLI: text and files, formats, exit codes."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from ckpttools.cli.main import cli

PREFIX_ERROR = ('RuntimeError: Error(s) in loading state_dict for Net:\n'
                '\tMissing key(s) in state_dict: "fc.weight", "fc.bias". \n'
                '\tUnexpected key(s) in state_dict: "module.fc.weight", "module.fc.bias". \n')


def test_stdin_table(runner: CliRunner) -> None:
    r = runner.invoke(cli, ["diagnose", "-"], input=PREFIX_ERROR)
    assert r.exit_code == 0, r.output
    assert "prefix_added" in r.stdout and "removeprefix" in r.stdout
    assert "ckpttools diagnose --checkpoint" in r.stdout


def test_file_json(runner: CliRunner, tmp_path: Path) -> None:
    log = tmp_path / "error.log"
    log.write_bytes(PREFIX_ERROR.replace("\n", "\r\n").encode())
    r = runner.invoke(cli, ["diagnose", str(log), "--format", "json"])
    assert r.exit_code == 0
    data = json.loads(r.stdout)
    assert data["causes"][0]["label"] == "prefix_added"
    assert 0 < data["causes"][0]["confidence"] <= 1
    assert set(data["causes"][0]["fix"]) == {"code", "command", "confirm"}
    assert data["counts"]["missing"] == 2


def test_markdown(runner: CliRunner) -> None:
    r = runner.invoke(cli, ["diagnose", "-", "--format", "markdown"], input=PREFIX_ERROR)
    assert r.exit_code == 0 and "## 1. prefix_added" in r.stdout and "```python" in r.stdout


def test_no_error_in_input_exits_2(runner: CliRunner) -> None:
    r = runner.invoke(cli, ["diagnose", "-"], input="epoch 1 loss 0.3\n")
    assert r.exit_code == 2
    assert r.stdout == ""
    assert "no load_state_dict error found in the input" in r.stderr


@pytest.mark.parametrize("text", [
    "RuntimeError: Error(s) in loading state_dict for Net:\n",
    "RuntimeError: Error(s) in loading state_dict for DataParallel:\n\tMissing key(s) in state_dict: "
    "\n\tUnexpected key(s) in state_dict: \n",
    "Missing key(s) in state_dict error after training with DataParallel on 4 GPUs, how do I load it?\n",
    "after upgrading transformers I get Unexpected key(s) in state_dict for position ids\n",
])
def test_a_load_error_without_keys_abstains_with_exit_1(runner: CliRunner, text: str) -> None:
    # words of a header are not keys: nothing to read a cause from, so no guess
    r = runner.invoke(cli, ["diagnose", "-"], input=text)
    assert r.exit_code == 1 and r.stderr == ""
    assert "names no key and no shape, so it cannot tell the cause" in r.stdout
    assert "ckpttools diagnose --checkpoint CKPT --model SPEC" in r.stdout
    r = runner.invoke(cli, ["diagnose", "--format", "json", "-"], input=text)
    report = json.loads(r.stdout)
    assert r.exit_code == 1 and report["causes"] == [] and report["missing"] == []
    assert report["decide_with"] == "ckpttools diagnose --checkpoint CKPT --model SPEC"


def test_checkpoint_and_model(runner: CliRunner, make_checkpoint: Callable[..., Path]) -> None:
    from tests._models import tiny_net

    state = {f"module.{k}": v for k, v in tiny_net().state_dict().items()}
    path = make_checkpoint("torch-zip", state)
    r = runner.invoke(cli, ["diagnose", "--checkpoint", str(path), "--model",
                            "tests/_models.py:TinyNet", "--format", "json"])
    assert r.exit_code == 0, r.output
    cause = json.loads(r.stdout)["causes"][0]
    assert cause["label"] == "prefix_added" and "ckpttools remap" in cause["fix"]["command"]


def test_checkpoint_needs_model(runner: CliRunner, tmp_path: Path) -> None:
    r = runner.invoke(cli, ["diagnose", "--checkpoint", str(tmp_path / "x.pth")])
    assert r.exit_code == 2 and "--model" in r.stderr


def test_help_has_example(runner: CliRunner) -> None:
    r = runner.invoke(cli, ["diagnose", "--help"])
    assert r.exit_code == 0 and "ckpttools diagnose error.log" in r.stdout


def test_one_sided_text_abstains_with_candidates_and_the_deciding_command(runner) -> None:  # type: ignore[no-untyped-def]
    from ckpttools.cli.main import cli

    text = ('Error(s) in loading state_dict for Net:\n\tMissing key(s) in state_dict: "conv1.weight", '
            '"conv1.bias", "bn1.weight", "layer1.0.conv1.weight", "fc.weight", ...\n')
    r = runner.invoke(cli, ["diagnose", "-"], input=text)
    assert r.exit_code == 0
    assert "the text alone cannot decide (candidates: prefix_added" in r.stdout
    assert "ckpttools diagnose --checkpoint CKPT --model SPEC" in r.stdout
    j = runner.invoke(cli, ["diagnose", "-", "--format", "json"], input=text)
    data = json.loads(j.stdout)
    assert data["decided"] is False and data["decide_with"].startswith("ckpttools diagnose --checkpoint")
    assert [c["label"] for c in data["causes"]][:2] == ["prefix_added", "wrapped_checkpoint"]


def test_no_error_exits_2_saying_what_it_expected(runner) -> None:  # type: ignore[no-untyped-def]
    from ckpttools.cli.main import cli

    r = runner.invoke(cli, ["diagnose", "-"], input="training finished, 3 epochs\n")
    assert r.exit_code == 2 and r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1 and "expected a load error" in r.stderr


def test_wrapped_backbone_into_task_model_is_not_another_model(runner: CliRunner,
                                                                tmp_path: Path) -> None:
    """A backbone saved through DataParallel, loaded into a model with a new head: after the
    prefix fix only the head is left, which is two keys of the model, not "0 of 2 model keys in
    the file" (the rest of the model is judged together with what the fix fills)."""
    import torch

    from tests._models import tiny_net

    path = tmp_path / "backbone.pth"
    torch.save(torch.nn.DataParallel(tiny_net()).state_dict(), path)
    r = runner.invoke(cli, ["diagnose", "--checkpoint", str(path), "--model",
                            "tests/_models.py:TaskNet", "--format", "json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["plan"]["steps"][0]["args"] == ["^module\\.=backbone."]
    assert data["plan"]["left_initialised"] == ["classifier.weight", "classifier.bias"]
    labels = [c["label"] for c in data["causes"]]
    assert labels[:2] == ["renamed_keys", "new_task_head"], labels  # the head is what is left
    assert "wrong_model" not in labels


def test_transposed_weight_fix_transposes_and_loads_the_saved_values(runner: CliRunner,
                                                                      tmp_path: Path) -> None:
    """The plan drops a weight stored (in, out) (shapes cannot prove a transpose); the cause's
    own fix transposes it, and run as printed it loads strictly with the saved values."""
    import torch

    from tests._models import tiny_net

    state = tiny_net().state_dict()
    saved = state["head.weight"].clone()
    state["head.weight"] = saved.t().contiguous()
    path = tmp_path / "transposed.pth"
    torch.save(state, path)
    r = runner.invoke(cli, ["diagnose", "--checkpoint", str(path), "--model",
                            "tests/_models.py:TinyNet", "--format", "json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    cause = data["causes"][0]
    assert cause["label"] == "transposed_weights"
    assert [s["kind"] for s in data["plan"]["steps"]] == ["drop"]
    assert "1 of them stored transposed" in data["plan"]["steps"][0]["summary"]  # diff --model too
    assert cause["fix"]["code"] != data["plan"]["python"] and cause["fix"]["command"] is None
    model = tiny_net(seed=1)
    exec(compile(cause["fix"]["code"], "<fix>", "exec"), {"model": model})
    assert torch.equal(model.head.weight.detach(), saved)


def test_a_task_models_prefix_is_not_called_a_wrapper(runner: CliRunner, tmp_path: Path) -> None:
    """'module.' comes from a wrapper; 'backbone.' from a model that holds this one under that
    name (a task model's file loaded into its backbone)."""
    import torch

    from tests._models import TaskNet, tiny_net

    task, wrapped = tmp_path / "task.pth", tmp_path / "ddp.pth"
    torch.save(TaskNet().state_dict(), task)
    torch.save(torch.nn.DataParallel(tiny_net()).state_dict(), wrapped)
    summaries = {}
    for path in (task, wrapped):
        r = runner.invoke(cli, ["diagnose", "--checkpoint", str(path), "--model",
                                "tests/_models.py:TinyNet", "--format", "json"])
        cause = json.loads(r.stdout)["causes"][0]
        assert cause["label"] == "prefix_added", cause
        summaries[path.name] = cause["summary"]
    assert "holds this one as 'backbone'" in summaries["task.pth"]
    assert "wrapped model" not in summaries["task.pth"]
    assert "saved from a wrapped model" in summaries["ddp.pth"]
