"""diagnose from text on real threads (development set) and on the generated corpus.

``real/`` and ``heldout/`` are the development set (both were tuned on). ``frozen/`` and
``frozen2/`` are held out: their scores are the ones measured after the last rule change
(docs/diagnose.md, their READMEs). ``frozen3/``, ``frozen4/`` and ``frozen5/`` were collected and
scored before any rule change of their round. These tests guard those levels and check that
held-out sources never appear in development or in another held-out folder.
The generated corpus calls the installed torch's ``load_state_dict`` on really mismatched models;
the default suite scores a fixed sample of it, ``slow`` scores all of it.
"""

from __future__ import annotations

from collections import Counter

import pytest

from tests.ops.diagnose.scoring import (
    FROZEN, FROZEN2, FROZEN3, FROZEN4, FROZEN5, FROZEN6, FROZEN7, FROZEN8, FROZEN9, FROZEN10, FROZEN11,
    FROZEN12, FROZEN13, FROZEN14, FROZEN15, FROZEN16, FROZEN17, FROZEN18, HELDOUT,
    REAL, Case, corpus, development, read_case, score, source_key)

# The dynamic-quantization cases use torch.ao.quantization as the files people have were written.
pytestmark = [
    pytest.mark.filterwarnings("ignore:torch.ao.quantization is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor, torch.quantize_per_channel:UserWarning"),
]

