#!/usr/bin/env bash
# The main job end to end on the bundled fixture checkpoints:
# fetch ONNX Runtime -> build -> convert (HF caption / retrieval / VQA folders and an original .pth)
# -> load and run every graph of each package -> short report.
#   scripts/demo.sh [OUT_DIR]     (default: out/demo)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-out/demo}"
eval "$(scripts/fetch-onnxruntime.sh)"
cargo build --release --quiet -p blip-onnx-cli
bin=target/release/blip-onnx
mkdir -p "$out"
for head in caption retrieval vqa; do
  "$bin" convert "fixtures/models/tiny-$head" -o "$out/tiny-$head" --force
done
"$bin" convert fixtures/models/tiny-caption-pth/model_tiny_caption.pth --config fixtures/models/tiny-caption/config.json \
  --tokenizer fixtures/models/tiny-caption --image-size 48 -o "$out/tiny-caption-pth-48" --force
echo
for pkg in "$out"/tiny-*; do
  "$bin" inspect "$pkg" --run
  echo
done
echo "packages in $out; run 'scripts/test.sh' for the parity suite against PyTorch"
