"""Rebuild the outcome table that calibrates ``diagnose``'s confidence from text.

Each frozen held-out set was scored once with the rules as they stood before anyone read it (the
commit is in its README's score section). This script checks each of those commits out into a
temporary worktree (``git worktree add --detach``), runs that commit's ``diagnose_text`` on every
case file of the set in a subprocess whose ``PYTHONPATH`` is that worktree, and writes one row per
case to ``tests/data/diagnose/calibration/outcomes.jsonl``: the set, the commit, the wanted label,
the first cause's label and confidence, whether it was right, and the evidence that produced it
(the counts, the class named, the shapes shown, the cause's facts). The reading's ``basis``
(``ckpttools.ops.diagnose.reliability.basis_of``) is computed from those fields, so a row and a
live answer are classed by the same function. The worktrees are removed afterwards.

Usage, from the repository root:

    python scripts/calibrate_diagnose.py              # rebuild outcomes.jsonl (about a minute)
    python scripts/calibrate_diagnose.py --table      # print the per-basis table from the rows
    python scripts/calibrate_diagnose.py --loso       # leave-one-set-out: each set scored by the
                                                      # table built without it
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ckpttools.ops.diagnose.reliability import (  # noqa: E402
    DECIDED, basis_of, build_table, calibrated_confidence, wilson_lower)

DATA = ROOT / "tests" / "data" / "diagnose"
OUTCOMES = DATA / "calibration" / "outcomes.jsonl"
# (folder, the commit each set was first scored at, before any rule change made for it; see its
# README: frozen4, frozen5 and frozen6 were scored at the commit that added their files, whose
# ckpttools/ is that of 82aa56a, 88ef636 and 0578c88)
PRE_TUNING = (("frozen", "8362996"), ("frozen2", "0104ca9"), ("frozen3", "13314b6"),
              ("frozen4", "82be200"), ("frozen5", "1cd4d65"), ("frozen6", "50fbdd2"),
              ("frozen7", "c053e44"), ("frozen8", "07134bb"), ("frozen9", "6cb6f2d"),
              ("frozen10", "9012b7e"), ("frozen11", "6f30365"), ("frozen12", "6f30365"),
              ("frozen13", "9c2e266"), ("frozen14", "9c2e266"))

# Runs inside the old commit's worktree: only its public diagnose_text and the result's to_dict.
_RUNNER = r'''
import json, sys
from pathlib import Path
import ckpttools
try:  # the rows record the rules' own answers: a commit's own calibration step is switched off
    import ckpttools.ops.diagnose.reliability as calibration
    calibration.bound_by_outcomes = lambda findings, ev: findings
except ImportError:  # commits before the calibration step
    pass
rows = []
for path in sorted(Path(sys.argv[1]).glob("*.txt")):
    head, _, body = path.read_text(encoding="utf-8").partition("\n---\n")
    meta = dict(line.split(": ", 1) for line in head.splitlines() if ": " in line)
    r = ckpttools.diagnose_text(body)
    d = r.to_dict()
    first = r.causes[0] if r.causes else None
    rows.append({
        "case": path.stem, "want": meta["label"],
        "got": first.label if first else None,
        "confidence": first.confidence if first else 0.0,
        "second": [r.causes[1].label, r.causes[1].confidence] if len(r.causes) > 1 else None,
        "class_name": d.get("class_name"), "truncated": bool(d.get("truncated")),
        "counts": {k: d["counts"][k] for k in ("missing", "unexpected", "mismatched")},
        "mismatched": [[m["key"], m["checkpoint_shape"], m["model_shape"]] for m in d["mismatched"]][:12],
        "cause": d["causes"][0]["evidence"] if d["causes"] else None,
    })
print(json.dumps(rows, default=str))
'''


def run_commit(commit: str, folder: Path) -> list[dict]:
    """Every case of ``folder`` diagnosed by ``commit``'s rules (in a temporary worktree)."""
    tmp = Path(tempfile.gettempdir()) / f"calib-{commit}"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tmp), commit],
                   check=True, capture_output=True)
    try:
        run = subprocess.run([sys.executable, "-c", _RUNNER, str(folder)], cwd=tmp,
                             env={"PYTHONPATH": str(tmp), "PATH": "/usr/bin:/bin"},
                             capture_output=True, text=True, check=True)
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tmp)],
                       check=True, capture_output=True)
    return json.loads(run.stdout.splitlines()[-1])


def build_outcomes() -> list[dict]:
    """One row per case of every frozen set, as its pre-tuning commit answered it."""
    rows = []
    for name, commit in PRE_TUNING:
        found = run_commit(commit, DATA / name)
        for r in found:
            r = {"set": name, "commit": commit, **r, "right": r["got"] == r["want"]}
            r["basis"] = basis_of(r)
            rows.append(r)
        decided = [r for r in found if r["confidence"] >= DECIDED]
        right = sum(r["got"] == r["want"] for r in found)
        ok = sum(r["got"] == r["want"] for r in decided)
        print(f"{name} at {commit}: top-1 {right}/{len(found)}; right at >= 0.8 {ok}/{len(decided)}",
              file=sys.stderr)
    return rows


def read_outcomes(path: Path = OUTCOMES) -> list[dict]:
    """The committed rows."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def print_table(rows: list[dict]) -> None:
    """Each basis: its decided outcomes, right, and the bound the calibration uses."""
    for basis, (right, n) in build_table(rows).items():
        note = "" if n >= 5 or basis.startswith("band:") else " (too few: its band bounds it)"
        print(f"{basis:30} {right:3}/{n:<3} = {right / n:6.1%}; Wilson lower bound "
              f"{wilson_lower(right, n):.2f}{note}")


def leave_one_set_out(rows: list[dict]) -> None:
    """Each set's pre-tuning answers, calibrated by the table built from the other sets."""
    totals = [0, 0, 0, 0, 0]
    for name, _ in PRE_TUNING:
        held = [r for r in rows if r["set"] == name]
        table = build_table([r for r in rows if r["set"] != name])
        before = [r for r in held if r["confidence"] >= DECIDED]
        after = [r for r in held if calibrated_confidence(r["confidence"], r["basis"], table)[0] >= DECIDED]
        b_ok, a_ok = sum(r["right"] for r in before), sum(r["right"] for r in after)
        lowered_right = sum(r["right"] for r in before if r not in after)
        print(f"{name:9} before {b_ok}/{len(before)} = {b_ok / max(1, len(before)):.1%}; "
              f"after {a_ok}/{len(after)} = {a_ok / max(1, len(after)):.1%}; "
              f"lowered {len(before) - len(after)} ({lowered_right} of them right)")
        for i, v in enumerate((b_ok, len(before), a_ok, len(after), lowered_right)):
            totals[i] += v
    b_ok, b_n, a_ok, a_n, low = totals
    print(f"all       before {b_ok}/{b_n} = {b_ok / b_n:.1%}; after {a_ok}/{a_n} = {a_ok / a_n:.1%}; "
          f"lowered {b_n - a_n} ({low} of them right)")


def main() -> None:
    """Rebuild the table, or print it, or the leave-one-set-out figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", action="store_true", help="print the per-basis table")
    parser.add_argument("--loso", action="store_true", help="leave-one-set-out figures")
    args = parser.parse_args()
    if args.table or args.loso:
        rows = read_outcomes()
        print_table(rows) if args.table else leave_one_set_out(rows)
        return
    rows = build_outcomes()
    OUTCOMES.parent.mkdir(parents=True, exist_ok=True)
    OUTCOMES.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows), encoding="utf-8")
    print(f"{len(rows)} rows -> {OUTCOMES.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
