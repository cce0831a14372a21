"""Generated diagnose cases from transformers' own load reports and errors (tiny configs)."""

from __future__ import annotations

import pytest

from tests.ops.diagnose.scoring import Case, score

pytestmark = pytest.mark.frameworks


def test_transformers_cases_top1_and_calibration() -> None:
    from tests.ops.diagnose.gen_transformers import generate_transformers

    cases = generate_transformers()
    decidable = [Case(c.name, c.label, c.text) for c in cases if c.decidable]
    cut = [Case(c.name, c.label, c.text, decidable=False) for c in cases if not c.decidable]
    assert len(decidable) >= 25
    s = score(decidable)
    assert s.top1 == 1.0, [(a.case.name, a.label) for a in s.misses]
    assert score(decidable + cut).confident_precision >= 0.95
