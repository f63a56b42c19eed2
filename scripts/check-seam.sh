#!/usr/bin/env bash
# The engine seam, checked cheaply (part of scripts/test.sh):
# 1. only the engine crate (blip-runtime) depends on `ort` (normal and build edges; the converter's
#    parity tests drive sessions directly as a dev-dependency);
# 2. the engine-free crates build for the browser target, wasm32-unknown-unknown (as dependencies
#    of blip-web, built exactly as scripts/build-web.sh builds it, which then reuses the build).
set -euo pipefail
cd "$(dirname "$0")/.."
engines="blip-runtime"
direct=$(cargo tree --workspace -e normal,build -i ort --depth 1 --prefix none --format '{p}' \
  | awk 'NR > 1 && $1 != "" { print $1 }' | sort -u | tr '\n' ' ')
if [ "${direct% }" != "$engines" ]; then
  echo "check-seam: crates depending on ort directly: ${direct:-none} (expected only: $engines)" >&2
  exit 1
fi
echo "check-seam: ort is named only by: $engines"
rustup target list --installed | grep -qx wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
cargo build --quiet --release --target wasm32-unknown-unknown -p blip-web
echo "check-seam: blip-package, blip-preprocess, blip-tasks, blip-web build for wasm32-unknown-unknown"
