"""``python -m agents.serving RUN_DIR ...``: the HTTP service (same as ``python -m agents.serve``)."""

import sys

from agents.serving.app import main

sys.exit(main())
