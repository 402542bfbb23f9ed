"""``python -m agents.serve RUN_DIR ...``: the HTTP ranking service (kept entry point; the code is in
:mod:`agents.serving.app`, the API in docs/serving.md)."""

import sys

from agents.serving.app import create_app, main, resolve_artifact

__all__ = ["create_app", "main", "resolve_artifact"]

if __name__ == "__main__":
    sys.exit(main())
