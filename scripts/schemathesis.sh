#!/usr/bin/env bash
# schemathesis (pinned, scripts/setup-schemathesis.sh) against a running `blip-onnx serve` with the
# three shapes packages and an index: no 5xx, every response conforms to docs/openapi.json.
#   scripts/schemathesis.sh [MAX_EXAMPLES]      (default 30 per operation)
set -euo pipefail
cd "$(dirname "$0")/.."
examples="${1:-30}"
eval "$(scripts/fetch-onnxruntime.sh)"
st=$(scripts/setup-schemathesis.sh)
bin="$(scripts/debug-cli.sh)"
. scripts/lib.sh
work=$(mktemp -d)
trap 'stop_server; rm -rf "$work"' EXIT
pkgs=$(shapes_packages "$bin" "$work/packages")
"$bin" index -p "$pkgs/retrieval" fixtures/shapes/test/images -o "$work/shapes.idx" --quiet >/dev/null
start_server "$work/serve.log" "$bin" --package "$pkgs/caption" --package "$pkgs/retrieval" \
  --package "$pkgs/vqa" --index "$work/shapes.idx" --threads 2 --max-batch-wait-ms 1
addr=$SERVER_ADDR
# DELETE /v1/index/{id} is excluded: removing the fixtures' images would only shrink what the
# other operations see (it is covered by the Rust tests).
"$st" run "http://$addr/openapi.json" \
  --checks "${ST_CHECKS:-not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance}" \
  --max-examples "$examples" --workers 1 --phases examples,coverage,fuzzing \
  --exclude-method DELETE --suppress-health-check all --warnings off
