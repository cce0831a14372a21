"""Confidence from text bounded by held-out outcomes (``ckpttools/ops/diagnose/reliability.py``).

The errors are raised by the real ``load_state_dict`` of small real models.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from click.testing import CliRunner
from torch import nn

from ckpttools.cli.main import cli
from ckpttools.ops.diagnose.causes import rank_findings
from ckpttools.ops.diagnose.diagnosis import DECIDE_COMMAND, diagnose_text, evidence_from_text
from ckpttools.ops.diagnose.error_text import parse_error_text
from ckpttools.ops.diagnose.reliability import (
    OUTCOMES, basis_of, basis_of_result, bound, build_table, code_table)
from tests.ops.diagnose.scoring import development

OUTCOME_ROWS = Path(__file__).parents[2] / "data" / "diagnose" / "calibration" / "outcomes.jsonl"
# every frozen set and the commit that scored it before tuning (each README's score section)
PRE_TUNING = {"frozen": "8362996", "frozen2": "0104ca9", "frozen3": "13314b6", "frozen4": "82be200",
              "frozen5": "1cd4d65", "frozen6": "50fbdd2", "frozen7": "c053e44", "frozen8": "07134bb",
              "frozen9": "6cb6f2d", "frozen10": "9012b7e", "frozen11": "6f30365",
              "frozen12": "6f30365", "frozen13": "9c2e266", "frozen14": "9c2e266"}


def _rows() -> list[dict]:
    return [json.loads(line) for line in OUTCOME_ROWS.read_text(encoding="utf-8").splitlines()]


def _load_error(saved: nn.Module, model: nn.Module) -> str:
    try:
        model.load_state_dict(saved.state_dict())
    except RuntimeError as e:
        return str(e)
    raise AssertionError("the state_dict loaded")


class _Net(nn.Module):
    def __init__(self, hidden: int, classes: int = 10) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(16, hidden), nn.ReLU(), nn.Linear(hidden, hidden))
        self.classifier = nn.Linear(hidden, classes)


def test_the_code_table_is_the_one_the_outcomes_give() -> None:
    rows = _rows()
    assert {r["set"]: r["commit"] for r in rows} == PRE_TUNING
    assert len(rows) == 688 and all(r["right"] == (r["got"] == r["want"]) for r in rows)
    assert all(r["basis"] == basis_of(r) for r in rows)
    rebuilt = {k: v for k, v in build_table(rows).items() if k.startswith("band:") or v[1] >= 5}
    assert rebuilt == code_table()


def test_a_width_read_off_a_few_layers_is_lowered_to_a_candidate() -> None:
    torch.manual_seed(0)
    text = _load_error(_Net(96), _Net(48))
    ev = evidence_from_text(parse_error_text(text))
    before = rank_findings(ev)[0]
    assert before.label == "architecture_variant" and before.confidence >= 0.8  # the rules decide
    result = diagnose_text(text)
    first = result.causes[0]
    assert first.label == "architecture_variant" and first.confidence < 0.8 and not result.decided
    assert basis_of_result(result) == "width_layers"
    right, n = OUTCOMES["width_layers"]
    assert first.confidence == bound(before.confidence, "width_layers")[0] < right / n
    run = CliRunner().invoke(cli, ["diagnose", "-"], input=text)
    assert run.exit_code == 0, run.output
    assert (f"confidence lowered: this kind of reading (width_layers) was right {right} of {n} "
            "times on texts it had not seen") in run.stdout
    assert f"candidates: architecture_variant {first.confidence:.2f}" in run.stdout
    assert DECIDE_COMMAND in run.stdout
    data = json.loads(CliRunner().invoke(cli, ["diagnose", "-", "--format", "json"], input=text).stdout)
    assert data["decided"] is False and data["decide_with"] == DECIDE_COMMAND
    assert data["causes"][0]["evidence"]["facts"]["basis"] == "width_layers"


def test_a_head_of_another_class_count_stays_decided() -> None:
    text = _load_error(_Net(32, classes=1000), _Net(32, classes=10))
    result = diagnose_text(text)
    assert result.causes[0].label == "head_size_mismatch" and result.decided
    assert basis_of_result(result) == "head_rows"
    assert "calibrated" not in result.causes[0].evidence["facts"]


def test_the_files_are_not_bounded() -> None:
    """From a checkpoint and a model the key sets are whole: no held-out text bounds them."""
    from ckpttools.ops.diagnose.diagnosis import diagnose_checkpoint

    result = diagnose_checkpoint(_Net(96).state_dict(), _Net(48))
    assert result.causes[0].label == "architecture_variant" and result.decided


def test_the_order_of_causes_is_kept() -> None:
    """Calibration changes confidences, never which cause comes first or the order after it."""
    for case in development():
        ev = evidence_from_text(parse_error_text(case.text))
        ranked = [f.label for f in rank_findings(ev)]
        causes = diagnose_text(case.text).causes
        assert [c.label for c in causes] == ranked, case.name
        conf = [c.confidence for c in causes]
        assert conf == sorted(conf, reverse=True), case.name


def test_score_diagnose_prints_each_basis(tmp_path: Path) -> None:
    import re
    import subprocess
    import sys

    root = Path(__file__).parents[3]
    torch.manual_seed(0)
    texts = {"width": ("architecture_variant", _load_error(_Net(96), _Net(48))),
             "head": ("head_size_mismatch", _load_error(_Net(32, classes=1000), _Net(32, classes=10)))}
    for name, (label, text) in texts.items():
        (tmp_path / f"{name}.txt").write_text(f"label: {label}\nsource: a test\n---\n{text}\n",
                                              encoding="utf-8")
    run = subprocess.run([sys.executable, str(root / "scripts" / "score_diagnose.py"), "--corpus",
                          str(tmp_path)], capture_output=True, text=True, check=True, cwd=root)
    lines = [re.sub(r"\s+", " ", line.strip()) for line in run.stdout.splitlines()]
    assert "basis head_rows 1/1 right; 1 decided, 1 of them right" in lines, run.stdout
    assert "basis width_layers 1/1 right; 0 decided, 0 of them right" in lines, run.stdout
