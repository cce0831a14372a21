"""Generated diagnose cases from timm architectures (no weights downloaded)."""

from __future__ import annotations

import pytest

from tests.ops.diagnose.scoring import Case, Score, score

pytestmark = pytest.mark.vision


def _scores() -> tuple[Score, Score]:
    from tests.ops.diagnose.gen_timm import generate_timm

    cases = generate_timm()
    decidable = [Case(c.name, c.label, c.text) for c in cases if c.decidable]
    every = [Case(c.name, c.label, c.text, decidable=c.decidable) for c in cases]
    return score(decidable), score(every)


def test_timm_cases_are_never_confidently_wrong() -> None:
    decidable, every = _scores()
    assert len(decidable.answers) >= 25
    assert every.confident_precision >= 0.95


# Another depth across four stages (resnet18 -> resnet34: layer1.2, layer2.2, ...) is read as one
# deeper variant since #16 (it was a strict xfail before).
def test_timm_cases_top1() -> None:
    decidable, _ = _scores()
    assert decidable.top1 >= 0.9, [(a.case.name, a.label) for a in decidable.misses]
