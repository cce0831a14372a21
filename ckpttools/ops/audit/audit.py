"""``audit PATH...``: gate checkpoints in CI. A row per check per file, PASS/WARN/FAIL with a
one-line reason: integrity, safety, finite, and on request model, completeness, policy and
reproducibility.

One process for every file; torch is imported once, and only by a check that reads tensor
data (finite) or builds a model.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ckpttools.errors import CkptError, CorruptCheckpointError, SpecError
from ckpttools.formats import fileio
from ckpttools.ops.audit.checks import CheckResult, check_completeness, check_model, check_policy
from ckpttools.formats.pickle.safety import is_torch_default
from ckpttools.formats.trainer import describe_trainer
from ckpttools.ops.audit.config import AuditConfig
from ckpttools.ops.audit.layout_checks import bookkeeping_keys, check_layout_completeness
from ckpttools.ops.audit.scan import ScanResult, expand_paths, scan_checkpoint
from ckpttools.units import plural

if TYPE_CHECKING:
    from ckpttools.formats.base import CheckpointReader
    from ckpttools.ops.audit.record_crcs import RecordCrcs
    from ckpttools.ops.model_spec import ModelSignature

CHECKS = ("integrity", "safety", "finite", "model", "completeness", "policy", "reproducibility")
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl")


@dataclass(frozen=True)
class AuditResult:
    """Every check of every file.

    Attributes:
        checks: one row per file and check, files in the order given, checks in ``CHECKS`` order.
        config_file: the pyproject.toml / setup.cfg the settings came from, if any.
        manifest_written: the manifest path when this run wrote it (it did not exist).
    """

    checks: tuple[CheckResult, ...]
    config_file: str | None = None
    manifest_written: str | None = None

    @property
    def ok(self) -> bool:
        """True when no check failed (WARN passes)."""
        return not any(c.status == "FAIL" for c in self.checks)

    @property
    def files(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(c.path for c in self.checks))

    def counts(self) -> dict[str, int]:
        return {s: sum(c.status == s for c in self.checks) for s in ("PASS", "WARN", "FAIL", "SKIP")}

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "counts": self.counts(), "files": list(self.files),
                "config_file": self.config_file, "manifest_written": self.manifest_written,
                "checks": [c.to_dict() for c in self.checks]}


def _size(path: str) -> int:
    if fileio.is_url(path):
        return fileio.getsize(path) if not fileio.isdir(path) else sum(
            fileio.getsize(fileio.join(path, n)) for n in fileio.listdir(path))
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(r, n)) for r, _, ns in os.walk(path) for n in ns)


def _safety(path: str, scan: ScanResult, allow_unknown: bool) -> CheckResult:
    unsafe = sorted({g.qualname for f in scan.files for p in f.pickles for g in p.globals
                     if g.safety == "unsafe"})
    findings = [x.message for f in scan.files for p in f.pickles for x in p.findings
                if x.safety == "unsafe"]
    unknown = sorted({g.qualname for f in scan.files for p in f.pickles for g in p.globals
                      if g.safety == "unknown"})
    errors = [f"{f.path}: {f.error}" for f in scan.files if f.safety == "error"]
    pickles = sum(len(f.pickles) for f in scan.files)
    if unsafe or findings:
        what = ", ".join(unsafe) or findings[0]
        return CheckResult(path, "safety", "FAIL", f"pickle can run code: {what}",
                           tuple(unsafe + findings))
    if errors:
        return CheckResult(path, "safety", "FAIL", f"pickle could not be read: {errors[0]}",
                           tuple(errors))
    if unknown:
        return CheckResult(path, "safety", "WARN" if allow_unknown else "FAIL",
                           f"not proven safe: {', '.join(unknown[:4])}"
                           + (f" and {len(unknown) - 4} more" if len(unknown) > 4 else "")
                           + "; allow them with allow-globals or --allow if you trust them",
                           tuple(unknown))
    if not pickles:
        return CheckResult(path, "safety", "PASS", "no pickle; nothing can execute")
    # allowlisted records torch's weights_only unpickler refuses by default (numpy arrays);
    # only torch.save files are read by torch.load (DCP unpickles its .metadata itself)
    torch_files = [f for f in scan.files if f.kind in ("torch-zip", "torch-legacy")]
    extra = sorted({g.qualname for f in torch_files for p in f.pickles for g in p.globals
                    if not is_torch_default(g.module, g.name)})
    if any(f.pickles and f not in torch_files for f in scan.files) and not extra:
        return CheckResult(path, "safety", "PASS",
                           f"{plural(pickles, 'pickle')}, only allowlisted globals")
    if extra:
        return CheckResult(path, "safety", "PASS", f"{plural(pickles, 'pickle')}, only allowlisted "
                           f"globals; torch.load(weights_only=True) needs add_safe_globals for "
                           f"{', '.join(extra[:3])}" + (" ..." if len(extra) > 3 else ""),
                           tuple(extra))
    return CheckResult(path, "safety", "PASS", f"{plural(pickles, 'pickle')}, only globals torch "
                       "weights_only allows")


def _zip_records_complete(path: str, crcs: RecordCrcs | None = None) -> str | None:
    """Every record's local header is intact, its data lies inside the file and, in a local
    file, matches the CRC-32 the zip records for it.

    With ``crcs``, the CRC-32s are left in it for the finite pass and ``check_rest`` to check,
    unless a problem is found: then the whole check runs again in directory order, CRC-32s
    included, so that the problem reported is the first one, as without ``crcs``.
    """
    problem = _zip_records_complete_once(path, crcs)
    if problem and crcs is not None:
        crcs.pending.clear()
        return _zip_records_complete_once(path, None)
    return problem


def _zip_records_complete_once(path: str, crcs: RecordCrcs | None) -> str | None:
    from ckpttools.entries import RawSource
    from ckpttools.formats import zip_records as zr
    from ckpttools.formats.writers.bytecopy import SourceFiles, crc_of_range

    files = SourceFiles()
    with fileio.open_binary(path) as f:
        size = zr.file_size(f)
        try:
            records = zr.read_directory(f, size).values()
            if hasattr(f, "prefetch_windows"):  # a URL: every local header in one request
                f.prefetch_windows([(r.header_offset, r.header_offset + zr.LOCAL_HEADER_SIZE)
                                    for r in records])
            for rec in records:
                start = zr.data_offset(f, rec)
                if start + rec.compress_size > size:
                    return f"record {rec.name} runs past the end of the file (truncated)"
                # torch writes each record's CRC-32 (0 when disabled) and never checks it
                stored = RawSource(path, start, rec.compress_size)
                if not rec.crc or rec.method != 0 or fileio.is_url(path):
                    continue
                if crcs is not None and crcs.add(start, rec.compress_size, rec.crc):
                    continue  # checked on the finite pass's reads, or by check_rest
                if crc_of_range(files, stored) != rec.crc:
                    return f"record {rec.name} fails the CRC-32 the zip records (damaged data)"
        except (zr.ZipError, ValueError) as e:
            return str(e)
        finally:
            files.close()
    return None


def _integrity(path: str, crcs: RecordCrcs | None = None
               ) -> tuple[CheckResult, CheckpointReader | None]:
    """The integrity row and the open reader (None when the row FAILs). With ``crcs``, a torch
    zip's record CRC-32s are left in it to check later (``_crc_failure``), unless the row FAILs
    here: then they are checked first, and a damaged record is the reason, as without them."""
    from ckpttools.formats.base import Format
    from ckpttools.formats.registry import detect_format, open_checkpoint

    try:
        fmt = detect_format(path)
        if fmt is Format.TORCH_ZIP and (problem := _zip_records_complete(path, crcs)):
            raise CorruptCheckpointError(f"{path}: {problem}")
        reader = open_checkpoint(path, format=fmt)
        n = len(reader.entries())
    except CkptError as e:
        return _crc_failure(path, crcs) or CheckResult(path, "integrity", "FAIL",
                                                       str(e).removeprefix(f"{path}: ")), None
    except Exception:
        if failed := _crc_failure(path, crcs):
            return failed, None
        raise
    if path.endswith(".safetensors") and fmt is not Format.SAFETENSORS:
        reader.close()
        return _crc_failure(path, crcs) or CheckResult(
            path, "integrity", "FAIL", f"named .safetensors but holds {fmt.value} (a pickle); "
            "do not trust the extension"), None
    if path.endswith(PICKLE_SUFFIXES) and fmt is Format.SAFETENSORS:
        return CheckResult(path, "integrity", "WARN", f"safetensors file named "
                           f"{os.path.splitext(path)[1]}; {plural(n, 'entry', 'entries')} read"), reader
    unchecked = "; record CRC-32s not read over a URL" if fmt is Format.TORCH_ZIP \
        and fileio.is_url(path) else ""
    return CheckResult(path, "integrity", "PASS",
                       f"{fmt.value}, {plural(n, 'entry', 'entries')} read{unchecked}"), reader


def _crc_failure(path: str, crcs: RecordCrcs | None) -> CheckResult | None:
    """The integrity FAIL of a zip whose records the integrity check left to ``crcs``, when
    one of them is damaged: the first problem in directory order (the whole check again)."""
    if crcs is None or not (crcs.pending or crcs.damaged):
        return None
    crcs.pending.clear()
    problem = _zip_records_complete(path)
    return CheckResult(path, "integrity", "FAIL", problem) if problem else None


def sha256_file(path: str) -> str:
    """Hex sha256 of a file, read in 4 MiB blocks."""
    h = hashlib.sha256()
    with fileio.open_binary(path) as f:
        buf = bytearray(4 << 20)
        view = memoryview(buf)
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def _norm(path: str) -> str:
    return path if fileio.is_url(path) else os.path.normpath(path)


def _hashes(path: str) -> dict[str, str]:
    if fileio.is_url(path):
        names = fileio.listdir(path) if fileio.isdir(path) else None
        return ({path: sha256_file(path)} if names is None
                else {fileio.join(path, n): sha256_file(fileio.join(path, n)) for n in names})
    if os.path.isfile(path):
        return {path: sha256_file(path)}
    return {os.path.join(r, n): sha256_file(os.path.join(r, n))
            for r, _, ns in sorted(os.walk(path)) for n in sorted(ns)}


def _reproducibility(path: str, digests: dict[str, str], known: dict[str, str] | None) -> CheckResult:
    if known is None:
        return CheckResult(path, "reproducibility", "PASS", f"sha256 recorded for {plural(len(digests), 'file')}")
    bad = [f"{p}: sha256 {d[:12]} differs from the manifest's {known[p][:12]}"
           for p, d in digests.items() if p in known and known[p] != d]
    absent = [f"{p}: not in the manifest" for p in digests if p not in known]
    if bad or absent:
        return CheckResult(path, "reproducibility", "FAIL", (bad + absent)[0], tuple(bad + absent))
    return CheckResult(path, "reproducibility", "PASS", f"sha256 matches the manifest ({plural(len(digests), 'file')})")


def _load_manifest(manifest: str) -> dict[str, str] | None:
    if not os.path.exists(manifest):
        return None
    try:
        with open(manifest, encoding="utf-8") as f:
            files = json.load(f).get("files", {})
        return {os.path.normpath(k): str(v) for k, v in files.items()}
    except (OSError, ValueError, AttributeError) as e:
        raise SpecError(f"{manifest}: not a ckpttools manifest ({e}); remove it to rewrite it") from e


def _write_manifest(manifest: str, digests: dict[str, str]) -> None:
    from ckpttools.formats.writers.atomic import atomic_output

    with atomic_output(manifest) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump({"algorithm": "sha256", "files": dict(sorted(digests.items()))}, f, indent=2)
        f.write("\n")


def _signature(config: AuditConfig, model: Any) -> ModelSignature | None:
    if model is not None:
        from ckpttools.ops.model_spec import ModelSignature, signature_of_model

        return model if isinstance(model, ModelSignature) else signature_of_model(model)
    if config.model is None:
        return None
    from ckpttools.ops.model_spec import load_model_signature, parse_model_args

    return load_model_signature(config.model, parse_model_args(config.model_args))


def _skip(path: str, checks: Iterable[str]) -> list[CheckResult]:
    return [CheckResult(path, c, "SKIP", "not run: the file failed its integrity check")
            for c in checks]


def _audit_one(path: str, config: AuditConfig, sig: ModelSignature | None, model_name: str,
               on_progress: Callable[[int], None] | None) -> list[CheckResult]:
    from ckpttools.ops.audit.record_crcs import RecordCrcs

    # the scan first: the reader then reuses its walk of the same pickle instead of walking again
    scan = scan_checkpoint(path, allow=config.allow_globals)
    # the records' CRC-32s are checked on the finite pass's reads of the same bytes
    crcs = None if fileio.is_url(path) else RecordCrcs(path)
    integrity, reader = _integrity(path, crcs)
    rows = [integrity, _safety(path, scan, config.allow_unknown)]
    later = ["finite"] + (["model"] if sig else []) + (["completeness"] if config.require else [])
    later += ["policy"] if config.dtype or config.max_size is not None else []
    if reader is None:
        return rows + _skip(path, later)
    try:
        rows += _checks_of_reader(path, reader, config, sig, model_name, on_progress, crcs)
    except Exception as e:  # a damaged record the finite pass read before its CRC-32 was checked
        if failed := _crc_failure(path, crcs):
            return [failed, rows[1]] + _skip(path, later)
        if not isinstance(e, CorruptCheckpointError):
            raise
        # damage met reading the data (a DCP item cut short)
        rows[0] = CheckResult(path, "integrity", "FAIL", str(e).removeprefix(f"{path}: "))
        return rows[:2] + _skip(path, later)
    if crcs is not None and not crcs.check_rest() and (failed := _crc_failure(path, crcs)):
        return [failed, rows[1]] + _skip(path, later)
    return rows


def _checks_of_reader(path: str, reader: CheckpointReader, config: AuditConfig,
                      sig: ModelSignature | None, model_name: str,
                      on_progress: Callable[[int], None] | None,
                      crcs: RecordCrcs | None) -> list[CheckResult]:
    """The checks after integrity and safety, on the open reader (closed on return)."""
    from ckpttools.ops.audit.finite import check_finite

    rows: list[CheckResult] = []
    with reader:
        layout = describe_trainer(reader)
        rows.append(check_finite(reader, allow_nonfinite=config.allow_nonfinite,
                                 on_progress=on_progress, only=config.key,
                                 exclude=bookkeeping_keys(layout), record_crcs=crcs))
        if sig is not None:
            rows.append(check_model(reader, sig, config.key, model_name))
        if config.require and layout is not None:
            rows.append(check_layout_completeness(reader, layout, config.require, sig))
        elif config.require:
            rows.append(check_completeness(reader, config.require, sig))
        if config.dtype or config.max_size is not None:
            rows.append(check_policy(reader, _size(path), config.dtype, config.max_size))
    return rows


def audit_checkpoints(paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
                      config: AuditConfig | None = None, *, model: Any = None,
                      config_file: str | None = None,
                      on_progress: Callable[[int], None] | None = None) -> AuditResult:
    """Audit checkpoints: integrity, safety, finiteness, and what ``config`` asks for.

    Args:
        paths: files, folders (searched recursively; a DCP, sharded or trainer folder such as
            an HF Trainer ``checkpoint-N`` or a DeepSpeed ZeRO folder is one checkpoint) or globs.
        config: settings (``AuditConfig``); ``load_settings`` reads them from pyproject/setup.cfg.
        model: an ``nn.Module`` or ``ModelSignature`` for the model check (overrides
            ``config.model``).
        config_file: where ``config`` came from, for the report.
        on_progress: called with bytes of tensor data checked.

    Returns:
        One ``CheckResult`` per file and check; ``ok`` is false when any check failed.

    Raises:
        CheckpointNotFoundError: a path matches nothing.
        SpecError: the model spec or the manifest cannot be used.

    Example:
        >>> result = ckpttools.audit_checkpoints(["ckpt/"], AuditConfig(require=("optimizer",)))
        >>> [(c.check, c.status) for c in result.checks][:3]
        [('integrity', 'PASS'), ('safety', 'PASS'), ('finite', 'PASS')]
    """
    config = config or AuditConfig()
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files = [_norm(p) for p in expand_paths(paths, folders_whole=True)]
    sig = _signature(config, model)
    known = _load_manifest(config.manifest) if config.manifest else None
    rows: list[CheckResult] = []
    digests: dict[str, str] = {}
    for path in files:
        rows += _audit_one(path, config, sig, config.model or "", on_progress)
        if config.manifest:
            mine = {_norm(p): d for p, d in _hashes(path).items()}
            digests.update(mine)
            rows.append(_reproducibility(path, mine, known))
    written = None
    if config.manifest and known is None:
        _write_manifest(config.manifest, digests)
        written = config.manifest
    order = {c: i for i, c in enumerate(CHECKS)}
    rows.sort(key=lambda c: (files.index(c.path), order[c.check]))
    return AuditResult(tuple(rows), config_file, written)
