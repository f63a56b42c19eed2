#!/usr/bin/env bash
# The inputs of the serving and scale-out benchmarks, made in .cache/bench/ when missing: the random-weight
# base checkpoints and packages (the same commands as scripts/bench-base.sh: FP32, INT8 with the default
# policy and, for captions, the default quantized package "mixed": INT8 encoders + INT4 decoder) and
# COUNT synthetic photos (tools/synth_images.py) in IMAGES, of which DISTINCT differ (default: all).
#   scripts/bench-inputs.sh PYTHON BIN [IMAGES COUNT [DISTINCT]]   (the reference environment's Python, blip-onnx)
set -euo pipefail
cd "$(dirname "$0")/.."
py="$1" bin="$2" images="${3:-}" count="${4:-0}" distinct="${5:-${4:-0}}" b=.cache/bench
for head in caption retrieval; do
  [ -f "$b/base-$head/config.json" ] ||
    "$py" tools/reference/blip_reference.py checkpoint --size base --head "$head" -o "$b/base-$head"
  [ -f "$b/base-$head-pkg/blip.json" ] || "$bin" convert "$b/base-$head" -o "$b/base-$head-pkg" --force >/dev/null
  [ -f "$b/base-$head-int8/blip.json" ] || "$bin" quantize "$b/base-$head-pkg" -o "$b/base-$head-int8" --force >/dev/null
done
[ -f "$b/base-caption-mixed/blip.json" ] ||
  "$bin" quantize "$b/base-caption-int8" -o "$b/base-caption-mixed" --precision int4 --force >/dev/null
if [ -n "$images" ] && [ ! -d "$images" ]; then
  rm -rf "$images.tmp" && mkdir -p "$images.tmp"
  "$py" tools/synth_images.py "$images.tmp" "$count" "$distinct"
  mv "$images.tmp" "$images"
fi
