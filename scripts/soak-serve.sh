#!/usr/bin/env bash
# Hostile soak of `blip-onnx serve` on the shapes packages (tools/soak_serve.py): COUNT requests
# (default 10 000) from CLIENTS threads (default 32), good and bad mixed, index adds and deletes,
# then SIGKILL and a restart on the same index. Fails on a 5xx, an unexpected answer, RSS growth of
# 5 % or more, or a lost acknowledged change. With --bless the table is written to
# docs/bench/soak-shapes.md (a plain run writes nothing in the repository).
#   scripts/soak-serve.sh [--bless] [COUNT] [CLIENTS]
#   BLIP_ONNX_BIN=target/debug/blip-onnx scripts/soak-serve.sh …   (an already built binary)
set -euo pipefail
cd "$(dirname "$0")/.."
out=()
if [ "${1:-}" = "--bless" ]; then
  out=(--out docs/bench/soak-shapes.md)
  shift
fi
count="${1:-10000}"
clients="${2:-32}"
eval "$(scripts/fetch-onnxruntime.sh)"
bin="${BLIP_ONNX_BIN:-}"
if [ -z "$bin" ]; then
  cargo build --release --quiet -p blip-onnx-cli
  bin=target/release/blip-onnx
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for head in caption retrieval vqa; do
  "$bin" convert "fixtures/shapes/models/shapes-$head" -o "$work/$head" >/dev/null
done
"$bin" index -p "$work/retrieval" fixtures/shapes/test/images -o "$work/shapes.idx" --quiet >/dev/null
python3 tools/soak_serve.py --bin "$bin" --packages "$work" --index "$work/shapes.idx" \
  --images fixtures/shapes/test/images --clients "$clients" --count "$count" "${out[@]}"
