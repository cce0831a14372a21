#!/usr/bin/env python3
"""Benchmarks: ckpttools against the obvious approach, measured in the same run, as ratios.

Usage:
  python scripts/bench.py                      # every area, default (small) sizes
  python scripts/bench.py sweep                # every command at 16MB, 256MB, 1GB: one table
  python scripts/bench.py sweep --sizes 16MB,256MB,1GB,4GB
  python scripts/bench.py inspect --sizes 256MB,1GB,4GB
  python scripts/bench.py convert --sizes 4GB

Generated checkpoints are kept in ./bench-data (or $CKPTTOOLS_BENCH_DATA) and reused.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

AREAS = ("sweep", "startup", "inspect", "formats", "pickle", "diff", "convert", "resume", "audit", "trainers", "remote", "plot")


def precompile() -> None:
    """Write ckpttools' bytecode before measuring: an installed package has it (pip compiles on
    install), while a checkout run under ``PYTHONDONTWRITEBYTECODE=1`` would otherwise compile
    every module again in every measured process (0.1-0.5 s that no user pays)."""
    import compileall

    import ckpttools

    compileall.compile_dir(os.path.dirname(ckpttools.__file__), quiet=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("areas", nargs="*", default=[], metavar="AREA",
                        help=f"which benchmarks ({', '.join(AREAS)}); all by default")
    parser.add_argument("--sizes", default=None,
                        help="checkpoint sizes, comma-separated (default: 256MB; the sweep: "
                             "16MB,256MB,1GB)")
    args = parser.parse_args()
    sizes = [s for s in (args.sizes or "").split(",") if s]
    unknown = set(args.areas) - set(AREAS)
    if unknown:
        parser.error(f"unknown area(s): {', '.join(sorted(unknown))}")
    precompile()
    for area in args.areas or AREAS:
        try:
            module = importlib.import_module(f"bench_{area}")
        except ModuleNotFoundError:
            print(f"== {area}: no benchmark", flush=True)
            continue
        print(f"== {area}", flush=True)
        module.run(sizes or (None if area == "sweep" else ["256MB"]))


if __name__ == "__main__":
    main()
