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
. scripts/lib.sh
work=$(mktemp -d)
trap 'stop_server; rm -rf "$work"' EXIT
pkgs=$(shapes_packages "$bin" "$work/packages")
mkdir "$work/images"
for i in 00000 00001 00002 00003 00004 00005 00006 00007 00008 00009; do
  cp "fixtures/shapes/test/images/test_$i.png" "$work/images/"
done
"$bin" index -p "$pkgs/retrieval" "$work/images" -o "$work/shapes.idx" --quiet >/dev/null
image=fixtures/shapes/test/images/test_00001.png
question="how many shapes are there?"
query="three shapes : a red circle , a yellow square and a yellow triangle"
export EXPECT_CAPTION=$("$bin" caption -p "$pkgs/caption" "$image" --format json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["caption"])')
export EXPECT_ANSWER=$("$bin" vqa -p "$pkgs/vqa" "$image" "$question" --format json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["answer"])')
export EXPECT_FIRST=$("$bin" search -p "$pkgs/retrieval" "$work/shapes.idx" "$query" --format json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["image"])')
case "$EXPECT_FIRST" in */test_00001.png) ;; *) echo "the CLI ranks $EXPECT_FIRST first for the test caption" >&2; exit 1 ;; esac
start_server "$work/serve.log" "$bin" --package "$pkgs/caption" --package "$pkgs/retrieval" \
  --package "$pkgs/vqa" --index "$work/shapes.idx" --threads 2
addr=$SERVER_ADDR
export BASE="http://$addr" IMAGE="$PWD/$image" QUESTION="$question" QUERY="$query"
screenshot="$work/serve-page.png"
[ -n "$bless" ] && screenshot="$PWD/docs/serve-page.png"
export SCREENSHOT="$screenshot" PROFILE="$work/profile"
NODE_PATH="$modules/node_modules" node tests-browser/page.test.mjs
