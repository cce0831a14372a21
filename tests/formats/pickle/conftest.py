"""What the pickle tests share: both hostile corpora and a clean file, written once per module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.hostile_corpus import build_hostile
from tests.malicious_corpus import build_corpus


@pytest.fixture(scope="module")
def corpora(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """name -> file: every hostile and malformed file, the classic malicious corpus and a clean
    torch.save file; fails the module if any pickle was executed (its canary file appears)."""
    root = tmp_path_factory.mktemp("corpora")
    canary = root / "CANARY"
    hostile, malformed = build_hostile(root / "files", canary)
    files = {**hostile, **malformed}
    for case in build_corpus(root / "classic", canary):
        files[f"classic-{case.name}"] = case.path
    clean = root / "clean.pth"
    torch.save({f"blocks.{i}.weight": torch.zeros(4) for i in range(500)}, clean)
    files["clean"] = clean
    yield files
    assert not canary.exists(), "a pickle was executed"