TARGET_TOP1 = 0.9
TARGET_PRECISION = 0.95  # among answers with confidence >= 0.8
# The held-out sets are scored once, after the last rule change of a round (docs/diagnose.md), and
# (frozen/ until round 9) never tuned on. These floors guard the measured levels; they are not
# targets tuned towards.
# frozen/: 29/46 before tuning (round of #16's first part), 33/46 after it, 35/46 after #16's
# generalisation round; 97.0% of its answers at confidence >= 0.8 right.
# Round 9 used all three frozen sets as development material (each had been tuned on): 42/46.
FROZEN_RIGHT = 42
# frozen2/ (42 texts collected before that round): 28/42 before tuning, 33/42 after; 87.9% of its
# answers at confidence >= 0.8 right (80.6% before), below the 95% target.
# Round 9 (tuned on frozen2 as development material): 40/42, its four confident wrong answers gone
# (100% at >= 0.8), each by a relation backed by real-model tests (test_confident_answers.py).
FROZEN2_RIGHT = 40
FROZEN2_PRECISION = 0.95
# frozen3/ (50 texts from 50 new threads): 30/50 before any rule change of its round, 24 of its 30
# answers at confidence >= 0.8 right (80.0%); its README lists how it was collected.
# 29/50 after the one-sided round of #16 (not tuned on; one fewer than before it). Tuned on since
# 29/50: 37/50 after the calibration round, every answer at confidence >= 0.8 right (was 24 of 30).
# Round 9: 41/50, still 100% at >= 0.8.
FROZEN3_RIGHT = 41
FROZEN3_PRECISION = 0.95
# frozen4/ (50 texts from 50 new threads): 32/50 before any rule change of its round, 25 of its 28
# answers at confidence >= 0.8 right (89.3%); its README lists how it was collected.
# 33/50 (92.6%) after #16's round 9, which never read it; tuned on since (#16's frozen4 round): 48/50, every answer at confidence >= 0.8 right (27 of 27).
FROZEN4_RIGHT = 48
FROZEN4_PRECISION = 0.95
# frozen5/ (50 texts from 50 new threads, collected while #16's rules changed in parallel): 25/50
# before any rule change made for it, 20 of its 25 answers at confidence >= 0.8 right (80.0%);
# scored at 1cd4d65 (ckpttools/ as at 88ef636). Its README lists how it was collected.
# After round 10 (calibration, which never read it): unchanged, 25/50 and 80.0%.
# Tuned on since (#16's frozen5 round): 40/50, every answer at confidence >= 0.8 right (27 of 27).
FROZEN5_RIGHT = 40
FROZEN5_PRECISION = 0.95
# frozen6/ (50 texts from 50 new threads, collected by someone who does not change the rules):
# 34/50 before any rule change made for it, 25 of its 29 answers at confidence >= 0.8 right (86.2%,
# below the target, so no precision floor); scored at 50fbdd2 (ckpttools/ as at 0578c88). Its README
# lists how it was collected.
# After round 11 (pasted presentations, which never read it): unchanged, 34/50 and 86.2%.
# Tuned on since (#16's frozen6 round): 41/50, every answer at confidence >= 0.8 right (30 of 30).
FROZEN6_RIGHT = 41
FROZEN6_PRECISION = 0.95
# frozen7/ (50 texts from 50 new threads, collected by someone who does not change the rules; committed
# at 62c2ea4 before diagnose ran on any of them), scored once with the round's final rules (c053e44),
# after every rule change of the round (round 11, frozen6's tuning, the fixes that run when pasted):
# 32/50, 26 of its 28 answers at confidence >= 0.8 right (92.9%, below the target: no precision
# floor). Before tuning: FROZEN7_RIGHT was 32.
# Tuned on since (#16's frozen7 round): 45/50, every answer at confidence >= 0.8 right (27 of 27).
FROZEN7_RIGHT = 45
FROZEN7_PRECISION = 0.95
# frozen8/ (50 texts from 50 new threads, collected by someone who does not change the rules; committed
# at 41ec600 before diagnose ran on any of them): scored once with the rules it was collected under
# (07134bb): 30/50, 17 of 20 at confidence >= 0.8 right (85.0%); with the rules after frozen7's tuning
# (ab28c0e), which never read it: 31/50, 85.0% (17 of 20). Tuned on from then.
# Tuned on since (#16's frozen8 round): 35/50, every answer at confidence >= 0.8 right (18 of 18).
# 36/50 after #16's frozen13/14 round (openfold242: an auxiliary head only the model has).
FROZEN8_RIGHT = 36
FROZEN8_PRECISION = 0.95
# frozen9/ (50 texts from 50 new threads, collected by someone who does not change the rules; committed
# at f456f8f before diagnose ran on any of them): 32/50, 23 of 28 at confidence >= 0.8 right (82.1%)
# with the rules it was collected under (6cb6f2d) and again after frozen8's tuning (7240cfc), which
# never read it. Tuned on from then.
# Tuned on since (#16's frozen9 round): 37/50, 24 of 25 at confidence >= 0.8 right (96.0%).
# 38/50 after #16's frozen10 round (sam69: a missing list led by blocks.12 is another depth).
FROZEN9_RIGHT = 38
FROZEN9_PRECISION = 0.95
# frozen10/ (50 texts from 50 new threads, collected by someone who does not change the rules; committed
# at 9d1d05c before diagnose ran on any of them): held out; with the rules it was collected under
# (9012b7e) 34/50, 26 of 30 at confidence >= 0.8 right (86.7%); once more with the round's final rules
# (987ee01, after frozen9's tuning): unchanged, the same answer on every file. Tuned on since
# (#16's frozen10 round): 41/50, 27 of 27 at confidence >= 0.8 right (100%).
FROZEN10_RIGHT = 41
FROZEN10_PRECISION = 0.95
# frozen11/ (50 vision texts, committed at eaaec6a) and frozen12/ (50 language, audio and other texts,
# committed at 0a2b409), each from 50 new threads collected by people who do not change the rules,
# before diagnose ran on any of them: held out; with the rules they were collected under (6f30365)
# 35/50, 27 of 32 at confidence >= 0.8 right (84.4%), and 32/50, 17 of 21 right (81.0%); after
# frozen10's tuning (d8121a3; they never read these files) 35/50 unchanged, and 31/50, 16 of 20 (80.0%).
# Both in the calibration's outcome table since #16's frozen11/12 round (frozen12's three adapter
# readings at 0.95 lowered: 31/50, 12 of 12 right), then tuned on: frozen11 37/50, 19 of 20 at
# confidence >= 0.8 right (95.0%); frozen12 35/50, 12 of 12 (100%). frozen11 38/50, 19 of 19
# (100%) after #16's frozen13/14 round (covr33: a masked-LM bias alone is the code sizing it).
FROZEN11_RIGHT = 38
FROZEN11_PRECISION = 0.95
FROZEN12_RIGHT = 35
FROZEN12_PRECISION = 0.95
# frozen13/ (50 vision texts, committed at 46979ec) and frozen14/ (50 non-vision texts, committed at
# 142b595), collected the same way after the calibration step: held out; with the rules they were
# collected under (9c2e266) 32/50, 16 of 17 at confidence >= 0.8 right (94.1%), and 35/50, 15 of 18
# right (83.3%); after frozen11/12's tuning and calibration table (525c032; they never read these
# files) 32/50, 16 of 17 (94.1%), and 35/50, 13 of 15 (86.7%); with their own outcomes in the
# calibration table (5acd576) 32/50, 19 of 21 (90.5%), and 35/50, 15 of 17 (88.2%).
# Tuned on since (#16's frozen13/14 round): frozen13 37/50, 20 of 20 at confidence >= 0.8 right
# (100%); frozen14 41/50, 16 of 16 (100%).
FROZEN13_RIGHT = 37
FROZEN13_PRECISION = 0.95
FROZEN14_RIGHT = 41
FROZEN14_PRECISION = 0.95
# frozen15/ (50 vision texts, committed at 3687e56) and frozen16/ (50 language, audio and other texts,
# committed at 6246ce3), collected the same way while frozen13/14 were not yet tuned on: held out;
# with the rules they were collected under (603be42) 31/50, 14 of 14 at confidence >= 0.8 right, and
# 35/50, 16 of 16 (the rules' own decided answers before the calibration step: 23 of 25 and 20 of
# 23); after the outcome table took frozen13/14 (5acd576; they never read these files) 31/50, 16 of
# 17 (94.1%), and 35/50, 16 of 16; after frozen13/14's tuning (4a0dbef) unchanged.
# Tuned on since (#16's frozen15/16 round): frozen15 38/50, 16 of 16 at confidence >= 0.8 right
# (100%); frozen16 37/50, 16 of 16 (100%).
FROZEN15_RIGHT = 38
FROZEN15_PRECISION = 0.95
FROZEN16_RIGHT = 37
FROZEN16_PRECISION = 0.95
# frozen17/ (50 vision texts, committed at 2723cdc) and frozen18/ (50 language, audio and other texts,
# committed at ab70549), collected while frozen15/16 were being tuned on: held out; with the rules
# they were collected under (4a0dbef: frozen13/14's tuning) 28/50, 19 of 23 at confidence >= 0.8
# right (82.6%), and 34/50, 15 of 16 (93.8%) (the rules' own decided answers before the calibration
# step: 21 of 26 and 20 of 23); after frozen15/16's tuning (89ded72; they never read these files)
# 29/50, 19 of 23, and 34/50, 15 of 16. Not tuned on.
FROZEN17_RIGHT = 29
FROZEN18_RIGHT = 34
# Round 10 (calibration.py: thin evidence is a candidate) changed no top-1 or precision figure of
# the frozen sets; rerun with the rules each was scored with before tuning plus that pass, their
# confident answers are 99 of 107 right (85.6%, 101 of 118, with the old rules alone).
# Both unchanged after #16's one-sided round (35/46 at 97.0%, 33/42 at 87.9%, scored once).
# Texts whose deciding side is cut: top-1 floors at the measured level (#16 one-sided round: 778/1065
# = 73.1% of the whole generated corpus, 108/153 = 70.6% of the default sample). Not 90%: a missing
# list alone cannot tell a wrapper prefix from a training dict or another model; those abstain.
# Round 9: 794/1065 = 74.6% of those texts, 133/181 = 73.5% of the sample (its new presentations
# included).
CUT_TOP1_FULL = 0.745
CUT_TOP1_SAMPLE = 0.73
# Causes and presentations added in the round that tuned on frozen3 (weights moved into a submodule,
# a vocabulary-parallel rank's file, a modified network, Megatron-Core's first mismatch only).
# Their cut texts are mostly undecidable one-sided lists (66/115 right, none confidently wrong):
# the full floor above is kept on the texts the corpus had before (778/1065 = 73.1%), and the
# whole corpus, these included, measured 844/1180 = 71.5%.
# Round 9 added two presentations of size-mismatch texts: a paste cut inside the first shape
# (only the key is left: 18/42 right, none decided) and a paste that starts at the key (38/42);
# the whole corpus, these included, measured 921/1264 = 72.9% at the end of the round.
CUT_ROUND9 = ("cut_in_shape", "from_key")
CUT_ADDED = ("weights_in_submodule", "weights_out_of_submodule", "vocab_parallel_rank0",
             "modified_network", "megatron_core") + CUT_ROUND9
