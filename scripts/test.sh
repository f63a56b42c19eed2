#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls this script, then the release wheel's check).
#   scripts/test.sh
# 1. fetches ONNX Runtime (pinned wheel, sha256-checked) into the cache,
# 2. checks formatting; clippy lints every crate as the builds below compile it,
# 3. checks the engine seam (scripts/check-seam.sh: only blip-runtime names ort; the engine-free
#    crates build for wasm32) and builds the browser assets from that build (scripts/build-web.sh),
#    while installing, in the background, what steps 5-10 need (scripts/provision.sh),
# 4. runs every Rust test (parity against the committed PyTorch goldens, error cases, CLI),
# 5. converts every fixture and runs onnx.checker (full check) on each graph,
# 6. runs schemathesis against `blip-onnx serve` (no 5xx, responses conform to docs/openapi.json),
# 7. tests the server's page in headless Chromium (scripts/page-test.sh),
# 8. builds the Python wheel (dev profile, reusing step 4's builds), installs it in a fresh venv and
#    tests it against the CLI (captions, embeddings, Ray on a two-node loopback cluster); the
#    release wheel is built and tested by `scripts/python-test.sh --release`, which .ci/run adds,
# 9. runs the browser build in headless Chromium (scripts/test-web.sh: wasm build, exported site,
#    in-browser results equal the native CLI's),
# 10. runs every graph of every package flavour on every runtime a package claims
#    (scripts/test-portability.sh: onnxruntime-node/web, OpenVINO, tract, ORT mobile format).
# Each step's wall time goes to stderr, and the total at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
start=$SECONDS
# A fresh clone has no incremental state to reuse: writing it only costs time and disk (CI).
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
step() {
  local t=$SECONDS
  "$@"
  echo "test.sh: $* took $((SECONDS - t)) s" >&2
}
eval "$(scripts/fetch-onnxruntime.sh)"
step cargo fmt --all --check
# Clippy lints the workspace's crates inside the builds below instead of in a separate
# `cargo clippy` (a second, check-mode build of every dependency: ~9 of a fresh clone's minutes):
# clippy-driver wraps rustc for workspace crates only, compiling and linting in one pass, with the
# arguments `cargo clippy -- -D warnings` gives it. Every cargo build below inherits this, so they
# share one build of each crate; the wasm32 build lints the browser crates on their real target.
RUSTC_WORKSPACE_WRAPPER="$(rustup which clippy-driver)"
CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"  # cargo-clippy's own encoding
export RUSTC_WORKSPACE_WRAPPER CLIPPY_ARGS
# The one crate those builds do not compile, the ANN benchmark tool (see TEST_PACKAGES), is linted
# by .ci/run after this script.
step scripts/check-seam.sh
# The browser assets, before cargo test: its builds embed them (BLIP_ONNX_EMBED_WEB=1), so the
# binary the scripts drive is the installed-binary test's too (scripts/test-web.sh), not a relink
# of every test binary late in the run; and the later scripts do not build them again.
step scripts/build-web.sh
export BLIP_ONNX_EMBED_WEB=1 BLIP_WEB_BUILT=1
step scripts/setup-exiftool.sh
# What the scripts after cargo test install, installed while it compiles (scripts/provision.sh).
BLIP_PROVISIONED_TEST_VENV="$PWD/${CARGO_TARGET_DIR:-target}/python-test-venv"
export BLIP_PROVISIONED_TEST_VENV
mkdir -p "$(dirname "$BLIP_PROVISIONED_TEST_VENV")"
provision_log=$(mktemp)
cleanup() {
  kill "${provision:-}" 2>/dev/null || true
  rm -rf "$provision_log" "${BLIP_SHAPES_PACKAGES:-}"
}
trap cleanup EXIT
scripts/provision.sh "$BLIP_PROVISIONED_TEST_VENV" >"$provision_log" 2>&1 &
provision=$!
step cargo test "${TEST_PACKAGES[@]}"
wait_for_provision() {
  wait "$provision" || { cat "$provision_log" >&2; echo "test.sh: scripts/provision.sh failed" >&2; return 1; }
  cat "$provision_log" >&2
}
step wait_for_provision
# The CLI binary those tests ran: the scripts below drive it (scripts/debug-cli.sh says why).
export BLIP_TEST_CLI="$PWD/${CARGO_TARGET_DIR:-target}/debug/blip-onnx"
# The shapes packages, converted once for every script below (scripts/lib.sh: shapes_packages).
BLIP_SHAPES_PACKAGES=$(mktemp -d)
export BLIP_SHAPES_PACKAGES
step scripts/onnx-checker.sh
step scripts/schemathesis.sh
step scripts/page-test.sh
step scripts/python-test.sh
step scripts/test-web.sh
step scripts/test-portability.sh
# A green run leaves the checkout as it found it: committed docs, screenshots and matrices are
# rewritten only by an explicit --bless (scripts/page-test.sh, test-web.sh, test-portability.sh,
# soak-serve.sh, BLIP_UPDATE_OPENAPI outside CI).
if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then
  echo "test.sh: the run changed committed files:" >&2
  git status --porcelain --untracked-files=no >&2
  exit 1
fi
echo "test.sh: passed in $((SECONDS - start)) s" >&2
