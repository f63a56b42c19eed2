#!/usr/bin/env bash
# A virtualenv with schemathesis (pinned) under .cache/, for scripts/schemathesis.sh.
#   scripts/setup-schemathesis.sh      prints the path of its `st` executable
set -euo pipefail
cd "$(dirname "$0")/.."
version=4.32.5
venv=.cache/schemathesis-$version
if [ ! -x "$venv/bin/st" ]; then
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$version" >&2
fi
echo "$PWD/$venv/bin/st"
