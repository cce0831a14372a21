"""``python -m ckpttools``."""

from ckpttools.cli.main import run

run()
