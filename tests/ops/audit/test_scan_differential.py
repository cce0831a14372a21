"""scan, inspect and audit against what ``torch.load`` really does with each hostile or
malformed file, run in a throwaway process with a canary (``tests/hostile_corpus.py``).

A file that executes under ``torch.load(weights_only=False)`` must be flagged (exit 1); a file
``torch.load(weights_only=True)`` refuses must never be "safe"; a malformed file exits 2. The
whole corpus runs under ``slow``; one file per family runs in the default suite.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from ckpttools.cli.main import cli
from ckpttools.ops.audit.scan import scan_file
from tests.hostile_corpus import TorchOracle, build_hostile
from tests.malicious_corpus import build_corpus

SUBSET = ("gadget-typing-eval-type", "gadget-torch-open-file", "parse-int-hex",
          "parse-string-non-ascii", "zip-case-data-pkl", "zip-local-central-mismatch",
          "legacy-sys-info", "legacy-tar-storages", "container-npy", "bad-cut-50", "bad-png",
          "bad-cut-central")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, Path],
                                                                        dict[str, Path], Path]]:
    root = tmp_path_factory.mktemp("hostile")
    canary = root / "CANARY"
    hostile, malformed = build_hostile(root / "files", canary)
    for case in build_corpus(root / "classic", canary):
        hostile[f"classic-{case.name}"] = case.path
    yield hostile, malformed, canary
    assert not canary.exists(), "ckpttools executed a pickle"


@pytest.fixture(scope="module")
def oracle(corpus: tuple[dict[str, Path], dict[str, Path], Path]) -> Iterator[TorchOracle]:
    o = TorchOracle(corpus[2])
    yield o
    o.close()


def _check(name: str, path: Path, malformed: bool, oracle: TorchOracle) -> dict[str, str]:
    verdict = scan_file(str(path)).safety
    executes = oracle.outcome(path, weights_only=False)
    restricted = oracle.outcome(path, weights_only=True)
    assert restricted != "executes", f"{name}: weights_only=True executed it"
    if executes == "executes":
        assert verdict in ("unsafe", "unknown"), f"{name}: torch runs it, scan says {verdict}"
    if restricted != "loads":
        assert verdict != "safe", f"{name}: torch refuses it ({restricted}), scan says safe"
    if malformed:
        assert verdict == "error", f"{name}: malformed, scan says {verdict}"
    else:
        assert verdict in ("unsafe", "unknown"), f"{name}: hostile, scan says {verdict}"
    return {"scan": verdict, "torch": executes, "weights_only": restricted}


def _cli_codes(path: Path) -> tuple[int, int, int]:
    runner = CliRunner()
    return tuple(runner.invoke(cli, [cmd, str(path)]).exit_code  # type: ignore[return-value]
                 for cmd in ("scan", "inspect", "audit"))


def test_one_file_per_family(corpus: tuple[dict[str, Path], dict[str, Path], Path],
                             oracle: TorchOracle) -> None:
    hostile, malformed, _ = corpus
    for name in SUBSET:
        is_bad = name in malformed
        _check(name, (malformed if is_bad else hostile)[name], is_bad, oracle)
        scan, inspect, audit = _cli_codes((malformed if is_bad else hostile)[name])
        assert scan == (2 if is_bad else 1), name
        assert inspect == (2 if is_bad else 1), name
        assert audit in (1, 2) and audit != 0, name


@pytest.mark.slow
def test_whole_corpus(corpus: tuple[dict[str, Path], dict[str, Path], Path],
                      oracle: TorchOracle) -> None:
    hostile, malformed, _ = corpus
    rows = {name: _check(name, path, False, oracle) for name, path in hostile.items()}
    rows |= {name: _check(name, path, True, oracle) for name, path in malformed.items()}
    executing = [n for n, r in rows.items() if r["torch"] == "executes"]
    assert len(executing) >= 60
    codes = {name: _cli_codes(path) for name, path in {**hostile, **malformed}.items()}
    assert all(codes[n][0] == 1 and codes[n][1] == 1 and codes[n][2] == 1 for n in executing)
    assert all(codes[n][0] == 2 and codes[n][1] == 2 for n in malformed)