CUT_TOP1_FULL_WITH_ADDED = 0.725


def test_development_top1_and_calibration() -> None:
    s = score(development())
    assert len(s.answers) >= 120
    assert s.top1 >= TARGET_TOP1, [(a.case.name, a.case.label, a.label) for a in s.misses]
    assert s.confident_precision >= TARGET_PRECISION


def test_frozen_sources_never_in_development() -> None:
    dev = {source_key(c.source) for c in development()}
    frozen = {source_key(c.source) for c in corpus(FROZEN)}
    frozen2 = [source_key(c.source) for c in corpus(FROZEN2)]
    frozen3 = [source_key(c.source) for c in corpus(FROZEN3)]
    frozen4 = [source_key(c.source) for c in corpus(FROZEN4)]
    frozen5 = [source_key(c.source) for c in corpus(FROZEN5)]
    frozen6 = [source_key(c.source) for c in corpus(FROZEN6)]
    frozen7 = [source_key(c.source) for c in corpus(FROZEN7)]
    frozen8 = [source_key(c.source) for c in corpus(FROZEN8)]
    frozen9 = [source_key(c.source) for c in corpus(FROZEN9)]
    frozen10 = [source_key(c.source) for c in corpus(FROZEN10)]
    frozen11 = [source_key(c.source) for c in corpus(FROZEN11)]
    assert len(frozen) >= 40 and len(frozen2) >= 40 and len(frozen3) >= 45 and len(frozen4) >= 45
    assert len(frozen5) >= 45 and len(frozen6) >= 45 and len(frozen7) >= 45 and len(frozen8) >= 45
    assert len(frozen9) >= 45 and len(frozen10) >= 45 and len(frozen11) >= 45
    frozen12 = [source_key(c.source) for c in corpus(FROZEN12)]
    assert len(frozen12) >= 45
    frozen13 = [source_key(c.source) for c in corpus(FROZEN13)]
    assert len(frozen13) >= 45
    frozen14 = [source_key(c.source) for c in corpus(FROZEN14)]
    assert len(frozen14) >= 45
    frozen15 = [source_key(c.source) for c in corpus(FROZEN15)]
    frozen16 = [source_key(c.source) for c in corpus(FROZEN16)]
    assert len(frozen15) >= 45 and len(frozen16) >= 45
    frozen17 = [source_key(c.source) for c in corpus(FROZEN17)]
    frozen18 = [source_key(c.source) for c in corpus(FROZEN18)]
    assert len(frozen17) >= 45 and len(frozen18) >= 45
    assert not dev & frozen
    assert not dev & set(frozen2) and not frozen & set(frozen2)
    assert not (dev | frozen | set(frozen2)) & set(frozen3)
    assert not (dev | frozen | set(frozen2) | set(frozen3)) & set(frozen4)
    assert not (dev | frozen | set(frozen2) | set(frozen3) | set(frozen4)) & set(frozen5)
    assert not (dev | frozen | set(frozen2) | set(frozen3) | set(frozen4) | set(frozen5)) & set(frozen6)
    others = dev | frozen | set(frozen2) | set(frozen3) | set(frozen4) | set(frozen5) | set(frozen6)
    assert not others & set(frozen7)
    assert not (others | set(frozen7)) & set(frozen8)
    assert not (others | set(frozen7) | set(frozen8)) & set(frozen9)
    assert not (others | set(frozen7) | set(frozen8) | set(frozen9)) & set(frozen10)
    assert not (others | set(frozen7) | set(frozen8) | set(frozen9) | set(frozen10)) & set(frozen11)
    later = others | set(frozen7) | set(frozen8) | set(frozen9) | set(frozen10)
    assert not (later | set(frozen11)) & set(frozen12)
    assert not (later | set(frozen11) | set(frozen12)) & set(frozen13)
    assert not (later | set(frozen11) | set(frozen12) | set(frozen13)) & set(frozen14)
    latest = later | set(frozen11) | set(frozen12) | set(frozen13) | set(frozen14)
    assert not latest & set(frozen15) and not (latest | set(frozen15)) & set(frozen16)
    newest = latest | set(frozen15) | set(frozen16)
    assert not newest & set(frozen17) and not (newest | set(frozen17)) & set(frozen18)
    assert len(set(frozen2)) == len(frozen2)  # one case per thread
    assert len(set(frozen3)) == len(frozen3)
    assert len(set(frozen4)) == len(frozen4)
    assert len(set(frozen5)) == len(frozen5)
    assert len(set(frozen6)) == len(frozen6)
    assert len(set(frozen7)) == len(frozen7)
    assert len(set(frozen8)) == len(frozen8)
    assert len(set(frozen9)) == len(frozen9)
    assert len(set(frozen10)) == len(frozen10)
    assert len(set(frozen11)) == len(frozen11)
    assert len(set(frozen12)) == len(frozen12)
    assert len(set(frozen13)) == len(frozen13)
    assert len(set(frozen14)) == len(frozen14)
    assert len(set(frozen15)) == len(frozen15) and len(set(frozen16)) == len(frozen16)
    assert len(set(frozen17)) == len(frozen17) and len(set(frozen18)) == len(frozen18)


