"""``python -m envs.calibrate``: see :func:`envs.calibrate.cli.main`."""

import sys

from envs.calibrate.cli import main

sys.exit(main())
