#!/usr/bin/env bash
# Prepares this checkout: a virtualenv in .venv with the project, and the Debian packages the
# commands need. Sourced by scripts/demo.sh and scripts/test.sh; safe to run again.
#   usage: scripts/setup.sh [demo|test]
set -euo pipefail
cd "$(dirname "$0")/.."
purpose=${1:-demo}

pick_python() {
  for candidate in python3 python3.13 python3.12 python3.11; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  return 1
}

python=$(pick_python) || {
  echo "setup: Python 3.11 or newer is needed (with venv): apt-get install python3 python3-venv" >&2
  exit 1
}

# Debian packages: the broker for both; for the tests, Prometheus (and promtool), Alertmanager
# (and amtool), docker-compose for the stack checks and systemd-analyze for the unit files,
# PostgreSQL for the multi-hub store (its binaries live under /usr/lib/postgresql/<ver>/bin).
commands=(mosquitto mosquitto_passwd)
packages=(mosquitto mosquitto-clients)
if [ "$purpose" = test ]; then
  commands+=(prometheus promtool prometheus-alertmanager amtool docker-compose)
  packages+=(prometheus prometheus-alertmanager docker-compose postgresql)
fi
missing=()
for c in "${commands[@]}"; do
  command -v "$c" >/dev/null 2>&1 || [ -x "/usr/sbin/$c" ] || missing+=("$c")
done
if [ "$purpose" = test ] && ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
  missing+=(initdb)
fi
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing ${packages[*]} (missing: ${missing[*]})"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
  else
    echo "setup: missing ${missing[*]}; install them with:" >&2
    echo "  sudo apt-get install ${packages[*]}" >&2
    exit 1
  fi
fi

# The virtualenv follows the lock (requirements/edgeml.lock, hashes checked): it is brought in line
# whenever the lock or pyproject.toml changed since it was last installed.
stamp=.venv/.edgeml-installed
want=$(cat requirements/edgeml.lock pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: preparing .venv with $($python --version) from requirements/edgeml.lock"
  [ -x .venv/bin/python ] || "$python" -m venv .venv || {
    echo "setup: '$python -m venv' failed; install the venv module: apt-get install python3-venv" >&2
    exit 1
  }
  .venv/bin/python -m pip install -q --require-hashes --no-deps -r requirements/edgeml.lock
  .venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .
  echo "$want" > "$stamp"
fi

# The package's own modules compiled in place: the editable install imports them from the
# checkout, where a service user cannot write (nor can anyone under PYTHONDONTWRITEBYTECODE),
# and each `edge-node run` would otherwise compile every module again before its first reading.
# Quick when nothing changed; run setup again after pulling.
.venv/bin/python -m compileall -q edge_node schemas cloud_hub >/dev/null
