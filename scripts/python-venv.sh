#!/usr/bin/env bash
# Create the virtualenv with Python 3.11+, installing Debian's venv module if it is missing.
set -euo pipefail
python=$1 venv=$2
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "waypost needs Python 3.11 or newer; '$python' is $("$python" --version 2>&1). Use: make PYTHON=python3.12 ..." >&2
  exit 1
fi
[ -x "$venv/bin/python" ] && exit 0
if ! "$python" -m venv "$venv" 2>/dev/null; then
  rm -rf "$venv"
  ver=$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
  echo "installing python$ver-venv (the venv module is missing)" >&2
  scripts/apt-install.sh "python$ver-venv" || scripts/apt-install.sh python3-venv
  "$python" -m venv "$venv"
fi
