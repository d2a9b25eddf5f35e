#!/usr/bin/env bash
# Refreshes requirements/edgeml.lock from the ranges in pyproject.toml (and the build backend in
# requirements/build.in): every package pinned with its hashes, for every Python from 3.11 on.
# Review the diff like code: it changes what every machine installs.
#   usage: scripts/lock.sh [--upgrade-package NAME ...]   (no argument: keep pins that still fit)
set -euo pipefail
cd "$(dirname "$0")/.."
tools=${XDG_CACHE_HOME:-$HOME/.cache}/edgeml-lock
if [ ! -x "$tools/bin/uv" ]; then
  python3 -m venv "$tools"
  "$tools/bin/python" -m pip install -q 'uv>=0.5,<1'
fi
"$tools/bin/uv" pip compile pyproject.toml requirements/build.in --extra dev \
  --universal --python-version 3.11 --generate-hashes --quiet \
  --output-file requirements/edgeml.lock "$@"
echo "lock: requirements/edgeml.lock refreshed; run scripts/test.sh before committing it"
