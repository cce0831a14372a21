"""``python -m ckpttools``."""

import sys

from ckpttools.cli.main import main

sys.exit(main())
