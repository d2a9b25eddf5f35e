"""``python -m cloud_hub`` and the ``cloud-hub`` script."""

from __future__ import annotations

import sys

from cloud_hub.cli.main import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
