#!/usr/bin/env bash
# The README's benchmark table on random-weight base caption packages, from scratch: makes the
# checkpoint with the reference environment (tools/reference/setup.sh) when it is missing, converts,
# quantizes and optimizes every package into .cache/bench/, then runs `blip-onnx bench` with PyTorch
# and the guide's ORT-Python rows, several rounds in turn, into docs/bench/bench-base.* and README.md.
#   scripts/bench-base.sh [ROUNDS]      (default: 3)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-3}"
# The reference environment's Python (tools/reference/setup.sh creates it, or reuses it, and prints it).
py="${BLIP_REFERENCE_PYTHON:-$(tools/reference/setup.sh | tail -n1)}"
b=.cache/bench
eval "$(scripts/fetch-onnxruntime.sh)"
cargo build --release --quiet -p blip-onnx-cli
bin=target/release/blip-onnx
[ -f "$b/base-caption/config.json" ] ||
  "$py" tools/reference/blip_reference.py checkpoint --size base --head caption -o "$b/base-caption"
"$bin" convert "$b/base-caption" -o "$b/base-caption-pkg" --force >/dev/null
"$bin" convert "$b/base-caption" -o "$b/base-caption-224" --image-size 224 --force >/dev/null
"$bin" optimize "$b/base-caption-pkg" -o "$b/base-caption-opt" --force >/dev/null
"$bin" quantize "$b/base-caption-pkg" -o "$b/base-caption-int8" --force >/dev/null
"$bin" quantize "$b/base-caption-224" -o "$b/base-caption-224-int8" --force >/dev/null
# The default quantized policy: INT8 encoders (above) + INT4 decoder; then its ORT-optimized form.
"$bin" quantize "$b/base-caption-int8" -o "$b/base-caption-mixed" --precision int4 --force >/dev/null
"$bin" optimize "$b/base-caption-mixed" -o "$b/base-caption-mixed-opt" --force >/dev/null
"$bin" quantize "$b/base-caption-pkg" -o "$b/base-caption-int8all" --policy all --force >/dev/null
"$bin" quantize "$b/base-caption-pkg" -o "$b/base-caption-int4all" --precision int4 --policy all --force >/dev/null
"$bin" quantize "$b/base-caption-pkg" -o "$b/base-caption-fp16" --precision fp16 --force >/dev/null
"$bin" bench "$b/base-caption-pkg" "$b/base-caption-opt" "$b/base-caption-int8" "$b/base-caption-mixed" \
  "$b/base-caption-mixed-opt" "$b/base-caption-int8all" "$b/base-caption-int4all" "$b/base-caption-fp16" \
  "$b/base-caption-224" "$b/base-caption-224-int8" \
  --image fixtures/images/grace_hopper.jpg --reps 10 --rounds "$rounds" --threads 2 \
  --python "$py" --checkpoint "$b/base-caption" --cuda -o docs/bench/bench-base --readme README.md
