#!/usr/bin/env bash
# Converts every fixture checkpoint and runs the reference `onnx.checker.check_model(full_check=True)`
# on each graph. Needs only the PyPI `onnx` wheel (pinned), installed into a cached venv; no torch.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
venv="$(onnx_checker_venv)"
bin="$(scripts/debug-cli.sh)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
for head in caption retrieval vqa; do
  "$bin" convert "fixtures/models/tiny-$head" -o "$work/$head" >/dev/null
done
"$bin" convert fixtures/models/tiny-caption --external-data always -o "$work/caption-external" >/dev/null
"$bin" convert fixtures/models/tiny-blip2-retrieval -o "$work/blip2-retrieval" >/dev/null
"$bin" convert fixtures/models/tiny-caption-pth/model_tiny_caption.pth --config fixtures/models/tiny-caption/config.json \
  --tokenizer fixtures/models/tiny-caption --image-size 48 -o "$work/caption-pth" >/dev/null
"$venv/bin/python" tools/check_onnx.py "$work"/*/
