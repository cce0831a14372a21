"""What the resume tests share: a recipe written as a real ``.py`` file, loaded by path."""

from __future__ import annotations

from pathlib import Path


def write_recipe(tmp_path: Path, text: str, name: str = "recipe.py") -> str:
    """Write ``text`` as ``tmp_path/name`` and return the path as the recipe spec."""
    path = tmp_path / name
    path.write_text(text)
    return str(path)
