#!/usr/bin/env bash
# Builds the Python wheel and tests it against the native CLI (scripts/test.sh runs it).
#   scripts/python-test.sh [pytest args...]             the whole suite on a dev-profile build
#   scripts/python-test.sh --release [pytest args...]   the wheel to ship (.ci/run adds this)
# 1-2. scripts/build-wheel.sh: the build venv (scripts/python-setup.sh: pinned maturin), then
#    by default the module in the dev profile, reusing what `cargo test --workspace` built; with
#    --release the wheel to ship (release, manylinux_2_28 through zig), on which the task and
#    console-script tests run: what only that build can break (the zig cross-link, the tag, the
#    optimised code),
# 3. a FRESH venv with the test pins and pinned Ray (python/requirements-*.txt, made while cargo
#    compiles when scripts/test.sh runs this: scripts/provision.sh), then that wheel (its
#    onnxruntime dependency from PyPI; `pip check` proves the set consistent),
# 4. pytest python/tests, which converts the shapes fixtures with the CLI binary and compares, and
#    runs blip_onnx.ray on a two-node Ray cluster on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
. scripts/lib.sh
build=(--test)
tests=(python/tests)
reqs=("${PYTHON_TEST_REQS[@]}")
if [ "${1:-}" = --release ]; then
  shift
  build=()
  tests=(python/tests/test_tasks.py python/tests/test_cli.py)
  reqs=("${PYTHON_RELEASE_TEST_REQS[@]}")
fi
eval "$(scripts/fetch-onnxruntime.sh)"  # the CLI the tests compare against loads it from here
BLIP_ONNX_CLI="$(scripts/debug-cli.sh)"
export BLIP_ONNX_CLI
wheel="$(scripts/build-wheel.sh "${build[@]}")"
echo "python-test.sh: built $wheel in $((SECONDS - start)) s" >&2

TEST_VENV=target/python-test-venv
if [ -n "${BLIP_PROVISIONED_TEST_VENV:-}" ] && [ "${build[*]}" = --test ]; then
  # Made fresh in this test run by scripts/provision.sh, with the requirements and no wheel yet.
  TEST_VENV=$BLIP_PROVISIONED_TEST_VENV
else
  fresh_venv "$TEST_VENV" "${reqs[@]}"
fi
"$TEST_VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$wheel"
"$TEST_VENV/bin/python" -m pip check >&2
export BLIP_ONNX_REQUIRE_RAY=1  # the Ray cluster tests must run, not skip
# From the repository root, so `blip_onnx` is the installed wheel, not the python/ source folder.
"$TEST_VENV/bin/python" -m pytest -q -p no:cacheprovider "${tests[@]}" "$@"
echo "python-test.sh: done in $((SECONDS - start)) s" >&2
