#!/usr/bin/env bash
# The README's benchmark tables on random-weight base packages, from scratch: makes the checkpoints
# with the reference environment (tools/reference/setup.sh) when they are missing, converts, quantizes
# and optimizes every package into .cache/bench/, then runs `blip-onnx bench` with PyTorch and the
# guide's ORT-Python rows, several rounds in turn, into docs/bench/bench-base[-retrieval].*, README.md and docs/benchmarks.md.
#   scripts/bench-base.sh [ROUNDS] [HEAD...]      (default: 3 rounds; caption retrieval)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-3}"
shift || true
[ $# -gt 0 ] || set -- caption retrieval
# The reference environment's Python (tools/reference/setup.sh creates it, or reuses it, and prints it).
py="${BLIP_REFERENCE_PYTHON:-$(tools/reference/setup.sh | tail -n1)}"
b=.cache/bench
eval "$(scripts/fetch-onnxruntime.sh)"
cargo build --release --quiet -p blip-onnx-cli
bin=target/release/blip-onnx

checkpoint() { # HEAD
  [ -f "$b/base-$1/config.json" ] ||
    "$py" tools/reference/blip_reference.py checkpoint --size base --head "$1" -o "$b/base-$1"
}

caption() {
  checkpoint caption
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
}

# Vision, the text encoder (32 tokens) and retrieval with ITM rerank; the retrieval head has no decoder,
# so its default policy is INT8 everywhere.
retrieval() {
  checkpoint retrieval
  "$bin" convert "$b/base-retrieval" -o "$b/base-retrieval-pkg" --force >/dev/null
  "$bin" optimize "$b/base-retrieval-pkg" -o "$b/base-retrieval-opt" --force >/dev/null
  "$bin" quantize "$b/base-retrieval-pkg" -o "$b/base-retrieval-int8" --force >/dev/null
  "$bin" optimize "$b/base-retrieval-int8" -o "$b/base-retrieval-int8-opt" --force >/dev/null
  "$bin" quantize "$b/base-retrieval-pkg" -o "$b/base-retrieval-int4all" --precision int4 --policy all --force >/dev/null
  "$bin" quantize "$b/base-retrieval-pkg" -o "$b/base-retrieval-fp16" --precision fp16 --force >/dev/null
  "$bin" bench "$b/base-retrieval-pkg" "$b/base-retrieval-opt" "$b/base-retrieval-int8" \
    "$b/base-retrieval-int8-opt" "$b/base-retrieval-int4all" "$b/base-retrieval-fp16" \
    --image fixtures/images/grace_hopper.jpg --reps 10 --rounds "$rounds" --threads 2 \
    --python "$py" --checkpoint "$b/base-retrieval" -o docs/bench/bench-base-retrieval --readme docs/benchmarks.md
}

for head in "$@"; do
  case "$head" in
    caption | retrieval) "$head" ;;
    *) echo "unknown head $head (caption, retrieval)" >&2; exit 2 ;;
  esac
done
