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
work=$(mktemp -d)
server=""
cleanup() {
  if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
for head in caption retrieval vqa; do
  "$bin" convert "fixtures/shapes/models/shapes-$head" -o "$work/$head" >/dev/null
done
"$bin" index -p "$work/retrieval" fixtures/shapes/test/images -o "$work/shapes.idx" --quiet >/dev/null
BLIP_PORT=0 "$bin" serve --package "$work/caption" --package "$work/retrieval" --package "$work/vqa" \
  --index "$work/shapes.idx" --threads 2 --max-batch-wait-ms 1 2>"$work/serve.log" &
server=$!
for _ in $(seq 1 200); do
  addr=$(sed -n 's|.*listening on http://||p' "$work/serve.log" | head -n1)
  [ -n "$addr" ] && break
  sleep 0.1
done
[ -n "$addr" ] || { cat "$work/serve.log" >&2; exit 1; }
for _ in $(seq 1 200); do
  curl -sf "http://$addr/health/ready" >/dev/null && break
  sleep 0.1
done
# DELETE /v1/index/{id} is excluded: removing the fixtures' images would only shrink what the
# other operations see (it is covered by the Rust tests).
"$st" run "http://$addr/openapi.json" \
  --checks "${ST_CHECKS:-not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance}" \
  --max-examples "$examples" --workers 1 --phases examples,coverage,fuzzing \
  --exclude-method DELETE --suppress-health-check all --warnings off