# (folder, cases, right at least, precision at >= 0.8 at least or None): the floors above
FROZEN_FLOORS = {"frozen": (FROZEN, 46, FROZEN_RIGHT, TARGET_PRECISION),
                 "frozen2": (FROZEN2, 42, FROZEN2_RIGHT, FROZEN2_PRECISION),
                 "frozen3": (FROZEN3, 50, FROZEN3_RIGHT, FROZEN3_PRECISION),
                 "frozen4": (FROZEN4, 50, FROZEN4_RIGHT, FROZEN4_PRECISION),
                 "frozen5": (FROZEN5, 50, FROZEN5_RIGHT, FROZEN5_PRECISION),
                 "frozen6": (FROZEN6, 50, FROZEN6_RIGHT, FROZEN6_PRECISION),
                 "frozen7": (FROZEN7, 50, FROZEN7_RIGHT, FROZEN7_PRECISION),
                 "frozen8": (FROZEN8, 50, FROZEN8_RIGHT, FROZEN8_PRECISION),
                 "frozen9": (FROZEN9, 50, FROZEN9_RIGHT, FROZEN9_PRECISION),
                 "frozen10": (FROZEN10, 50, FROZEN10_RIGHT, FROZEN10_PRECISION),
                 "frozen11": (FROZEN11, 50, FROZEN11_RIGHT, FROZEN11_PRECISION),
                 "frozen12": (FROZEN12, 50, FROZEN12_RIGHT, FROZEN12_PRECISION),
                 "frozen13": (FROZEN13, 50, FROZEN13_RIGHT, FROZEN13_PRECISION),
                 "frozen14": (FROZEN14, 50, FROZEN14_RIGHT, FROZEN14_PRECISION),
                 "frozen15": (FROZEN15, 50, FROZEN15_RIGHT, FROZEN15_PRECISION),
                 "frozen16": (FROZEN16, 50, FROZEN16_RIGHT, FROZEN16_PRECISION),
                 "frozen17": (FROZEN17, 50, FROZEN17_RIGHT, None),
                 "frozen18": (FROZEN18, 50, FROZEN18_RIGHT, None)}


