"""Print diagnose's top-1 score per cause on real corpora and on generated cases.

Usage (from the repository root):
    python scripts/score_diagnose.py                      # real corpus and generated cases
    python scripts/score_diagnose.py --corpus tests/data/diagnose/heldout   # one folder only
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.ops.diagnose.test_corpus import corpus_cases, generated_cases, real_cases, top_label  # noqa: E402


def _score(name: str, cases: list[tuple[str, str, str]]) -> None:
    per: dict[str, list[bool]] = defaultdict(list)
    misses = []
    for case, label, text in cases:
        got = top_label(text)
        per[label].append(got == label)
        if got != label:
            misses.append(f"  {case}: want {label}, got {got}")
    total = sum(sum(v) for v in per.values())
    print(f"{name}: top-1 {total}/{len(cases)} = {total / len(cases):.1%}")
    for label in sorted(per):
        ok = per[label]
        print(f"  {label:24} {sum(ok)}/{len(ok)}")
    print("\n".join(misses) if misses else "  (no misses)")


def main() -> None:
    """Score the folders asked for, or the real corpus and the generated cases."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", action="append", type=Path, default=[],
                        help="folder of case files to score (repeatable)")
    args = parser.parse_args()
    if args.corpus:
        for folder in args.corpus:
            _score(str(folder), corpus_cases(folder))
        return
    _score("real corpus", real_cases())
    _score("generated", [(n, label, build()) for n, label, build in generated_cases()])


if __name__ == "__main__":
    main()
