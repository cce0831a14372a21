"""Where a URL's bytes come from (s3fs here, HTTP in ``remote_http``), the settings and counters
they share, and the one-line errors for what a server answers. ``remote.py`` builds seekable
files on top.

``http(s)://`` goes through fsspec's ``HTTPFileSystem`` session (aiohttp) or, for a plain URL's
few metadata reads and its read-ahead, ``http.client`` (``remote_light``); ``hf://ORG/REPO[@REV]/PATH``
is resolved with ``huggingface_hub`` (``HF_ENDPOINT``, the token from ``HF_TOKEN`` or the login,
the local cache for a commit revision) to its ``/resolve/`` URL, and ``s3://BUCKET/KEY`` goes
through ``s3fs`` (endpoint and credentials from the usual AWS settings).
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ckpttools.errors import CheckpointNotFoundError, UnreadableCheckpointError, UnsupportedError

PARALLEL = 4  # ranges in flight at once
LIGHT_MAX = 1 << 20  # a lone range up to this long goes over the light connection
AHEAD_BLOCK = 8 << 20  # a sequential reader's ranges: fewer requests, measured 1.2x faster than 2 MiB
INSTALL = "pip install 'ckpttools[remote]'"
_HF_URL = re.compile(r"hf://(?P<repo>[^/@]+/[^/@]+)(?:@(?P<rev>[^/]+))?/(?P<file>.+)")


@dataclass
class Settings:
    """Process-wide settings the CLI sets from its options."""

    timeout: float = 60.0
    # a command that reads the whole file anyway (convert) may stream it from a server
    # without Range support into a temporary file instead of refusing
    whole_file_ok: bool = False


@dataclass
class Counters:
    """Requests sent and body bytes received since the last ``reset``."""

    requests: int = 0
    bytes: int = 0

    def reset(self) -> None:
        self.requests = self.bytes = 0


SETTINGS = Settings()
COUNTERS = Counters()


def require(url: str, *modules: str) -> list[Any]:
    try:
        return [importlib.import_module(m) for m in modules]
    except ImportError as e:
        raise UnsupportedError(f"{url}: reading URLs needs the remote extra ({e.name} is missing); "
                               f"{INSTALL}") from e


def require_installed(url: str, *modules: str) -> None:
    """``require`` without importing: the extra is there, to be imported when first needed."""
    import importlib.util

    for m in modules:
        try:
            missing = m in sys.modules and sys.modules[m] is None or importlib.util.find_spec(m) is None
        except (ImportError, ValueError):
            missing = True
        if missing:
            raise UnsupportedError(f"{url}: reading URLs needs the remote extra ({m} is missing); "
                                   f"{INSTALL}")


# ---- where a URL's bytes come from ----------------------------------------------------------


@dataclass(frozen=True)
class HfFile:
    """A file of a Hugging Face repository."""

    repo: str
    revision: str
    filename: str


def parse_hf(url: str) -> HfFile:
    """Split ``hf://ORG/REPO[@REV]/PATH``.

    Raises:
        UnsupportedError: the URL does not have that shape.
    """
    m = _HF_URL.fullmatch(url)
    if m is None:
        raise UnsupportedError(f"{url}: not an hf:// URL of the form hf://ORG/REPO[@REVISION]/PATH; "
                               "name the file, e.g. hf://org/model/model.safetensors")
    return HfFile(m["repo"], m["rev"] or "main", m["file"])


def _http_target(url: str) -> tuple[str, dict[str, str]]:
    """The HTTP URL and headers that fetch ``url`` (hf:// resolved as huggingface_hub does)."""
    if not url.startswith("hf://"):
        token = os.environ.get("CKPTTOOLS_HTTP_TOKEN")
        return url, ({"Authorization": f"Bearer {token}"} if token else {})
    ref = parse_hf(url)
    (hub,) = require(url, "huggingface_hub")
    endpoint = os.environ.get("HF_ENDPOINT") or None
    http = hub.hf_hub_url(ref.repo, ref.filename, revision=ref.revision, endpoint=endpoint)
    token = hub.get_token()
    return http, ({"Authorization": f"Bearer {token}"} if token else {})


def _auth_hint(url: str) -> str:
    if url.startswith("hf://"):
        return "set HF_TOKEN or run `hf auth login` with a token that can read the repository"
    if url.startswith("s3://"):
        return "set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE for the bucket"
    return "set CKPTTOOLS_HTTP_TOKEN (sent as a Bearer token) or put user:password in the URL"


def _status_error(url: str, status: int) -> Exception | None:
    if status == 404:
        return CheckpointNotFoundError(f"{url}: not found (HTTP 404); check the URL, repository and revision")
    if status in (401, 403):
        return UnreadableCheckpointError(f"{url}: access denied (HTTP {status}); {_auth_hint(url)}")
    if status >= 400:
        return UnreadableCheckpointError(f"{url}: the server answered HTTP {status}; retry later "
                                         "or check the URL")
    return None


def _timeout_error(url: str) -> Exception:
    return UnreadableCheckpointError(f"{url}: no answer within {SETTINGS.timeout:g} s; check the "
                                     "server or raise --timeout")


def _truncated(url: str, got: int | None = None, want: int | None = None) -> Exception:
    where = f" after {got} of {want} bytes" if got is not None else " early"
    return UnreadableCheckpointError(f"{url}: the response ended{where} (truncated transfer); "
                                     "retry, or check the server")


class NoRangeError(UnsupportedError):
    """The server answers a ranged request with the whole file."""


def _no_range(url: str) -> Exception:
    return NoRangeError(f"{url}: the server ignores Range requests (it sent the whole file); "
                            "download the file and pass the local path")


class S3:
    """Ranges through s3fs (``cat_ranges`` runs them concurrently)."""

    def __init__(self, url: str) -> None:
        (s3fs,) = require(url, "s3fs")
        self.url = url
        self.fs = s3_filesystem(s3fs)
        self.path = url[len("s3://"):]
        self.size = -1

    def error(self, e: Exception) -> Exception:
        if isinstance(e, FileNotFoundError):
            return CheckpointNotFoundError(f"{self.url}: no such object; check the bucket and key")
        if isinstance(e, PermissionError):
            return UnreadableCheckpointError(f"{self.url}: access denied; {_auth_hint(self.url)}")
        if isinstance(e, TimeoutError):
            return _timeout_error(self.url)
        return UnreadableCheckpointError(f"{self.url}: cannot read ({e}); check the URL and credentials")

    def probe(self, n: int) -> bytes:
        try:
            COUNTERS.requests += 1
            self.size = int(self.fs.info(self.path)["size"])
        except Exception as e:  # s3fs raises many kinds (botocore, aiohttp, OSError)
            raise self.error(e) from e
        return self.fetch([(0, min(n, self.size))])[0] if self.size else b""

    def fetch(self, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        try:
            COUNTERS.requests += len(ranges)
            out = self.fs.cat_ranges([self.path] * len(ranges), [s for s, _ in ranges],
                                     [e for _, e in ranges], on_error="raise")
        except Exception as e:
            raise self.error(e) from e
        for (s, e), data in zip(ranges, out):
            COUNTERS.bytes += len(data)
            if len(data) != e - s:
                raise _truncated(self.url, len(data), e - s)
        return list(out)


S3_FS: dict[float, Any] = {}


def s3_filesystem(s3fs: Any) -> Any:
    t = SETTINGS.timeout
    if t not in S3_FS:
        S3_FS[t] = s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False,
                                      config_kwargs={"connect_timeout": t, "read_timeout": t,
                                                     "retries": {"max_attempts": 1}})
    return S3_FS[t]