@pytest.mark.parametrize("name", list(FROZEN_FLOORS))
def test_frozen_sets_as_measured(name: str) -> None:
    folder, cases, right, precision = FROZEN_FLOORS[name]
    s = score(corpus(folder))
    assert len(s.answers) == cases
    assert sum(a.right for a in s.answers) >= right
    if precision is not None:  # None: measured below the target, no floor
        assert s.confident_precision >= precision


@pytest.mark.parametrize("folder", [REAL, HELDOUT, FROZEN, FROZEN2, FROZEN3, FROZEN4, FROZEN5, FROZEN6,
                                    FROZEN7, FROZEN8, FROZEN9, FROZEN10, FROZEN11, FROZEN12,
                                    FROZEN13, FROZEN14, FROZEN15, FROZEN16,
                                    FROZEN17, FROZEN18],
                         ids=["real", "heldout", "frozen", "frozen2", "frozen3", "frozen4", "frozen5",
                              "frozen6", "frozen7", "frozen8", "frozen9", "frozen10", "frozen11",
                              "frozen12", "frozen13", "frozen14", "frozen15", "frozen16",
                              "frozen17", "frozen18"])
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
    # the presentations of round 9 sampled apart, so the sample of the others stays the same texts
    new = tuple(f"-{name}" for name in CUT_ROUND9)
    return decidable[::sample], ([c for c in cut if not c.name.endswith(new)][::sample]
                                 + [c for c in cut if c.name.endswith(new)][::sample])


def _assert_generated(decidable: list[Case], cut: list[Case], cut_top1: float) -> None:
    s = score(decidable)
    low = {label: (ok, n) for label, (ok, n) in s.per_label.items() if ok < TARGET_TOP1 * n}
    assert not low, low
    # Whole messages, however handed over (round 11: none of 3490 is confidently wrong).
    assert not [a.case.name for a in s.answers if a.decided and not a.right]
    # Cut texts may be undecidable: they must abstain rather than be confidently wrong.
    assert score(decidable + cut).confident_precision >= TARGET_PRECISION
    assert score(cut).top1 >= cut_top1


def test_generated_sample() -> None:
    decidable, cut = _generated(sample=7)
    assert len(decidable) >= 60 and len(Counter(c.label for c in decidable)) >= 15
    _assert_generated(decidable, cut, CUT_TOP1_SAMPLE)


@pytest.mark.slow
def test_generated_corpus_full() -> None:
    decidable, cut = _generated(sample=1)
    assert len(decidable) + len(cut) >= 600
    from ckpttools.ops.diagnose.causes import LABELS

    assert {c.label for c in decidable} == set(LABELS)
    _assert_generated(decidable, cut, CUT_TOP1_FULL_WITH_ADDED)
    before = [c for c in cut if not any(f"-{name}" in c.name for name in CUT_ADDED)]
    assert score(before).top1 >= CUT_TOP1_FULL
