"""A generated corpus of malicious checkpoints. Every payload, if it ever ran, would only touch
``canary`` (create it, or open it); tests assert it never appears.

Bypass cases follow published reports against pickle scanners: memo confusion
(mmaitre314/picklescan#14, #22), dynamic STACK_GLOBAL operands and str.join-built names
(protectai/modelscan#331), BUILD onto a function (protectai/modelscan#85, #330), INST/OBJ
opcodes (protectai/modelscan#51), EXT codes (trailofbits/fickling#172), an invalid opcode after
the payload (trailofbits/fickling#138/#139), dotted names (trailofbits/fickling#287), and
Python 2 module aliases (``__builtin__``).
"""

from __future__ import annotations

import builtins
import io
import os
import pickle
import runpy
import subprocess
import webbrowser
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Case:
    """One malicious file and a global (or finding text) the scan must name."""

    name: str
    path: Path
    expect: str


class Payload:
    """``__reduce__`` to ``func(*args)``: what a malicious pickle calls on load."""

    def __init__(self, func: Any, *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.func, self.args)


def _payloads(canary: Path) -> dict[str, tuple[Payload, str]]:
    import torch

    c = str(canary)
    return {
        "os_system": (Payload(os.system, f"touch {c}"), "system"),
        "posix_system": (Payload(os.system, f"touch {c}"), "posix.system"),
        "subprocess_popen": (Payload(subprocess.Popen, ["touch", c]), "subprocess.Popen"),
        "builtins_eval": (Payload(builtins.eval, f"open({c!r}, 'w')"), "builtins.eval"),
        "builtins_exec": (Payload(builtins.exec, f"open({c!r}, 'w')"), "builtins.exec"),
        "runpy_run_code": (Payload(runpy._run_code, f"open({c!r}, 'w')", {}), "runpy._run_code"),
        "webbrowser_open": (Payload(webbrowser.open, f"file://{c}"), "webbrowser.open"),
        "nested_torch_load": (Payload(torch.load, c + ".inner.pt"), "torch.serialization.load"),
        "builtins_open": (Payload(builtins.open, c, "w"), "open"),
    }


def _s(text: str) -> bytes:
    raw = text.encode()
    return b"\x8c" + bytes([len(raw)]) + raw  # SHORT_BINUNICODE


def _handmade(canary: Path) -> dict[str, tuple[bytes, str]]:
    """Raw pickles built opcode by opcode, each naming what the scan must report."""
    cmd = f"touch {canary}"
    ucmd = cmd.encode()
    return {
        # builtins.getattr(builtins.__import__('os'), 'system')('touch ...')
        "getattr_import_chain": (
            b"\x80\x04" + _s("builtins") + _s("getattr") + b"\x93" + _s("builtins")
            + _s("__import__") + b"\x93" + _s("os") + b"\x85R" + _s("system") + b"\x86R"
            + _s(cmd) + b"\x85R.", "builtins.getattr"),
        # memo confusion: strings stored with PUT, safe-looking ones with MEMOIZE
        "memo_confusion": (
            b"Vos\np2\n0Vsystem\np3\n0Vtorch\np0\n0VLongStorage\np1\n0g2\ng3\n\x93(V"
            + ucmd + b"\ntR.", "os.system"),
        # STACK_GLOBAL operands built at load time by ''.join (modelscan#331)
        "stack_global_from_join": (
            b"\x80\x04" + _s("builtins") + _s("getattr") + b"\x93" + _s("builtins") + _s("str")
            + b"\x93" + _s("join") + b"\x86R" + _s("") + b"](" + _s("o") + _s("s") + b"e\x86R"
            + _s("system") + b"\x93" + _s(cmd) + b"\x85R.", "dynamic global"),
        # protocol 0 INST, Python 2 module name
        "inst_builtin_exec": (
            b"(V" + f"open({str(canary)!r}, 'w')".encode() + b"\ni__builtin__\nexec\n.",
            "builtins.exec"),
        # OBJ with the callable first after MARK
        "obj_posix_system": (b"(cposix\nsystem\nV" + ucmd + b"\no.", "posix.system"),
        # dotted name through an innocent module (fickling#287)
        "dotted_pathlib_os": (b"\x80\x04" + _s("pathlib") + _s("os.system") + b"\x93" + _s(cmd)
                              + b"\x85R.", "pathlib.os.system"),
        # BUILD sets attributes of a function, a dotted global reads them back (modelscan#85)
        "build_on_function": (
            b"cnumpy\nprod\n(N}Va\nVos\nstb0cnumpy\nprod.a\n.", "numpy.prod.a"),
        # the extension registry instead of a name (copyreg.add_extension on the loader's side)
        "ext_code": (b"\x80\x02\x82\x07V" + ucmd + b"\n\x85R.", "extension code 7"),
        # the payload, then an opcode no unpickler knows: the REDUCE has already run
        "bad_opcode_after_payload": (pickle.dumps(Payload(os.system, cmd), 2)[:-1] + b"\xff\xff",
                                     "system"),
        # case trick: a module name that only resolves on case-insensitive file systems
        "module_case": (b"cOS\nsystem\n(V" + ucmd + b"\ntR.", "OS.system"),
        # sys.modules reached through a getattr on sys
        "sys_modules": (b"csys\nmodules\n.", "sys.modules"),
        # operator.attrgetter / methodcaller chains
        "operator_methodcaller": (b"coperator\nmethodcaller\n(Vsystem\nV" + ucmd + b"\ntR.",
                                  "operator.methodcaller"),
        "functools_partial": (b"cfunctools\npartial\n(cposix\nsystem\nV" + ucmd + b"\ntR.",
                              "functools.partial"),
        "numpy_runstring": (b"cnumpy.testing._private.utils\nrunstring\n(V" + ucmd
                            + b"\n(dtR.", "numpy.testing._private.utils.runstring"),
        "pydoc_locate": (b"cpydoc\nlocate\n(Vos.system\ntR.", "pydoc.locate"),
        "pty_spawn": (b"cpty\nspawn\n(V" + ucmd + b"\ntR.", "pty.spawn"),
        "io_fileio": (b"c_io\nFileIO\n(V" + str(canary).encode() + b"\nVw\ntR.", "_io.FileIO"),
        "torch_hub": (b"ctorch.hub\nload\n(Vx\nVy\ntR.", "torch.hub.load"),
    }


