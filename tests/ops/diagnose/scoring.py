"""Scoring diagnose on a corpus: top-1 per label, precision of confident answers, abstentions.

Shared by the tests and ``scripts/score_diagnose.py``. An answer is *decided* when its top
confidence is at least :data:`DECIDED` and an *abstention* otherwise (the report then lists the
candidates and the command that decides).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

DATA = Path(__file__).parents[2] / "data" / "diagnose"
REAL, HELDOUT, FROZEN, FROZEN2 = DATA / "real", DATA / "heldout", DATA / "frozen", DATA / "frozen2"
FROZEN3, FROZEN4, FROZEN5 = DATA / "frozen3", DATA / "frozen4", DATA / "frozen5"
FROZEN6, FROZEN7, FROZEN8 = DATA / "frozen6", DATA / "frozen7", DATA / "frozen8"
FROZEN9, FROZEN10, FROZEN11 = DATA / "frozen9", DATA / "frozen10", DATA / "frozen11"
FROZEN12, FROZEN13, FROZEN14 = DATA / "frozen12", DATA / "frozen13", DATA / "frozen14"
FROZEN15, FROZEN16 = DATA / "frozen15", DATA / "frozen16"
FROZEN17, FROZEN18 = DATA / "frozen17", DATA / "frozen18"
DECIDED = 0.8


@dataclass(frozen=True)
class Case:
    """One text to diagnose and its cause; ``decidable`` is false when the text hides the evidence."""

    name: str
    label: str
    text: str
    source: str = ""
    decidable: bool = True


@dataclass(frozen=True)
class Answer:
    """diagnose's first cause for a case, its confidence and the other candidates."""

    case: Case
    label: str | None
    confidence: float
    candidates: tuple[str, ...] = ()
    basis: str | None = None  # the kind of reading behind the first cause (reliability.py)

    @property
    def right(self) -> bool:
        """The first cause is the case's label."""
        return self.label == self.case.label

    @property
    def decided(self) -> bool:
        """Confident enough to be stated without candidates."""
        return self.confidence >= DECIDED


@dataclass(frozen=True)
class Score:
    """Top-1, precision at confidence >= 0.8 and the abstention rate of a set of answers."""

    answers: tuple[Answer, ...]
    per_label: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def top1(self) -> float:
        return sum(a.right for a in self.answers) / max(1, len(self.answers))

    @property
    def confident_precision(self) -> float:
        decided = [a for a in self.answers if a.decided]
        return sum(a.right for a in decided) / max(1, len(decided))

    @property
    def abstention_rate(self) -> float:
        return sum(not a.decided for a in self.answers) / max(1, len(self.answers))

    @property
    def misses(self) -> list[Answer]:
        return [a for a in self.answers if not a.right]


def read_case(path: Path) -> tuple[dict[str, str], str]:
    """A corpus file: ``key: value`` header lines, ``---``, then the text as pasted."""
    head, _, body = path.read_text(encoding="utf-8").partition("\n---\n")
    meta = dict(line.split(": ", 1) for line in head.splitlines() if ": " in line)
    return meta, body


def corpus(folder: Path) -> list[Case]:
    """Every case file in ``folder``."""
    out = []
    for p in sorted(folder.glob("*.txt")):
        meta, body = read_case(p)
        out.append(Case(p.stem, meta["label"], body, meta.get("source", "")))
    return out


def development() -> list[Case]:
    """The development set: ``real/`` and ``heldout/`` (both tuned on)."""
    return corpus(REAL) + corpus(HELDOUT)


def answer(case: Case) -> Answer:
    """diagnose_text on the case."""
    from ckpttools.ops.diagnose.diagnosis import diagnose_text

    from ckpttools.ops.diagnose.reliability import basis_of_result

    result = diagnose_text(case.text)
    causes = result.causes
    if not causes:
        return Answer(case, None, 0.0)
    return Answer(case, causes[0].label, causes[0].confidence, tuple(c.label for c in causes),
                  basis_of_result(result))


def score(cases: Iterable[Case]) -> Score:
    """Answer every case and count per label."""
    answers = tuple(answer(c) for c in cases)
    per: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for a in answers:
        per[a.case.label][0] += a.right
        per[a.case.label][1] += 1
    return Score(answers, {k: (v[0], v[1]) for k, v in sorted(per.items())})


def source_key(url: str) -> str:
    """A source URL without scheme, ``www.``, fragment or trailing slash, for comparing threads."""
    url = url.split("#", 1)[0].strip().lower()
    url = url.removeprefix("https://").removeprefix("http://").removeprefix("www.")
    return url.rstrip("/")


def rules_first(text: str):  # type: ignore[no-untyped-def]
    """The cause rules' first finding for an error text, before ``reliability.py`` bounds its
    confidence by held-out outcomes: rule tests assert what the rules read, and
    ``test_reliability.py`` what the report then states."""
    from ckpttools.ops.diagnose.causes import rank_findings
    from ckpttools.ops.diagnose.diagnosis import evidence_from_text
    from ckpttools.ops.diagnose.error_text import parse_error_text

    return rank_findings(evidence_from_text(parse_error_text(text)))[0]
