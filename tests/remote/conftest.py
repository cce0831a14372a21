"""Fixtures for URL tests: a file server on 127.0.0.1, HF_ENDPOINT pointed at it, moto's S3."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.remote.server import FileServer

pytest.importorskip("fsspec")
pytest.importorskip("aiohttp")


@pytest.fixture(autouse=True)
def _fresh_remote(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test starts with no remembered URL and the default timeout."""
    from ckpttools.formats import remote

    for name in ("HF_TOKEN", "HF_HUB_OFFLINE", "CKPTTOOLS_HTTP_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    remote.clear()
    remote.COUNTERS.reset()
    timeout = remote.SETTINGS.timeout
    yield
    remote.SETTINGS.timeout = timeout
    remote.SETTINGS.whole_file_ok = False
    remote.clear()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[FileServer]:
    """A server over ``tmp_path / "www"``; a test writes its files there."""
    root = tmp_path / "www"
    root.mkdir()
    with FileServer(root) as srv:
        yield srv


@pytest.fixture
def hub(served: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FileServer:
    """``hf://`` URLs resolve to ``served`` (HF_ENDPOINT) with an empty cache of their own."""
    monkeypatch.setenv("HF_ENDPOINT", served.base)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no login token from the machine
    return served


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """moto's S3 on 127.0.0.1 for the whole session."""
    pytest.importorskip("s3fs")
    server_mod = pytest.importorskip("moto.server")
    port = _free_port()
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket; s3fs finds moto through AWS_ENDPOINT_URL."""
    import uuid

    import boto3

    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    bucket = f"ckpt-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=moto_endpoint).create_bucket(Bucket=bucket)
    return bucket


def upload(bucket: str, local: Path, key: str) -> None:
    """Put a file or a folder's files under ``key``."""
    import boto3

    client = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    files = [local] if local.is_file() else sorted(p for p in local.rglob("*") if p.is_file())
    for f in files:
        name = key if local.is_file() else f"{key}/{f.relative_to(local).as_posix()}"
        client.upload_file(str(f), bucket, name)
