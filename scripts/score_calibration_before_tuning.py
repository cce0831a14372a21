"""Score each frozen set with the rules it was scored with before tuning, with and without today's
calibration pass (``ckpttools/ops/diagnose/calibration.py``).

The before-tuning rules are read from git (``git archive COMMIT ckpttools``) into a temporary
folder and run in a subprocess; the pass is loaded from this checkout and applied after their
``rank_findings``. This tells whether the pass carries to rules and texts it was not written
with: a confident answer it lowers was decided by those rules. Usage, from the repository root:

    python scripts/score_calibration_before_tuning.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "diagnose"
# (folder, the commit whose ckpttools/ scored it before tuning; see each folder's README)
BEFORE_TUNING = (("frozen", "8362996"), ("frozen2", "0104ca9"), ("frozen3", "13314b6"),
                 ("frozen4", "82aa56a"))

_RUNNER = r'''
import json, sys
from pathlib import Path
try:
    import ckpttools.ops.diagnose.diagnosis as dg
    import ckpttools.ops.diagnose.causes as causes
    evidence = "ckpttools.ops.diagnose.evidence"
except ImportError:  # the layout before ops/ was split into wings
    import ckpttools.ops.diagnose as dg
    import ckpttools.ops.causes as causes
    evidence = "ckpttools.ops.evidence"
calibration, folder, use_pass = sys.argv[1], Path(sys.argv[2]), sys.argv[3] == "1"
source = Path(calibration).read_text().replace("ckpttools.ops.diagnose.evidence", evidence)
for field in ("nothing_unexpected", "parallel"):  # evidence fields the old rules lack
    source = source.replace(f"ev.{field}", f"getattr(ev, {field!r}, False)")
ns = {"__name__": "calibration"}
exec(compile(source, calibration, "exec"), ns)
rank = causes.rank_findings
def calibrated(ev, *args, **kwargs):
    found = ns["calibrate"](ns["possible"](rank(ev, *args, **kwargs), ev), ev)
    order = {f.label: i for i, f in enumerate(found)}
    return sorted(found, key=lambda f: (-round(f.confidence, 3), order[f.label]))
if use_pass:
    dg.rank_findings = calibrated
out = []
for path in sorted(folder.glob("*.txt")):
    head, _, body = path.read_text(encoding="utf-8").partition("\n---\n")
    label = dict(line.split(": ", 1) for line in head.splitlines() if ": " in line)["label"]
    found = dg.diagnose_text(body).causes
    out.append([label, found[0].label if found else None, found[0].confidence if found else 0.0])
print(json.dumps(out))
'''


def _answers(old: Path, folder: Path, use_pass: bool) -> list[tuple[str, str | None, float]]:
    calibration = ROOT / "ckpttools" / "ops" / "diagnose" / "calibration.py"
    run = subprocess.run([sys.executable, "-c", _RUNNER, str(calibration), str(folder),
                          "1" if use_pass else "0"], env={"PYTHONPATH": str(old), "PATH": ""},
                         capture_output=True, text=True, check=True, cwd=old)
    return [tuple(a) for a in json.loads(run.stdout.splitlines()[-1])]


def _line(answers: list[tuple[str, str | None, float]]) -> tuple[str, int, int]:
    decided = [a for a in answers if a[2] >= 0.8]
    right = sum(a[0] == a[1] for a in decided)
    top1 = sum(a[0] == a[1] for a in answers)
    return (f"top-1 {top1}/{len(answers)}; right at >= 0.8 {right}/{len(decided)}; "
            f"abstention {len(answers) - len(decided)}/{len(answers)}", right, len(decided))


def main() -> None:
    """Print each frozen set's before-tuning score, and with the pass, and the totals."""
    totals = {False: [0, 0], True: [0, 0]}
    for name, commit in BEFORE_TUNING:
        with tempfile.TemporaryDirectory() as tmp:
            archive = subprocess.run(["git", "archive", commit, "ckpttools"], cwd=ROOT,
                                     capture_output=True, check=True).stdout
            subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
            for use_pass in (False, True):
                text, right, decided = _line(_answers(Path(tmp), DATA / name, use_pass))
                totals[use_pass][0] += right
                totals[use_pass][1] += decided
                print(f"{name} ({commit}){' + calibration' if use_pass else ''}: {text}")
    for use_pass, (right, decided) in totals.items():
        share = right / max(1, decided)
        print(f"all{' + calibration' if use_pass else ''}: right at >= 0.8 {right}/{decided} = {share:.1%}")


if __name__ == "__main__":
    main()
