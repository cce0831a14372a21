"""A DCP folder's non-tensor values are pickles of their own (torch.save blobs in the .distcp
files): their globals are the reader's globals too, so ``inspect --format json`` lists a value
that runs code, not only ``.metadata``'s harmless classes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from ckpttools.formats.registry import open_checkpoint
from ckpttools.ops.inspect import inspect_checkpoint

WRITE = """
import os, torch, torch.distributed.checkpoint as dcp

class Evil:
    def __reduce__(self):
        return (os.system, ("touch CANARY",))

dcp.save({"w": torch.ones(2), "step": 3, "evil": Evil()}, checkpoint_id="ckpt")
"""


def test_a_value_that_runs_code_is_among_the_globals(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(WRITE)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    with open_checkpoint(tmp_path / "ckpt") as reader:
        unsafe = [g.qualname for g in reader.pickle_globals() if g.safety == "unsafe"]
        result = inspect_checkpoint(reader).to_dict()
    assert unsafe and unsafe[0].endswith(".system")
    assert any(g["safety"] == "unsafe" for g in result["globals"])
    assert result["weights_only_hint"] is None
    assert not (tmp_path / "CANARY").exists()
