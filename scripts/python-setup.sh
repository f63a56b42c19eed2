#!/usr/bin/env bash
# Creates the Python virtual environment for building and testing the wheel (python/), with the
# pinned tools of python/requirements-*.txt, and prints its path.
#   VENV="$(scripts/python-setup.sh)"
# Reused while the requirement files are unchanged (a stamp holds their hash).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${BLIP_PYTHON_VENV:-$PWD/.cache/python-venv}"
REQS=(python/requirements-build.txt python/requirements-test.txt)
want="$(cat "${REQS[@]}" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$VENV/.blip-requirements" 2>/dev/null)" != "$want" ]; then
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
      -r python/requirements-build.txt -r python/requirements-test.txt >&2
  echo "$want" > "$VENV/.blip-requirements"
fi
echo "$VENV"
