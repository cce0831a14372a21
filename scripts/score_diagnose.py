"""Score ``diagnose`` from text: development, generated and frozen held-out corpora.

For each set: top-1 overall and per label, precision among answers with confidence >= 0.8
(calibration) and the abstention rate (answers below 0.8, which list candidates instead).

Usage (from the repository root):
    python scripts/score_diagnose.py                    # development, generated, frozen, frozen2..frozen18
    python scripts/score_diagnose.py --skip-frozen      # while working: never look at frozen*/
    python scripts/score_diagnose.py --corpus DIR       # one folder of case files
    python scripts/score_diagnose.py --misses           # also list what each set got wrong
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.ops.diagnose.scoring import (  # noqa: E402
    FROZEN, FROZEN2, FROZEN3, FROZEN4, FROZEN5, FROZEN6, FROZEN7, FROZEN8, FROZEN9, FROZEN10, FROZEN11,
    FROZEN12, FROZEN13, FROZEN14, FROZEN15, FROZEN16, FROZEN17, FROZEN18, Case,
    Score, corpus, development, score)


def _print(name: str, s: Score, misses: bool) -> None:
    right = sum(a.right for a in s.answers)
    print(f"{name}: top-1 {right}/{len(s.answers)} = {s.top1:.1%}; precision at confidence >= 0.8 "
          f"{s.confident_precision:.1%}; abstention rate {s.abstention_rate:.1%}")
    bins = [(0.0, 0.5), (0.5, 0.65), (0.65, 0.8), (0.8, 0.9), (0.9, 1.01)]
    cells = []
    for lo, hi in bins:
        inside = [a for a in s.answers if lo <= a.confidence < hi]
        cells.append(f"[{lo:.2f},{min(hi, 1):.2f}) {sum(a.right for a in inside)}/{len(inside)}")
    print("  reliability (right/answers by confidence): " + "; ".join(cells))
    by_basis: dict[str, list[int]] = {}
    for a in s.answers:  # how each kind of reading fared: right/answers, decided (right)
        tally = by_basis.setdefault(a.basis or "(no cause)", [0, 0, 0, 0])
        tally[0] += a.right
        tally[1] += 1
        tally[2] += a.decided
        tally[3] += a.decided and a.right
    for basis, (ok, n, decided, decided_ok) in sorted(by_basis.items()):
        print(f"  basis {basis:30} {ok}/{n} right; {decided} decided, {decided_ok} of them right")
    for label, (ok, n) in s.per_label.items():
        print(f"  {label:24} {ok}/{n}")
    confusion = Counter((a.case.label, a.label) for a in s.misses)
    for (want, got), n in sorted(confusion.items(), key=lambda t: (-t[1], t[0][0])):
        print(f"  confused: {want} -> {got}: {n}")
    for a in s.misses if misses else []:
        print(f"  miss {a.case.name}: want {a.case.label}, got {a.label} ({a.confidence:.2f})")


def _generated(misses: bool) -> None:
    from tests.ops.diagnose.generated_corpus import generate

    cases = generate()
    decidable = [Case(c.name, c.label, c.text) for c in cases if c.decidable]
    cut = [Case(c.name, c.label, c.text, decidable=False) for c in cases if not c.decidable]
    _print("generated (whole, traceback, log, json, strict=False)", score(decidable), misses)
    cut_score = score(cut)
    _print("generated with the deciding side cut (truncated, one side)", cut_score, misses)
    by_how: dict[str, list[int]] = {}
    for a in cut_score.answers:
        tally = by_how.setdefault(a.case.name.rsplit("-", 1)[-1], [0, 0, 0, 0])
        tally[0] += a.right
        tally[1] += 1
        tally[2] += a.decided
        tally[3] += a.decided and a.right
    for how, (ok, n, decided, decided_ok) in sorted(by_how.items()):
        print(f"  presentation {how:18} {ok}/{n} right; {decided} decided, {decided_ok} of them right")
    try:
        from tests.ops.diagnose.gen_transformers import generate_transformers
    except ImportError:
        return
    hf = generate_transformers()
    _print("generated from transformers (tiny configs, all presentations)",
           score(Case(c.name, c.label, c.text, decidable=c.decidable) for c in hf), misses)


def main() -> None:
    """Score the sets asked for."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", action="append", type=Path, default=[],
                        help="folder of case files to score (repeatable)")
    parser.add_argument("--skip-frozen", action="store_true",
                        help="do not score frozen/ .. frozen5/")
    parser.add_argument("--misses", action="store_true", help="list the misses")
    args = parser.parse_args()
    if args.corpus:
        for folder in args.corpus:
            _print(str(folder), score(corpus(folder)), args.misses)
        return
    _print("development (real/ + heldout/)", score(development()), args.misses)
    _generated(args.misses)
    if not args.skip_frozen:
        _print("frozen (29/46 before #16's first round; tuned on in round 9 and the frozen4 round)",
               score(corpus(FROZEN)), args.misses)
        _print("frozen2 (scored 28/42 before tuning; tuned on since)", score(corpus(FROZEN2)), args.misses)
        _print("frozen3 (scored 30/50 before tuning, 29/50 after the one-sided round; tuned on since)",
               score(corpus(FROZEN3)), args.misses)
        _print("frozen4 (scored 32/50 before tuning; tuned on since)", score(corpus(FROZEN4)), args.misses)
        _print("frozen5 (scored 25/50 before tuning and after round 10; tuned on since)", score(corpus(FROZEN5)), args.misses)
        _print("frozen6 (scored 34/50 before tuning; tuned on since)", score(corpus(FROZEN6)), args.misses)
        _print("frozen7 (scored 32/50 before tuning; tuned on since)", score(corpus(FROZEN7)), args.misses)
        _print("frozen8 (scored 30/50 with the rules it was collected under, 31/50 after frozen7's tuning; tuned on since: #16's frozen8 round)", score(corpus(FROZEN8)), args.misses)
        _print("frozen9 (scored 32/50 with the rules it was collected under and after frozen8's tuning; tuned on since: #16's frozen9 round)", score(corpus(FROZEN9)), args.misses)
        _print("frozen10 (scored 34/50 with the rules it was collected under and after frozen9's tuning; tuned on since: #16's frozen10 round)", score(corpus(FROZEN10)), args.misses)
        _print("frozen11 (vision texts committed at eaaec6a before diagnose ran on them; 35/50 with the rules they were collected under, 6f30365, and after frozen10's tuning; tuned on since: #16's frozen11/12 round)", score(corpus(FROZEN11)), args.misses)
        _print("frozen12 (non-vision texts committed at 0a2b409 before diagnose ran on them; 32/50 with the rules they were collected under, 6f30365; 31/50 after frozen10's tuning; tuned on since: #16's frozen11/12 round)", score(corpus(FROZEN12)), args.misses)
        _print("frozen13 (vision texts committed at 46979ec before diagnose ran on them; 32/50 with the rules they were collected under, 9c2e266, and after frozen11/12's tuning; tuned on since: #16's frozen13/14 round)", score(corpus(FROZEN13)), args.misses)
        _print("frozen14 (non-vision texts committed at 142b595 before diagnose ran on them; 35/50 with the rules they were collected under, 9c2e266, and after frozen11/12's tuning; tuned on since: #16's frozen13/14 round)", score(corpus(FROZEN14)), args.misses)
        _print("frozen15 (vision texts committed at 3687e56 before diagnose ran on them; 31/50 with the rules they were collected under, 603be42, after the outcome table took frozen13/14 and after frozen13/14's tuning; tuned on since: #16's frozen15/16 round)", score(corpus(FROZEN15)), args.misses)
        _print("frozen16 (non-vision texts committed at 6246ce3 before diagnose ran on them; 35/50 with the rules they were collected under, 603be42, after the outcome table took frozen13/14 and after frozen13/14's tuning; tuned on since: #16's frozen15/16 round)", score(corpus(FROZEN16)), args.misses)
        _print("frozen17 (held out: vision texts committed at 2723cdc before diagnose ran on them; 28/50 with the rules they were collected under, 4a0dbef; 29/50 after frozen15/16's tuning; not tuned on)", score(corpus(FROZEN17)), args.misses)
        _print("frozen18 (held out: non-vision texts committed at ab70549 before diagnose ran on them; 34/50 with the rules they were collected under, 4a0dbef, and after frozen15/16's tuning; not tuned on)", score(corpus(FROZEN18)), args.misses)


if __name__ == "__main__":
    main()
