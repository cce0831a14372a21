"""Start-up: a command imports its own modules only, and the collector setting the CLI uses for
its run is put back afterwards (tests and library callers run the CLI in their own process)."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from click.testing import CliRunner

from ckpttools.cli.main import COMMANDS, WORKFLOW, cli

ROOT = Path(__file__).resolve().parents[2]
PROBE = ("import json, sys\nfrom ckpttools.cli.main import main\nrc = main(sys.argv[1:])\n"
         "print(json.dumps({'rc': rc, 'modules': sorted(m for m in sys.modules "
         "if m.startswith('ckpttools.cli.') and m.endswith('_cmd'))}))")


def _run(*argv: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True,
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_command_imports_only_its_own_module(tmp_path: Path) -> None:
    path = tmp_path / "m.pth"
    torch.save({"w": torch.zeros(2)}, path)
    assert _run("diff", str(path), str(path)) == {"rc": 0, "modules": ["ckpttools.cli.diff_cmd"]}
    assert _run("scan", str(path)) == {"rc": 0, "modules": ["ckpttools.cli.scan_cmd"]}


def test_help_lists_every_command_in_workflow_order() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    listed = [line.split()[0] for line in result.output.split("Commands:")[1].splitlines()
              if line.startswith("  ") and not line.startswith("   ")]
    assert listed == list(WORKFLOW) == list(COMMANDS)


def test_collector_thresholds_are_restored() -> None:
    before = gc.get_threshold()
    for args in (["--version"], ["inspect", "/no/such/file.pth"], ["no-such-command"]):
        CliRunner().invoke(cli, args)
        assert gc.get_threshold() == before


def test_diagnose_from_files_does_not_import_the_text_parser(tmp_path: Path) -> None:
    """The error-text parser (its patterns are compiled on import) serves pasted text only."""
    path = tmp_path / "m.pth"
    torch.save({"module.w": torch.zeros(2)}, path)
    spec = tmp_path / "spec.py"
    spec.write_text("import torch\n\nclass M(torch.nn.Module):\n    def __init__(self):\n"
                    "        super().__init__()\n        self.w = torch.nn.Parameter(torch.zeros(2))\n")
    probe = PROBE.replace("m.startswith('ckpttools.cli.') and m.endswith('_cmd')",
                          "m.startswith('ckpttools.ops.diagnose.')")
    out = subprocess.run([sys.executable, "-c", probe, "diagnose", "--checkpoint", str(path),
                          "--model", f"{spec}:M"], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    modules = json.loads(out.stdout.strip().splitlines()[-1])["modules"]
    assert "ckpttools.ops.diagnose.diagnosis" in modules
    assert "ckpttools.ops.diagnose.error_text" not in modules
    assert "ckpttools.ops.diagnose.loader_formats" not in modules
