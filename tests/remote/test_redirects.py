"""A file's URL that answers with a redirect (a model hub's ``resolve`` URL sends each LFS
file to a CDN host) is followed, as curl -L and every HTTP library do: it said "the server
sent nothing". The credentials stay with their host; a loop ends in one line, exit 2."""

from __future__ import annotations

from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from ckpttools.cli.main import cli
from tests.remote.server import FileServer, serving


class _Redirects(BaseHTTPRequestHandler):
    """``/hop/NAME`` -> 302 to the file server's ``NAME``; ``/loop/NAME`` -> 302 to itself."""

    target = ""

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        kind, _, name = self.path.lstrip("/").partition("/")
        self.send_response(302)
        self.send_header("Location", f"{self.target}/{name}" if kind == "hop" else self.path)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def redirector(served: FileServer) -> Iterator[str]:
    handler = type("Handler", (_Redirects,), {"target": served.base})
    with serving(handler) as base:
        yield base


@pytest.fixture
def files(served: FileServer) -> None:
    state = {"a.weight": torch.arange(12.0).reshape(3, 4), "a.bias": torch.ones(3)}
    torch.save(state, served.root / "m.pth")
    save_file(state, str(served.root / "m.safetensors"))


@pytest.mark.usefixtures("files")
@pytest.mark.parametrize("name", ["m.pth", "m.safetensors"])
@pytest.mark.parametrize("command", ["inspect", "scan", "audit"])
def test_a_redirected_file_is_read(runner: CliRunner, served: FileServer, redirector: str,
                                   name: str, command: str) -> None:
    direct = runner.invoke(cli, [command, served.url(name), "--format", "json"])
    hopped = runner.invoke(cli, [command, f"{redirector}/hop/{name}", "--format", "json"])
    assert hopped.exit_code == direct.exit_code == 0, hopped.stderr
    assert hopped.stderr == ""
    assert hopped.stdout.replace(f"{redirector}/hop/", "") == direct.stdout.replace(f"{served.base}/", "")


@pytest.mark.usefixtures("files")
def test_the_token_is_not_sent_to_the_redirect_host(runner: CliRunner, served: FileServer,
                                                    redirector: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CKPTTOOLS_HTTP_TOKEN", "secret")
    served.behaviour.token = "secret"  # the file's host would accept it: it must not get it
    result = runner.invoke(cli, ["inspect", f"{redirector}/hop/m.safetensors"])
    # a 401 from the file's host: the token stayed with the host it was set for
    assert result.exit_code == 2 and "access denied (HTTP 401)" in result.stderr
    assert served.log.requests  # the redirect was followed to the file's host


@pytest.mark.usefixtures("files")
@pytest.mark.parametrize("command", ["inspect", "scan", "audit", "diff"])
def test_a_redirect_loop_is_one_line(runner: CliRunner, redirector: str, command: str) -> None:
    url = f"{redirector}/loop/m.safetensors"
    result = runner.invoke(cli, [command, url] + ([url] if command == "diff" else []))
    assert result.exit_code == 2 and result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"ckpttools: error: {url}: more than 10 redirects")
