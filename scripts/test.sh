#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls this script).
#   scripts/test.sh
# 1. fetches ONNX Runtime (pinned wheel, sha256-checked) into the cache,
# 2. checks formatting and clippy,
# 3. runs every Rust test (parity against the committed PyTorch goldens, error cases, CLI),
# 4. converts every fixture and runs onnx.checker (full check) on each graph,
# 5. builds the Python wheel, installs it in a fresh venv and tests it against the CLI.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/fetch-onnxruntime.sh)"
cargo fmt --all --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo test --workspace
scripts/onnx-checker.sh
scripts/python-test.sh