def _torch_zip(state: Any, path: Path, protocol: int = 2) -> Path:
    import torch

    torch.save(state, path, pickle_protocol=protocol)
    return path


def _rename_member(src: Path, dest: Path, old_suffix: str, new_suffix: str) -> Path:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            name = info.filename
            if name.endswith(old_suffix):
                name = name[: -len(old_suffix)] + new_suffix
            zout.writestr(name, zin.read(info.filename))
    return dest


def build_corpus(dest: Path, canary: Path) -> list[Case]:
    """Write every malicious file under ``dest``; return the cases."""
    import torch

    dest.mkdir(parents=True, exist_ok=True)
    cases: list[Case] = []
    weights = {"layer.weight": torch.zeros(2, 2), "layer.bias": torch.zeros(2)}
    for name, (payload, expect) in _payloads(canary).items():
        state = {**weights, "extra": payload}
        cases.append(Case(f"{name}-zip", _torch_zip(state, dest / f"{name}.pth"), expect))
        legacy = dest / f"{name}-legacy.pt"
        torch.save(state, legacy, _use_new_zipfile_serialization=False)
        cases.append(Case(f"{name}-legacy", legacy, expect))
        for protocol in range(6):
            path = dest / f"{name}-p{protocol}.pkl"
            path.write_bytes(pickle.dumps(state, protocol=protocol))
            cases.append(Case(f"{name}-pickle-p{protocol}", path, expect))
    zip4 = _torch_zip({**weights, "x": _payloads(canary)["os_system"][0]}, dest / "p4.pth", 4)
    cases.append(Case("zip-protocol4", zip4, "system"))
    renamed = _rename_member(zip4, dest / "renamed.pth", "data.pkl", "weights.bin")
    cases.append(Case("zip-renamed-pickle", renamed, "system"))
    hidden = dest / "second-pickle.pth"
    _torch_zip(weights, dest / "clean.pth")
    with zipfile.ZipFile(dest / "clean.pth") as zin, zipfile.ZipFile(hidden, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename))
        zout.writestr("archive/extra.pkl", pickle.dumps(Payload(os.system, f"touch {canary}")))
    (dest / "clean.pth").unlink()
    cases.append(Case("zip-second-pickle", hidden, "system"))
    for name, (data, expect) in _handmade(canary).items():
        path = dest / f"{name}.pkl"
        path.write_bytes(data)
        cases.append(Case(name, path, expect))
    appended = dest / "appended-after-stop.pkl"
    appended.write_bytes(pickle.dumps(weights) + pickle.dumps(Payload(os.system, f"touch {canary}")))
    cases.append(Case("second-pickle-after-stop", appended, "system"))
    return cases


def pickle_bytes(obj: Any, protocol: int = 2) -> bytes:
    """``pickle.dumps`` through a buffer (for tests that assemble files by hand)."""
    buf = io.BytesIO()
    pickle.dump(obj, buf, protocol=protocol)
    return buf.getvalue()
