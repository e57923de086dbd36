#!/usr/bin/env bash
# Create or update the project's virtual environment, idempotently.
#   scripts/bootstrap.sh          runtime dependencies only
#   scripts/bootstrap.sh test     also everything the tests need
# Versions come from constraints.txt so every machine and CI installs the same set.
set -euo pipefail
cd "$(dirname "$0")/.."

extras="fast"
[ "${1:-}" = "test" ] && extras="fast,test"
venv="${VENV:-.venv}"
python="${PYTHON:-python3}"

if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "oracled needs Python >= 3.11 (found: $("$python" --version 2>&1))" >&2
    exit 1
fi

stamp="$venv/.oracled-$extras-$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        -c constraints.txt -e ".[$extras]"
    rm -f "$venv"/.oracled-*
    touch "$stamp"
    echo "environment ready in $venv ($extras)"
fi
# The package is installed editable, so pip compiles none of it: compile it here (only what
# changed since), or a shell with PYTHONDONTWRITEBYTECODE set compiles it again at every start
# of the daemon (about 0.3 s of CPU each, and the tests start it well over a hundred times).
"$venv/bin/python" -m compileall -q oracled
