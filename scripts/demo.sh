#!/usr/bin/env bash
# The demo: a broker, the hub and three simulated pumps (pump-3 develops a fault after about a
# minute), with a live fleet table. Ctrl-C stops every process.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh demo
export PATH="/usr/sbin:$PATH"
exec .venv/bin/python scripts/demo.py "$@"
