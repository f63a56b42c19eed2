#!/usr/bin/env bash
# Builds the browser assets into web/dist (what `blip-onnx export-web` copies into a site):
#   web/dist/pkg/  blip-web compiled to wasm32 + its wasm-bindgen glue (and js/engine.js)
#   web/dist/ort/  onnxruntime-web's wasm and WebGPU builds (pinned in web/package.json), served with the page
# Installs what it needs: the wasm32 target, wasm-bindgen-cli at Cargo.lock's wasm-bindgen version
# (into the blip-onnx cache), and the pinned npm packages (npm ci from web/package-lock.json).
#   scripts/build-web.sh
set -euo pipefail
cd "$(dirname "$0")/.."
WBG_VERSION=$(awk '$0 == "name = \"wasm-bindgen\"" { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)
[ -n "$WBG_VERSION" ] || { echo "build-web.sh: no wasm-bindgen in Cargo.lock" >&2; exit 1; }
. scripts/lib.sh
CACHE="$(blip_cache)"
WBG_ROOT="$CACHE/wasm-bindgen-$WBG_VERSION"
WBG="$WBG_ROOT/bin/wasm-bindgen"
if [ ! -x "$WBG" ] || [ "$("$WBG" --version)" != "wasm-bindgen $WBG_VERSION" ]; then
  # Not --locked: the crate's own lock file names webpki-roots 1.0.11, which the registry no
  # longer serves; the version of wasm-bindgen-cli itself is exact.
  cargo install --quiet wasm-bindgen-cli --version "=$WBG_VERSION" --root "$WBG_ROOT" >&2
fi
rustup target list --installed | grep -qx wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
cargo build --quiet --release --target wasm32-unknown-unknown -p blip-web
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
npm_ci_once web

# Written aside and moved into place: never a half-built web/dist.
tmp=web/.dist.partial
rm -rf "$tmp"
mkdir -p "$tmp/ort"
"$WBG" --target web --out-dir "$tmp/pkg" --out-name blip_web \
  "$TARGET_DIR/wasm32-unknown-unknown/release/blip_web.wasm"
ORT_DIST=web/node_modules/onnxruntime-web/dist
# The wasm-only bundle (no WebGPU/WebGL) and its runtime: SIMD, threads when cross-origin isolated;
# and the WebGPU bundle (wasm too; the native WebGPU EP) for sites with a package made for WebGPU.
cp "$ORT_DIST/ort.wasm.min.mjs" "$ORT_DIST/ort-wasm-simd-threaded.mjs" \
   "$ORT_DIST/ort-wasm-simd-threaded.wasm" "$ORT_DIST/ort.webgpu.min.mjs" \
   "$ORT_DIST/ort-wasm-simd-threaded.asyncify.mjs" "$ORT_DIST/ort-wasm-simd-threaded.asyncify.wasm" "$tmp/ort/"
rm -rf web/dist
mv "$tmp" web/dist
echo "build-web.sh: web/dist ready ($(du -sh web/dist | cut -f1); wasm-bindgen $WBG_VERSION, onnxruntime-web $(node -p "require('./web/node_modules/onnxruntime-web/package.json').version"))"
