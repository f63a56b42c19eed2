#!/usr/bin/env bash
# Package open time (issue "fast on every CPU", part 3): the base caption package, FP32 and the
# default quantized policy (INT8 encoders + INT4 decoder), opened in fresh processes with
# `blip-onnx bench-open` (ready to caption), into docs/bench/open-base.{md,json}.
#   scripts/bench-open.sh [RUNS]      (default 10)
# The packages are scripts/bench-base.sh's (.cache/bench/base-caption-pkg, -mixed); when missing
# they are made the same way, the checkpoint by the reference environment (tools/reference/setup.sh).
# The run holds /tmp/blip-bench.lock, so other benchmarks on the machine do not overlap it.
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-10}"
b=.cache/bench
eval "$(scripts/fetch-onnxruntime.sh)"
cargo build --release --quiet -p blip-onnx-cli
bin=target/release/blip-onnx
if [ ! -f "$b/base-caption-pkg/blip.json" ] || [ ! -f "$b/base-caption-mixed/blip.json" ]; then
  if [ ! -f "$b/base-caption/config.json" ]; then
    py="${BLIP_REFERENCE_PYTHON:-$(tools/reference/setup.sh | tail -n1)}"
    "$py" tools/reference/blip_reference.py checkpoint --size base --head caption -o "$b/base-caption"
  fi
  "$bin" convert "$b/base-caption" -o "$b/base-caption-pkg" --force >/dev/null
  "$bin" quantize "$b/base-caption-pkg" -o "$b/base-caption-int8" --force >/dev/null
  "$bin" quantize "$b/base-caption-int8" -o "$b/base-caption-mixed" --precision int4 --force >/dev/null
fi
mkdir -p docs/bench
flock /tmp/blip-bench.lock "$bin" bench-open "$b/base-caption-pkg" "$b/base-caption-mixed" \
  --runs "$runs" --threads 2 --out docs/bench/open-base >/dev/null
cat docs/bench/open-base.md
