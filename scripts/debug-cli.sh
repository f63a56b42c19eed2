#!/usr/bin/env bash
# Prints the path of the debug `blip-onnx` binary the test scripts drive, building it when needed.
# scripts/test.sh sets BLIP_TEST_CLI to the binary `cargo test --workspace` has just built: building
# it again with `-p blip-onnx-cli` resolves other dependency features (the workspace's tests enable
# more: hyper's client, syn's extra traits, …) and recompiled much of the dependency graph (397 s of
# a 2497 s clean run).
#   cli="$(scripts/debug-cli.sh)"
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${BLIP_TEST_CLI:-}" ] && [ -x "$BLIP_TEST_CLI" ]; then
  echo "$BLIP_TEST_CLI"
  exit 0
fi
cargo build --quiet -p blip-onnx-cli >&2
target="${CARGO_TARGET_DIR:-target}"
case "$target" in /*) ;; *) target="$PWD/$target" ;; esac  # an absolute target dir stays as given
echo "$target/debug/blip-onnx"
