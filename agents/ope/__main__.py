"""``python -m agents.ope``: see :mod:`agents.ope.cli`."""

import sys

from agents.ope.cli import main

sys.exit(main())
