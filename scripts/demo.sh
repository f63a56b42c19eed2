#!/usr/bin/env bash
# The main job end to end on the bundled models:
# fetch ONNX Runtime -> build -> convert the trained shapes checkpoints (caption / retrieval / VQA,
# fp16 HF folders) and an original-layout .pth -> checklist -> real captions, answers and search on
# the shipped shapes images -> task quality (eval) of the FP32 and INT8 packages.
#   scripts/demo.sh [OUT_DIR]     (default: out/demo)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-out/demo}"
eval "$(scripts/fetch-onnxruntime.sh)"
cargo build --release --quiet -p blip-onnx-cli
bin=target/release/blip-onnx
models=fixtures/shapes/models
test_set=fixtures/shapes/test
mkdir -p "$out"
for head in caption retrieval vqa; do
  "$bin" convert "$models/shapes-$head" -o "$out/shapes-$head" --force
done
# The original salesforce/BLIP .pth layout (a tiny random-weight fixture: the path, not the words).
"$bin" convert fixtures/models/tiny-caption-pth/model_tiny_caption.pth --config fixtures/models/tiny-caption/config.json \
  --tokenizer fixtures/models/tiny-caption --image-size 48 -o "$out/tiny-caption-pth-48" --force
echo
for pkg in "$out"/shapes-* "$out/tiny-caption-pth-48"; do
  printf '%s: deployment checklist: ' "$pkg"
  "$bin" check "$pkg" | tail -n 1
done
images=("$test_set"/images/test_0000{0,1,2,3}.png)
echo
echo "== captions (beam 3, prompt \"a picture of \")"
"$bin" caption -p "$out/shapes-caption" "${images[@]}"
echo "== VQA"
for q in "how many shapes are there?" "what color is the circle?" "is there a red square?"; do
  "$bin" vqa -p "$out/shapes-vqa" "${images[1]}" "$q"
done
echo "== index the test images, then search (ITC top-k, ITM rerank)"
"$bin" index -p "$out/shapes-retrieval" "$test_set/images" -o "$out/shapes.idx" --quiet
"$bin" search -p "$out/shapes-retrieval" "$out/shapes.idx" "a red circle, a yellow square and a yellow triangle" -k 3 --rerank 16
echo
echo "== task quality on the first 100 test images: FP32, then INT8 (validate gates the drop)"
"$bin" quantize "$out/shapes-caption" -o "$out/shapes-caption-int8" --policy all --force >/dev/null
for pkg in shapes-caption shapes-caption-int8; do
  "$bin" eval -p "$out/$pkg" --dataset "$test_set" --max-images 100 --quiet
done
printf 'validate INT8 vs FP32 (agreement, batch 1..4, edge inputs, memory, CIDEr-D drop <= 2 %%): '
"$bin" validate "$out/shapes-caption-int8" --against "$out/shapes-caption" --images "$test_set/images" \
  --eval-dataset "$test_set" --eval-max-images 100 --max-batch 4 --long-run 300 | tail -n 1
"$bin" eval -p "$out/shapes-retrieval" --dataset "$test_set" --max-images 100 --quiet
"$bin" eval -p "$out/shapes-vqa" --dataset "$test_set" --max-images 100 --quiet
echo
echo "packages in $out; 'scripts/test.sh' runs the test suite (parity against PyTorch, metrics, gates)"
