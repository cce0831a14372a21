"""Start-up: a command imports its own modules only, and the collector setting the CLI uses for
its run is put back afterwards (tests and library callers run the CLI in their own process)."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
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


# Runs the commands one after the other in this fresh process and prints, for each, its exit
# code and which of the named modules are loaded once it has run.
LOADED = ("import json, sys\nimport torch\nfrom ckpttools.cli.main import main\nreport = []\n"
          "for argv, names in json.loads(sys.argv[1]):\n"
          "    rc = main(argv)\n"
          "    report.append([rc, sorted(n for n in names if n in sys.modules)])\n"
          "print(json.dumps(report))")


def _loaded(runs: list[tuple[list[str], list[str]]]) -> list[list]:
    out = subprocess.run([sys.executable, "-c", LOADED, json.dumps(runs)], capture_output=True,
                         text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                         timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_model_commands_import_only_what_their_report_needs(tmp_path: Path) -> None:
    """A clean ``diff --model`` does not import the A-B comparison, a clean ``diagnose
    --checkpoint`` not the cause rules, an ``audit`` table not the XML and SARIF renderers."""
    spec = tmp_path / "net.py"
    spec.write_text("from torch import nn\n\n\nclass Net(nn.Sequential):\n"
                    "    def __init__(self):\n        super().__init__(nn.Linear(4, 3), nn.LayerNorm(3))\n")
    torch.manual_seed(0)
    ckpt = tmp_path / "net.pth"
    torch.save(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3)).state_dict(), ckpt)
    model = ["--model", f"{spec}:Net"]
    report = _loaded([
        (["diff", str(ckpt), *model], ["ckpttools.ops.diff.pair", "ckpttools.ops.diff.pair_result",
                                       "ckpttools.ops.object_graph"]),
        (["diagnose", "--checkpoint", str(ckpt), *model],
         ["ckpttools.ops.diagnose.causes", "ckpttools.ops.diagnose.fixes"]),
        (["audit", str(ckpt), *model], ["xml.etree.ElementTree", "ckpttools.render.sarif"]),
    ])
    assert report == [[0, []], [0, []], [0, []]]


def test_diff_of_two_files_does_not_import_the_model_side(tmp_path: Path) -> None:
    path = tmp_path / "m.pth"
    torch.save({"w": torch.zeros(2)}, path)
    report = _loaded([(["diff", str(path), str(path)],
                       ["ckpttools.ops.model_diff", "ckpttools.ops.fix_plan",
                        "ckpttools.ops.comparison", "ckpttools.ops.model_spec"])])
    assert report == [[0, []]]


# Prints, at exit, whether the objects were frozen when the process ended (atexit handlers run
# after the entry point's sys.exit).
AT_EXIT = ("import atexit, gc, sys\n"
           "atexit.register(lambda: print('frozen', gc.get_freeze_count() > 0, flush=True))\n")


@pytest.mark.parametrize("entry", [
    "import runpy\nsys.argv = ['ckpttools', '--version']\nrunpy.run_module('ckpttools', run_name='__main__')",
    "from ckpttools.cli.main import cli\ncli(['--version'])",
], ids=["python-m", "console-script"])
def test_a_process_entry_point_freezes_its_objects_before_exit(entry: str) -> None:
    """The exit-time collections would walk every object torch created; the entry points
    collect once and freeze instead. ``atexit`` handlers still run."""
    out = subprocess.run([sys.executable, "-c", AT_EXIT + entry], capture_output=True, text=True,
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-2:] == ["ckpttools, version 0.1.0", "frozen True"]


def test_in_process_callers_keep_their_collector_unfrozen(tmp_path: Path) -> None:
    from ckpttools.cli.main import main

    path = tmp_path / "m.pth"
    torch.save({"w": torch.zeros(2)}, path)
    assert CliRunner().invoke(cli, ["inspect", str(path)]).exit_code == 0
    assert main(["--version"]) == 0
    assert gc.get_freeze_count() == 0


def test_inspect_of_a_torch_zip_imports_no_archive_or_compression_module(tmp_path: Path) -> None:
    """A torch zip is read through ``zip_records``: ``zipfile`` (and the ``shutil``, ``bz2``
    and ``lzma`` it brings), ``tarfile`` and ``gzip`` are imported only for the files that
    need them (a compressed record, a legacy tar, a compressed pickle). JSON output: the
    table renderer's ``tabulate`` imports ``importlib.metadata``, and with it ``zipfile``."""
    path = tmp_path / "m.pth"
    torch.save({"w": torch.zeros(2), "b": torch.ones(3)}, path)
    names = ["zipfile", "shutil", "tarfile", "lzma", "bz2", "gzip"]
    probe = PROBE.replace("m.startswith('ckpttools.cli.') and m.endswith('_cmd')",
                          f"m in {names!r}")
    for argv in (["inspect", str(path), "--format", "json"], ["scan", str(path), "--format", "json"]):
        out = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True,
                             cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout.strip().splitlines()[-1]) == {"rc": 0, "modules": []}
