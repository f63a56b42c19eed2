#!/usr/bin/env bash
# The main job end to end on the bundled fixture checkpoints:
# fetch ONNX Runtime -> build -> convert (HF caption / retrieval / VQA folders and an original .pth)
# -> check every graph loads and runs -> caption, answer, index and search with the packages.
#   scripts/demo.sh [OUT_DIR]     (default: out/demo)
# The fixtures are tiny random-weight models: the pipeline is real, the words are not.
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
  printf 'deployment checklist: '
  "$bin" check "$pkg" | tail -n 1
  echo
done
echo "== captions (beam 3, prompt \"a picture of \")"
"$bin" caption -p "$out/tiny-caption" fixtures/images/*.png fixtures/images/*.jpg
echo "== VQA"
"$bin" vqa -p "$out/tiny-vqa" fixtures/images/grace_hopper.jpg "what is in the picture?"
echo "== index + search (ITC top-k, ITM rerank)"
"$bin" index -p "$out/tiny-retrieval" fixtures/images -o "$out/images.idx"
"$bin" search -p "$out/tiny-retrieval" "$out/images.idx" "a woman in a uniform" -k 3 --rerank 2
echo
echo "packages in $out; run 'scripts/test.sh' for the parity suite against PyTorch"
