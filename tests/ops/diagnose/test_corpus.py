"""diagnose from text on real threads (development set) and on the generated corpus.

``real/`` and ``heldout/`` are the development set (both were tuned on). ``frozen/`` is scored by
``scripts/score_diagnose.py`` only: its score is the one measured after the last rule change
(docs/diagnose.md), and these tests only check that its sources never appear in development.
The generated corpus calls the installed torch's ``load_state_dict`` on really mismatched models;
the default suite scores a fixed sample of it, ``slow`` scores all of it.
"""

from __future__ import annotations

from collections import Counter

import pytest

from tests.ops.diagnose.scoring import (
    FROZEN, HELDOUT, REAL, Case, corpus, development, read_case, score, source_key)

# The dynamic-quantization cases use torch.ao.quantization as the files people have were written.
pytestmark = [
    pytest.mark.filterwarnings("ignore:torch.ao.quantization is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor, torch.quantize_per_channel:UserWarning"),
]

TARGET_TOP1 = 0.9
TARGET_PRECISION = 0.95  # among answers with confidence >= 0.8
# frozen/ was scored once, after the last rule change (docs/diagnose.md): 33/46 right (29/46
# before tuning), 96.8% of its answers at confidence >= 0.8 right. Below the 90% target; the
# rules were not tuned on it. This guards the measured level, it is not a target tuned towards.
FROZEN_RIGHT = 33


def test_development_top1_and_calibration() -> None:
    s = score(development())
    assert len(s.answers) >= 120
    assert s.top1 >= TARGET_TOP1, [(a.case.name, a.case.label, a.label) for a in s.misses]
    assert s.confident_precision >= TARGET_PRECISION


def test_frozen_sources_never_in_development() -> None:
    dev = {source_key(c.source) for c in development()}
    frozen = {source_key(c.source) for c in corpus(FROZEN)}
    assert len(frozen) >= 40
    assert not dev & frozen


def test_frozen_as_measured() -> None:
    s = score(corpus(FROZEN))
    assert len(s.answers) == 46
    assert sum(a.right for a in s.answers) >= FROZEN_RIGHT
    assert s.confident_precision >= TARGET_PRECISION


@pytest.mark.parametrize("folder", [REAL, HELDOUT, FROZEN], ids=["real", "heldout", "frozen"])
def test_corpus_headers_are_complete(folder) -> None:  # type: ignore[no-untyped-def]
    from ckpttools.ops.diagnose.causes import LABELS

    for path in sorted(folder.glob("*.txt")):
        meta, body = read_case(path)
        assert meta["source"].startswith("https://"), path.name
        assert meta["label"] in LABELS, path.name
        assert body.strip(), path.name


def _generated(sample: int) -> tuple[list[Case], list[Case]]:
    from tests.ops.diagnose.generated_corpus import generate

    cases = generate()
    decidable = [Case(c.name, c.label, c.text) for c in cases if c.decidable]
    cut = [Case(c.name, c.label, c.text, decidable=False) for c in cases if not c.decidable]
    return decidable[::sample], cut[::sample]


def _assert_generated(decidable: list[Case], cut: list[Case]) -> None:
    s = score(decidable)
    low = {label: (ok, n) for label, (ok, n) in s.per_label.items() if ok < TARGET_TOP1 * n}
    assert not low, low
    # Cut texts may be undecidable: they must abstain rather than be confidently wrong.
    assert score(decidable + cut).confident_precision >= TARGET_PRECISION


def test_generated_sample() -> None:
    decidable, cut = _generated(sample=7)
    assert len(decidable) >= 60 and len(Counter(c.label for c in decidable)) >= 15
    _assert_generated(decidable, cut)


@pytest.mark.slow
def test_generated_corpus_full() -> None:
    decidable, cut = _generated(sample=1)
    assert len(decidable) + len(cut) >= 600
    from ckpttools.ops.diagnose.causes import LABELS

    assert {c.label for c in decidable} == set(LABELS)
    _assert_generated(decidable, cut)
