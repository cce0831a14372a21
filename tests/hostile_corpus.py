"""Hostile and malformed files beyond ``malicious_corpus``: the families of ckpttools#14.

Every payload only creates ``canary`` (a file path); a run under ``torch.load`` executes the file
exactly when the canary appears. Where each family comes from:

- ``gadget-*``: callables outside classic denylists that run code or write files, the class of
  picklescan's 2025-2026 advisories (fixes in mmaitre314/picklescan#47, #49, #53 and #65, e.g.
  GHSA-vvpj-8cmc-gx39, GHSA-7wx9-6375-f5wh; the JFrog write-up GHSA-gx77-x2pv-48v7; the argument
  that any denylist stays bypassable in mmaitre314/picklescan#66; trailofbits/fickling#190). The
  individual callables are the ones ckpttools#14 lists.
- ``zip-*``: archives that readers resolve differently: picklescan GHSA-w8jq-xcqf-f792 and
  GHSA-7q5r-7gvp-wc82 (zip structure that crashes a scanner but not torch, protectai/modelscan#263),
  duplicate member names (google/saferpickle#42, promptfoo/modelaudit#1408), non-standard record
  names (picklescan GHSA-769v-p64c-89pr); the case-insensitive ``DATA.PKL`` lookup is miniz's.
- ``legacy-*``: the layouts torch/serialization.py ``_legacy_load`` still unpickles: the tar's
  ``storages`` member and the ``sys_info`` pickle of the five-pickle layout.
- ``parse-*``: arguments ``pickletools`` reads differently from the C unpickler (``INT`` through
  ``strtol(s, 0)``, ``LONG`` through ``int(s, 0)``, non-ASCII ``STRING``, ``FLOAT`` up to a NUL), the
  class of picklescan GHSA-9gvj-pp9x-gcfr ("pickle parsing logic flaw", mmaitre314/picklescan#46)
  and trailofbits/fickling#139; many pickles back to back (mmaitre314/picklescan#9).
- ``container-*``: other loaders' containers: gzip/bz2/xz pickles (joblib, ``pandas.read_pickle``),
  ``.npy``/``.npz`` object arrays (``numpy.load(allow_pickle=True)``, CVE-2019-6446), pickles in zip
  entries detected by content (promptfoo/modelaudit#624), and a pickle whose first bytes read as a
  safetensors header (ckpttools#14).
- ``bad-*``: truncated and corrupt files that torch refuses; they must exit 2, never "safe".
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import pickle
import tarfile
import zipfile
from pathlib import Path
from typing import Any

from tests.malicious_corpus import Payload


def _s(text: str) -> bytes:
    raw = text.encode()
    return b"X" + len(raw).to_bytes(4, "little") + raw  # BINUNICODE


def _call(module: str, name: str, *args: bytes) -> bytes:
    """A protocol-2 body calling ``module.name(*args)`` (args already encoded)."""
    return (b"c" + module.encode() + b"\n" + name.encode() + b"\n(" + b"".join(args)
            + b"tR")


def gadgets(canary: Path) -> dict[str, bytes]:
    """One pickle per gadget; each creates ``canary`` when unpickled."""
    c = str(canary)
    code = f"open({c!r}, 'w').close()"
    none = b"N"
    fwd = b"ctyping\nForwardRef\n(" + _s(code) + b"tR"
    return {
        "typing-eval-type": _call("typing", "_eval_type", fwd, none, none),
        "dataclasses-create-fn": _call("dataclasses", "_create_fn", _s("f"),
                                       b"(" + _s(f"x={code}") + b"l", b"(" + _s("pass") + b"l"),
        "sympy-sympify": _call("sympy", "sympify", _s(f"__import__('builtins').exec({code!r})")),
        "numpy-savetxt": _call("numpy", "savetxt", _s(c), b"(K\x01l"),
        "numpy-memmap": _call("numpy", "memmap", _s(c), _s("uint8"), _s("w+"), b"K\x00",
                              b"K\x01\x85"),
        "codecs-open": _call("codecs", "open", _s(c), _s("w")),
        "gzip-open": _call("gzip", "open", _s(c), _s("wb")),
        "bz2-open": _call("bz2", "open", _s(c), _s("wb")),
        "lzma-open": _call("lzma", "open", _s(c), _s("wb")),
        "sqlite3-connect": _call("sqlite3", "connect", _s(c)),
        "wave-open": _call("wave", "open", _s(c), _s("wb")),
        "torch-save": _call("torch", "save", b"K\x01", _s(c)),
        "torch-open-file": _call("torch.serialization", "_open_file", _s(c), _s("wb")),
        "torch-from-file": _call("torch", "from_file", _s(c), b"\x88", b"K\x01"),
        "elastic-subprocess": _call(
            "torch.distributed.elastic.multiprocessing.subprocess_handler.subprocess_handler",
            "SubprocessHandler", _s("touch"), b"(" + _s(c) + b"t", b"}", _s("/dev/null"),
            _s("/dev/null"), b"K\x00N"),
        "script-helper": _call("test.support.script_helper", "assert_python_ok", _s("-c"),
                               _s(code)),
        "networkx-write": _call("networkx", "write_adjlist",
                                b"cnetworkx\nGraph\n)R", _s(c)),
        "mailbox-mbox": _call("mailbox", "mbox", _s(c)) + b"0" + b"N",
    }


def _zip(path: Path, records: list[tuple[str, bytes]]) -> Path:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names are the point
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
            for name, data in records:
                z.writestr(name, data)
    return path


def _torch_records(tmp: Path, state: Any) -> list[tuple[str, bytes]]:
    import torch

    torch.save(state, tmp)
    with zipfile.ZipFile(tmp) as z:
        out = [(i.filename, z.read(i.filename)) for i in z.infolist()]
    tmp.unlink()
    return out


def zip_families(dest: Path, canary: Path) -> dict[str, Path]:
    """Archives that tools read differently; torch runs the payload in each."""
    import torch

    evil = pickle.dumps({"w": Payload(os.system, f"touch {canary}")}, protocol=2)
    good = _torch_records(dest / "_good.pt", {"w": torch.zeros(2)})
    out: dict[str, Path] = {}
    first = [(n, evil if n.endswith("data.pkl") else d) for n, d in good]
    dup = first + [(n, d) for n, d in good if n.endswith("data.pkl")]
    out["zip-duplicate-data-pkl"] = _zip(dest / "zip-duplicate.pt", dup)
    upper = [(n.replace("data.pkl", "DATA.PKL"), evil if n.endswith("data.pkl") else d)
             for n, d in good]
    out["zip-case-data-pkl"] = _zip(dest / "zip-case.pt", upper)
    benign = _zip(dest / "_benign.pt", good).read_bytes()
    malicious = _zip(dest / "_evil.pt", first).read_bytes()
    (dest / "_benign.pt").unlink()
    (dest / "_evil.pt").unlink()
    stacked = dest / "zip-stacked.pt"
    stacked.write_bytes(benign + malicious)
    out["zip-stacked"] = stacked
    nested = _zip(dest / "zip-nested.pt", good + [("archive/inner.pt", malicious)])
    out["zip-nested"] = nested
    mismatch = bytearray(malicious)
    at = mismatch.find(b"data.pkl")
    mismatch[at:at + 8] = b"dat4.pkl"  # the local header names another record
    out["zip-local-central-mismatch"] = dest / "zip-mismatch.pt"
    out["zip-local-central-mismatch"].write_bytes(bytes(mismatch))
    return out


def legacy_families(dest: Path, canary: Path) -> dict[str, Path]:
    """The legacy layouts with a payload where torch still unpickles it."""
    import torch

    good = dest / "_legacy.pt"
    torch.save({"w": torch.zeros(2)}, good, _use_new_zipfile_serialization=False)
    data = good.read_bytes()
    good.unlink()
    magic = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)
    version = pickle.dumps(1001, protocol=2)
    rest = data[len(magic) + len(version):]
    sys_info_len = len(pickle.dumps(pickle.loads(rest), protocol=2))
    evil = pickle.dumps(Payload(os.system, f"touch {canary}"), protocol=2)
    out = {"legacy-sys-info": dest / "legacy-sys-info.pt"}
    out["legacy-sys-info"].write_bytes(magic + version + evil + rest[sys_info_len:])
    tar_path = dest / "legacy-tar-storages.tar"
    with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, blob in (("sys_info", pickle.dumps({}, 2)), ("storages", evil),
                           ("tensors", pickle.dumps(0, 2)), ("pickle", pickle.dumps({}, 2))):
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    out["legacy-tar-storages"] = tar_path
    return out


def parse_families(canary: Path) -> dict[str, bytes]:
    """Pickles whose payload follows an argument ``pickletools`` reads differently."""
    call = b"cos\nsystem\n(V" + f"touch {canary}".encode() + b"\ntR"
    return {
        "parse-int-hex": b"I0x10\n0" + call + b".",
        "parse-int-octal-nul": b"I010\x00x\n0" + call + b".",
        "parse-long-base0": b"L0x1fL\n0" + call + b".",
        "parse-string-non-ascii": b"S'\xc3\xa9t\xc3\xa9'\n0" + call + b".",
        "parse-float-nul": b"F1.5\x00junk\n0" + call + b".",
        "parse-many-pickles": pickle.dumps(1, 2) * 10_000 + b"\x80\x02" + call + b".",
    }


def container_families(dest: Path, canary: Path) -> dict[str, Path]:
    """Pickles inside containers that other loaders open."""
    import numpy as np

    evil = pickle.dumps(Payload(os.system, f"touch {canary}"), protocol=2)
    out: dict[str, Path] = {}
    for kind, opener in (("gzip", gzip.compress), ("bz2", bz2.compress), ("xz", lzma.compress)):
        out[f"container-{kind}"] = dest / f"container.pkl.{kind}"
        out[f"container-{kind}"].write_bytes(opener(evil))
    arr = np.empty(1, dtype=object)
    arr[0] = Payload(os.system, f"touch {canary}")
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=True)
    out["container-npy"] = dest / "container.npy"
    out["container-npy"].write_bytes(buf.getvalue())
    out["container-npz"] = _zip(dest / "container.npz", [("a.npy", buf.getvalue())])
    # a pickle whose first 8 bytes read as a header length and whose 9th byte is "{"
    looks = b"\x80\x02\x8c\x08abcd{efg0" + evil[2:]
    out["container-safetensors-lookalike"] = dest / "container.safetensors"
    out["container-safetensors-lookalike"].write_bytes(looks)
    return out


def malformed(dest: Path) -> dict[str, Path]:
    """Files torch cannot load: truncated, corrupt, or not a checkpoint at all."""
    import torch

    good = dest / "_good.pt"
    torch.save({"w": torch.arange(64, dtype=torch.float32), "n": 3}, good)
    data = good.read_bytes()
    good.unlink()
    cd = data.rfind(b"PK\x01\x02")
    eocd = data.rfind(b"PK\x05\x06")
    pkl = data.find(b"data.pkl") + 40
    cuts = {"bad-cut-10": len(data) // 10, "bad-cut-50": len(data) // 2,
            "bad-cut-90": len(data) * 9 // 10, "bad-cut-central": cd + 20,
            "bad-cut-data-pkl": pkl}
    blobs = {name: data[:at] for name, at in cuts.items()}
    blobs["bad-png"] = b"\x89PNG\r\n\x1a\n" + bytes(200)
    blobs["bad-opcode"] = b"\x80\x02}q\x00\xff."
    blobs["bad-protocol"] = b"\x80\x09}."
    garbage = bytearray(data)
    garbage[cd:eocd] = bytes(eocd - cd)
    blobs["bad-central-garbage"] = bytes(garbage)
    count = bytearray(data)
    count[eocd + 10:eocd + 12] = (int.from_bytes(count[eocd + 10:eocd + 12], "little")
                                  + 3).to_bytes(2, "little")
    blobs["bad-eocd-count"] = bytes(count)
    offset = bytearray(data)
    offset[eocd + 16:eocd + 20] = (len(data) + 100).to_bytes(4, "little")
    blobs["bad-eocd-offset"] = bytes(offset)
    out = {}
    for name, blob in blobs.items():
        out[name] = dest / f"{name}.pt"
        out[name].write_bytes(blob)
    return out


def build_hostile(dest: Path, canary: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    """Write every family; return ``(executing-or-hostile files, malformed files)``."""
    dest.mkdir(parents=True, exist_ok=True)
    hostile: dict[str, Path] = {}
    for name, body in gadgets(canary).items():
        hostile[f"gadget-{name}"] = dest / f"gadget-{name}.pkl"
        hostile[f"gadget-{name}"].write_bytes(b"\x80\x02" + body + b".")
    for name, blob in parse_families(canary).items():
        hostile[name] = dest / f"{name}.pkl"
        hostile[name].write_bytes(blob)
    hostile.update(zip_families(dest, canary))
    hostile.update(legacy_families(dest, canary))
    hostile.update(container_families(dest, canary))
    return hostile, malformed(dest)


_ORACLE = r"""
import os, signal, sys, time, torch
for line in sys.stdin:
    path, weights_only, timeout = line.rstrip("\n").split("\t")
    pid = os.fork()
    if pid == 0:  # the throwaway process: one torch.load, then exit
        code = 0
        try:
            torch.load(path, weights_only=weights_only == "1", map_location="cpu")
        except BaseException:
            code = 1
        try:  # a payload may have spawned processes: they finish before the verdict
            while True:
                os.wait()
        except ChildProcessError:
            pass
        os._exit(code)
    deadline = time.monotonic() + float(timeout)
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            status = None
            break
        time.sleep(0.005)
    if status is None:
        out = "hangs"
    elif os.WIFSIGNALED(status):
        out = "crashes"
    else:
        out = "loads" if os.WEXITSTATUS(status) == 0 else "refuses"
    print(out, flush=True)
"""


class TorchOracle:
    """What ``torch.load`` does with a file, each load in a throwaway process forked from one
    that has imported torch (so a run costs milliseconds, not a torch import)."""

    def __init__(self, canary: Path, timeout: float = 30) -> None:
        import subprocess
        import sys

        self.canary, self.timeout = canary, timeout
        self._proc = subprocess.Popen([sys.executable, "-c", _ORACLE], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                      text=True, cwd=canary.parent)

    def outcome(self, path: Path, weights_only: bool) -> str:
        """``executes`` (the canary appeared), ``loads``, ``refuses``, ``crashes`` or ``hangs``."""
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self.canary.unlink(missing_ok=True)
        self._proc.stdin.write(f"{path}\t{int(weights_only)}\t{self.timeout}\n")
        self._proc.stdin.flush()
        out = self._proc.stdout.readline().strip()
        if self.canary.exists():
            self.canary.unlink()
            return "executes"
        return out

    def close(self) -> None:
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        self._proc.wait(timeout=60)
        if self._proc.stdout is not None:
            self._proc.stdout.close()
