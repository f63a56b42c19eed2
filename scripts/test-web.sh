#!/usr/bin/env bash
# blip-onnx in the browser, end to end (part of scripts/test.sh): builds the web assets
# (scripts/build-web.sh), converts the shapes packages, exports the demo site with a gallery of
# shapes test images, and drives it in headless Chromium (web/test/web.test.mjs: captions, VQA
# and search equal the native CLI's on wasm and on WebGPU (SwiftShader); execution provider
# choice; reload from Cache Storage; corrupt graph).
# Installs Debian's chromium when it is missing. With --bless the screenshot goes to
# docs/web/demo.png (committed files are rewritten only when asked).
#   scripts/test-web.sh [--bless]
set -euo pipefail
cd "$(dirname "$0")/.."
screenshot=""
case "${1:-}" in
  --bless) screenshot="$PWD/docs/web/demo.png" ;;
  "") ;;
  *) echo "usage: scripts/test-web.sh [--bless]" >&2; exit 2 ;;
esac
start=$(date +%s)
. scripts/lib.sh
ensure_chromium
eval "$(scripts/fetch-onnxruntime.sh)"
# scripts/test.sh has built the browser assets already (BLIP_WEB_BUILT=1), and its cargo test
# embedded them: building them again would relink every test binary below.
[ "${BLIP_WEB_BUILT:-}" = 1 ] || scripts/build-web.sh
cli="$(scripts/debug-cli.sh)"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for head in caption retrieval vqa; do
  "$cli" convert fixtures/shapes/models/shapes-$head -o "$work/packages/shapes-$head" >/dev/null
  "$cli" quantize "$work/packages/shapes-$head" --target web -o "$work/packages/shapes-$head-web" >/dev/null
  "$cli" quantize "$work/packages/shapes-$head" --target webgpu --precision int4 --policy all -o "$work/packages/shapes-$head-webgpu" >/dev/null
done
"$cli" quantize "$work/packages/shapes-caption" --target webgpu -o "$work/packages/shapes-caption-webgpu-fp16" >/dev/null
mkdir -p "$work/gallery" "$work/packages"
# Six test images: the search ranks them, captions and answers run on them.
for i in 00000 00001 00002 00003 00004 00005; do cp fixtures/shapes/test/images/test_$i.png "$work/gallery/"; done
"$cli" export-web --web-dir web "$work"/packages/shapes-{caption,retrieval,vqa} --gallery "$work/gallery" -o "$work/site" >/dev/null
"$cli" export-web --web-dir web "$work"/packages/shapes-{caption,retrieval,vqa}-web --gallery "$work/gallery" -o "$work/site-web" >/dev/null
"$cli" export-web --web-dir web "$work"/packages/shapes-{caption,retrieval,vqa}-webgpu --gallery "$work/gallery" -o "$work/site-webgpu" >/dev/null

# An installed binary is whole: built after build-web.sh with the assets it carries
# (BLIP_ONNX_EMBED_WEB=1; release builds, which `cargo install` makes, always carry them), copied
# alone into an install root and run from another directory with no checkout in reach, it exports
# the same site and serves. Built with the workspace's features (scripts/debug-cli.sh says why).
if [ -n "${BLIP_TEST_CLI:-}" ]; then
  BLIP_ONNX_EMBED_WEB=1 cargo test "${TEST_PACKAGES[@]}" --no-run --quiet
else
  BLIP_ONNX_EMBED_WEB=1 cargo build --quiet -p blip-onnx-cli
fi
mkdir -p "$work/install/bin" "$work/elsewhere"
cp "${CARGO_TARGET_DIR:-target}/debug/blip-onnx" "$work/install/bin/"
(
  cd "$work/elsewhere"
  env -u BLIP_ONNX_WEB_DIR "$work/install/bin/blip-onnx" export-web "$work"/packages/shapes-{caption,retrieval,vqa} \
    --gallery "$work/gallery" -o site >/dev/null
  diff -r "$work/site" site >/dev/null || { echo "test-web.sh: the installed binary exported a different site" >&2; exit 1; }
  "$work/install/bin/blip-onnx" serve --package "$work/packages/shapes-caption" --port 0 --threads 1 2> serve.log &
  pid=$!
  for _ in $(seq 200); do grep -q "listening on" serve.log && break; sleep 0.1; done
  addr=$(sed -n 's/.*listening on http:\/\///p' serve.log)
  for _ in $(seq 300); do curl -sf "http://$addr/health/ready" >/dev/null && break; sleep 0.1; done
  caption=$(curl -sf "http://$addr/v1/caption" -F images=@"$OLDPWD/fixtures/shapes/test/images/test_00000.png")
  kill "$pid"; wait "$pid" || true
  want=$("$cli" caption -p "$work/packages/shapes-caption" --format json "$OLDPWD/fixtures/shapes/test/images/test_00000.png")
  [ "$(echo "$caption" | python3 -c 'import json,sys; print(json.load(sys.stdin)["results"][0]["caption"])')" = \
    "$(echo "$want" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["caption"])')" ] \
    || { echo "test-web.sh: the installed binary's server captioned differently: $caption" >&2; exit 1; }
)
echo "test-web.sh: the installed binary exports the same site and serves from another directory" >&2
# Packages the test loads itself (the demo takes one per head): FP16 for WebGPU beside the WebGPU
# site; FP32 (made for WebGPU) beside the web INT8 site, whose page has only the wasm build.
mkdir -p "$work/site-webgpu/extra" "$work/site-web/extra"
cp -r "$work/packages/shapes-caption-webgpu-fp16" "$work/site-webgpu/extra/"
cp -r "$work/packages/shapes-caption" "$work/site-web/extra/"

BLIP_ONNX="$(realpath "$cli")" BLIP_SITE_DIR="$work/site" BLIP_WEB_SITE_DIR="$work/site-web" \
BLIP_WEBGPU_SITE_DIR="$work/site-webgpu" BLIP_PACKAGES="$work/packages" \
BLIP_GALLERY="$work/gallery" BLIP_VQA_QUESTIONS="$PWD/fixtures/shapes/test/vqa_questions.json" \
BLIP_SCREENSHOT="$screenshot" \
  node --test --test-concurrency=1 web/test/
echo "test-web.sh: passed in $(( $(date +%s) - start )) s"
