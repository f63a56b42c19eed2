#!/usr/bin/env bash
# The page at / in real headless Chromium (tests-browser/page.test.mjs): an uploaded shapes image is
# captioned as the CLI captions it, "how many shapes are there?" gets the CLI's answer, and a test
# caption's image ranks first in search. With --bless the screenshot goes to docs/serve-page.png
# (committed files are rewritten only when asked); else to a temporary folder.
#   scripts/page-test.sh [--bless]
set -euo pipefail
cd "$(dirname "$0")/.."
bless=""
case "${1:-}" in
  "") ;;
  --bless) bless=1 ;;
  *) echo "usage: scripts/page-test.sh [--bless]" >&2; exit 2 ;;
esac
eval "$(scripts/fetch-onnxruntime.sh)"
modules=$(scripts/setup-browser.sh)
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
mkdir "$work/images"
for i in 00000 00001 00002 00003 00004 00005 00006 00007 00008 00009; do
  cp "fixtures/shapes/test/images/test_$i.png" "$work/images/"
done
"$bin" index -p "$work/retrieval" "$work/images" -o "$work/shapes.idx" --quiet >/dev/null
image=fixtures/shapes/test/images/test_00001.png
question="how many shapes are there?"
query="three shapes : a red circle , a yellow square and a yellow triangle"
export EXPECT_CAPTION=$("$bin" caption -p "$work/caption" "$image" --format json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["caption"])')
export EXPECT_ANSWER=$("$bin" vqa -p "$work/vqa" "$image" "$question" --format json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["answer"])')
export EXPECT_FIRST=$("$bin" search -p "$work/retrieval" "$work/shapes.idx" "$query" --format json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["image"])')
case "$EXPECT_FIRST" in */test_00001.png) ;; *) echo "the CLI ranks $EXPECT_FIRST first for the test caption" >&2; exit 1 ;; esac
BLIP_PORT=0 "$bin" serve --package "$work/caption" --package "$work/retrieval" --package "$work/vqa" \
  --index "$work/shapes.idx" --threads 2 2>"$work/serve.log" &
server=$!
addr=""
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
export BASE="http://$addr" IMAGE="$PWD/$image" QUESTION="$question" QUERY="$query"
screenshot="$work/serve-page.png"
[ -n "$bless" ] && screenshot="$PWD/docs/serve-page.png"
export SCREENSHOT="$screenshot" PROFILE="$work/profile"
NODE_PATH="$modules/node_modules" node tests-browser/page.test.mjs
