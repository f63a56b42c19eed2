#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls this script).
#   scripts/test.sh
# 1. fetches ONNX Runtime (pinned wheel, sha256-checked) into the cache,
# 2. checks formatting and clippy,
# 3. checks the engine seam (scripts/check-seam.sh: only blip-runtime names ort; the engine-free
#    crates build for wasm32),
# 4. runs every Rust test (parity against the committed PyTorch goldens, error cases, CLI),
# 5. converts every fixture and runs onnx.checker (full check) on each graph,
# 6. runs schemathesis against `blip-onnx serve` (no 5xx, responses conform to docs/openapi.json),
# 7. tests the server's page in headless Chromium (scripts/page-test.sh),
# 8. builds the Python wheel, installs it in a fresh venv and tests it against the CLI
#    (captions, embeddings, Ray on a two-node loopback cluster),
# 9. runs the browser build in headless Chromium (scripts/test-web.sh: wasm build, exported site,
#    in-browser results equal the native CLI's).
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/fetch-onnxruntime.sh)"
cargo fmt --all --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
scripts/check-seam.sh
cargo test --workspace
scripts/onnx-checker.sh
scripts/schemathesis.sh
scripts/page-test.sh
scripts/python-test.sh
scripts/test-web.sh
