#!/usr/bin/env bash
# Runs every check: lint, types, the contract's generated files, unit and integration tests
# (the integration tests start their own Mosquitto on free loopback ports).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
export PATH="/usr/sbin:$PATH"  # Debian installs mosquitto in /usr/sbin
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy edge_node cloud_hub schemas bench tests scripts/demo.py deploy/grafana/generate.py
.venv/bin/python -m schemas.generate --check
exec .venv/bin/python -m pytest "$@"
