#!/usr/bin/env bash
# Installs ahead of time what the steps after `cargo test` need: the venvs (onnx checker,
# schemathesis, the wheel's build tools, the Python tests' requirements, the portability runtimes),
# Chromium with playwright-core, and the portability tool's npm packages. scripts/test.sh runs it
# in the background while cargo compiles: downloading and unpacking barely use the CPU the compiler
# needs. Each piece is its own script's setup (the same functions and pins), so every script still
# works alone; what is already installed is kept.
#   scripts/provision.sh PYTHON_TEST_VENV   (made fresh, with the full suite's requirements)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
[ $# = 1 ] || { echo "usage: scripts/provision.sh PYTHON_TEST_VENV" >&2; exit 2; }
t=$SECONDS
onnx_checker_venv >/dev/null
scripts/setup-schemathesis.sh >/dev/null
scripts/setup-browser.sh >/dev/null
scripts/python-setup.sh >/dev/null
fresh_venv "$1" "${PYTHON_TEST_REQS[@]}"
portability_venv >/dev/null
npm_ci_once tools/portability
echo "provision.sh: done in $((SECONDS - t)) s" >&2
