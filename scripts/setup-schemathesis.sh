#!/usr/bin/env bash
# A virtualenv with schemathesis (pinned) under .cache/, for scripts/schemathesis.sh.
#   scripts/setup-schemathesis.sh      prints the path of its `st` executable
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
version=$(pinned SCHEMATHESIS_VERSION)
venv=.cache/schemathesis-$version
venv_with "$venv" "schemathesis==$version"
echo "$PWD/$venv/bin/st"
