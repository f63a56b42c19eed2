#!/usr/bin/env bash
# Closed-loop caption load on `blip-onnx serve` with the shapes caption package, both schedulers
# side by side: rounds alternate request-level and iteration-level (continuous) batching, each at
# every client count, with one decoding setting for all requests ("same") and with four settings
# mixed (beam 3, greedy, sampling, beam 2). Prints captions/s, p50/p99, errors; with --out also
# writes the table (Markdown) there. Not the base-size load benchmark.
#   scripts/serve-load-shapes.sh [--out FILE] [--rounds N] [CLIENTS...]   (default: 1 round, 1 4 8)
#   BLIP_ONNX_BIN=target/debug/blip-onnx scripts/serve-load-shapes.sh …   (an already built binary)
set -euo pipefail
cd "$(dirname "$0")/.."
out="" rounds=1
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    *) break ;;
  esac
done
[ $# -gt 0 ] || set -- 1 4 8
eval "$(scripts/fetch-onnxruntime.sh)"
# BLIP_ONNX_BIN: an already built binary (skips the release build).
bin="${BLIP_ONNX_BIN:-}"
if [ -z "$bin" ]; then
  cargo build --release --quiet -p blip-onnx-cli
  bin=target/release/blip-onnx
fi
. scripts/lib.sh
work=$(mktemp -d)
trap 'stop_server; rm -rf "$work"' EXIT
pkgs=$(shapes_packages "$bin" "$work/packages")
: > "$work/results.jsonl"
for round in $(seq 1 "$rounds"); do
  for scheduler in request iteration; do
    BLIP_SCHEDULER=$scheduler start_server "$work/log" "$bin" --package "$pkgs/caption" --threads 2
    addr=$SERVER_ADDR
    for mix in same mixed; do
      for clients in "$@"; do
        python3 tools/serve_load.py "http://$addr" "$clients" $((96 / clients)) "$mix" "$scheduler" "$round" \
          | tee -a "$work/results.jsonl"
      done
    done
    stop_server
  done
done
python3 tools/serve_load.py --table "$work/results.jsonl" "$*" "$rounds" > "$work/table.md"
cat "$work/table.md"
if [ -n "$out" ]; then
  mkdir -p "$(dirname "$out")"
  cp "$work/table.md" "$out.tmp" && mv "$out.tmp" "$out"
fi
