#!/usr/bin/env bash
# Browser benchmark (not a test): blip-onnx in headless Chromium (onnxruntime-web, wasm) against the
# native CLI on the same caption packages, side by side in one run — the shapes caption package
# (FP32 and its web INT8 flavour) and a random-weight base caption package's web INT8 flavour
# (`quantize --target web`): time to first caption, per-caption latency at 1 and 2 threads, download
# size of each flavour. web/bench/bench.mjs drives it, into docs/bench/web-base.{json,md} and the
# README's table.
#   scripts/bench-web.sh [REPS]     (default 5 captions per cell after the first)
# Developer-side: the base checkpoint comes from the reference environment (tools/reference/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
reps="${1:-5}"
py="${BLIP_REFERENCE_PYTHON:-$(tools/reference/setup.sh | tail -n1)}"
b=.cache/bench
. scripts/lib.sh
ensure_chromium
eval "$(scripts/fetch-onnxruntime.sh)"
scripts/build-web.sh >/dev/null
cargo build --release --quiet -p blip-onnx-cli
bin="$PWD/target/release/blip-onnx"
scripts/bench-inputs.sh "$py" "$bin"
[ -f "$b/base-caption-web/blip.json" ] ||
  "$bin" quantize "$b/base-caption-pkg" --target web -o "$b/base-caption-web" --force >/dev/null
[ -f "$b/shapes-caption/blip.json" ] ||
  "$bin" convert fixtures/shapes/models/shapes-caption -o "$b/shapes-caption" --force >/dev/null
[ -f "$b/shapes-caption-web/blip.json" ] ||
  "$bin" quantize "$b/shapes-caption" --target web -o "$b/shapes-caption-web" --force >/dev/null
"$bin" export-web --web-dir web "$b"/{shapes-caption,shapes-caption-web,base-caption-web} -o "$b/web-site" --force >/dev/null
node web/bench/bench.mjs --cli "$bin" --site "$b/web-site" --image fixtures/images/grace_hopper.jpg \
  --reps "$reps" --sizes "$b/base-caption-pkg,$b/base-caption-int8,$b/base-caption-mixed" \
  -o docs/bench/web-base --readme docs/browser.md
