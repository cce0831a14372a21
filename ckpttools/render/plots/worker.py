"""A second process that imports matplotlib while the command works, then draws one figure.

``diff A B`` spends its time in reads and torch kernels, and matplotlib's import (about 0.5 s of
pure Python) in a thread of the same process takes turns with it on the GIL: the command is slower
by about as much. Started at once on the other core, the worker has matplotlib ready when the
result is; it receives the chart's rows as JSON on stdin (plain keys and numbers: nothing is
unpickled) and writes the figure's bytes to stdout.
"""

from __future__ import annotations

import json
import struct
import sys


def main() -> None:
    """Import matplotlib, wait for one request, answer it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.backends.backend_agg  # noqa: F401
    import matplotlib.figure  # noqa: F401

    from ckpttools.render.plots import diff

    request = sys.stdin.buffer.read()
    if not request:
        return  # the command ended without a figure (an error, exit 2)
    job = json.loads(request)
    rows = [(key, value, mark) for key, value, mark in job["rows"]]
    data = diff.plot_changes(rows, job["compared"], job["format"])
    sys.stdout.buffer.write(struct.pack("<Q", len(data)) + data)
    sys.stdout.buffer.flush()


if __name__ == "__main__":
    main()
