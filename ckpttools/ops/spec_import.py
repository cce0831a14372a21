"""Importing user code named on the command line, the same way for models and recipes.

Both forms are imported with the working folder on ``sys.path`` (as ``python -m`` would have it),
so ``--model mypkg.models:Net`` works from the folder that holds ``mypkg/``, and so does
``--model mypkg/models.py:Net`` when that file imports ``mypkg.parts``. A file's own folder is on
``sys.path`` too, so that it can import its neighbours (as ``python path/to/file.py`` would).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from types import ModuleType

from ckpttools.errors import SpecError


def is_file_target(target: str) -> bool:
    """Whether ``target`` names a Python file rather than a dotted module."""
    return target.endswith(".py") or "/" in target or os.sep in target or os.path.isfile(target)


def _on_path(folder: str) -> None:
    folder = os.path.abspath(folder)
    if folder not in (os.path.abspath(p or ".") for p in sys.path):
        sys.path.append(folder)  # appended: the user's folder never shadows installed packages


def import_target(target: str, spec: str, what: str) -> ModuleType:
    """Import ``target`` (``package.module`` or ``path/to/file.py``).

    Args:
        target: the module part of the spec.
        spec: the whole spec, for messages.
        what: what the spec names (``model spec``, ``recipe``), for messages.

    Returns:
        The module.

    Raises:
        SpecError: the file is missing, the module cannot be found, or importing it raised.
    """
    _on_path(os.getcwd())
    if is_file_target(target):
        return _import_file(target, spec, what)
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as e:
        raise SpecError(f"{spec}: cannot import {what} {target} ({e}); run from the folder that "
                        "holds it, or pass path/to/file.py") from e
    except Exception as e:
        raise SpecError(f"{spec}: {what} failed to import: {type(e).__name__}: {e}") from e


def _import_file(target: str, spec: str, what: str) -> ModuleType:
    if not os.path.isfile(target):
        raise SpecError(f"{spec}: {what} file not found: no such file {target}; pass an existing path/to/file.py")
    path = os.path.abspath(target)
    stem = os.path.splitext(os.path.basename(path))[0]
    name = f"_ckpttools_{stem}_{hashlib.sha1(path.encode()).hexdigest()[:8]}"
    if name in sys.modules:
        return sys.modules[name]
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise SpecError(f"{spec}: cannot import {target} as a {what}; pass a .py file")
    module = importlib.util.module_from_spec(module_spec)
    _on_path(os.path.dirname(path))
    sys.modules[name] = module  # dataclasses and pickling look their module up here
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:
        sys.modules.pop(name, None)
        raise SpecError(f"{spec}: {what} failed to import: {type(e).__name__}: {e}") from e
    return module
