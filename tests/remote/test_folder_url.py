"""A folder's URL on a plain HTTP server (Python's ``http.server``, as nginx does) is answered
with an empty ``301`` to ``url/``: the error said "empty file; it holds no checkpoint" of a
folder holding one. It now says what it cannot tell and what works."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from ckpttools.cli.main import cli
from tests.remote.server import serving


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def stdlib_server(tmp_path: Path) -> Iterator[str]:
    handler = functools.partial(_Quiet, directory=str(tmp_path))
    with serving(handler) as base:
        yield base


def test_dcp_folder_url(tmp_path: Path, stdlib_server: str) -> None:
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "assuming the intent is to save in a single process"
        dcp.save({"w": torch.ones(3)}, storage_writer=dcp.FileSystemWriter(str(tmp_path / "ckpt")),
                 no_dist=True)
    result = CliRunner().invoke(cli, ["inspect", f"{stdlib_server}/ckpt"])
    assert result.exit_code == 2 and result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert "empty file; it holds no checkpoint" not in line
    assert "a folder: HTTP has no listing, so folders work over s3:// only" in line
