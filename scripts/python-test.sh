#!/usr/bin/env bash
# Builds the Python wheel and tests it against the native CLI (scripts/test.sh runs it).
#   scripts/python-test.sh [pytest args...]
# 1-2. scripts/build-wheel.sh: the build venv (scripts/python-setup.sh: pinned maturin, zig), then
#    `maturin build --release`: one abi3 wheel (CPython >= 3.9, manylinux_2_28) in target/python-wheels,
# 3. a FRESH venv with only that wheel (its onnxruntime dependency from PyPI), the test pins and
#    pinned Ray (python/requirements-*.txt),
# 4. pytest python/tests, which converts the shapes fixtures with the CLI binary and compares, and
#    runs blip_onnx.ray on a two-node Ray cluster on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
eval "$(scripts/fetch-onnxruntime.sh)"  # the CLI the tests compare against loads it from here
BLIP_ONNX_CLI="$(scripts/debug-cli.sh)"
export BLIP_ONNX_CLI
wheel="$(scripts/build-wheel.sh)"
echo "python-test.sh: built $wheel in $((SECONDS - start)) s" >&2

TEST_VENV=target/python-test-venv
rm -rf "$TEST_VENV"
python3 -m venv "$TEST_VENV"
"$TEST_VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    "$wheel" -r python/requirements-test.txt -r python/requirements-ray.txt -r python/requirements-clients.txt
export BLIP_ONNX_REQUIRE_RAY=1  # the Ray cluster tests must run, not skip
# From the repository root, so `blip_onnx` is the installed wheel, not the python/ source folder.
"$TEST_VENV/bin/python" -m pytest -q -p no:cacheprovider python/tests "$@"
echo "python-test.sh: done in $((SECONDS - start)) s" >&2
