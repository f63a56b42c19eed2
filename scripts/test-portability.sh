#!/usr/bin/env bash
# Portability suite (part of scripts/test.sh): every flavour (FP32, INT8, INT4, FP16, web INT8,
# optimized FP32 and INT8) of the fixture and shapes models, every graph on onnxruntime-node and
# onnxruntime-web (npm, in Node), OpenVINO (PyPI, f32), tract (PyPI) and ORT's mobile format
# (convert_onnx_models_to_ort, Runtime style) against native ONNX Runtime on the same seeded inputs
# (tools/portability/suite.py has the gates). Fails on every cell where the measurement disagrees
# with `blip-onnx check --target`, made for that runtime or not: a graph check passes that fails its
# gate, or one check declares that passes. With --bless it writes the matrix to
# docs/portability.{json,md} and the README; else committed files are left as they are.
# Then end to end (tools/portability/e2e.test.mjs): blip-onnx's browser module (the Rust task code as
# wasm, scripts/build-web.sh) over onnxruntime-web, onnxruntime-node, the ORT-format conversions,
# OpenVINO and tract, on every shapes flavour made for each: captions, VQA answers and search
# rankings equal the native CLI's.
#   scripts/test-portability.sh [--bless]
set -euo pipefail
bless=()
case "${1:-}" in
  --bless) bless=(--bless) ;;
  "") ;;
  *) echo "usage: scripts/test-portability.sh [--bless]" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."
start=$(date +%s)
eval "$(scripts/fetch-onnxruntime.sh)"
cli="$(scripts/debug-cli.sh)"
. scripts/lib.sh
# scripts/test.sh has built the browser assets already (BLIP_WEB_BUILT=1).
[ "${BLIP_WEB_BUILT:-}" = 1 ] || scripts/build-web.sh >/dev/null
venv="$(portability_venv)"
npm_ci_once tools/portability

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
p="$work/packages"
for model in fixtures/models/tiny-{caption,retrieval,vqa} fixtures/shapes/models/shapes-{caption,retrieval,vqa}; do
  n=$(basename "$model")
  "$cli" convert "$model" -o "$p/$n" >/dev/null
  "$cli" quantize "$p/$n" -o "$p/$n--int8" >/dev/null
  "$cli" quantize "$p/$n" --precision int4 --policy all -o "$p/$n--int4" >/dev/null
  "$cli" quantize "$p/$n" --precision fp16 -o "$p/$n--fp16" >/dev/null
  "$cli" quantize "$p/$n" --target web -o "$p/$n--web" >/dev/null
  "$cli" optimize "$p/$n" -o "$p/$n--opt" >/dev/null
  "$cli" optimize "$p/$n--int8" -o "$p/$n--opt-int8" >/dev/null
done
suite=tools/portability/suite.py
"$venv/bin/python" "$suite" cases "$work/out" "$p"/* --cli "$cli"
for runtime in ort-mobile openvino tract; do "$venv/bin/python" "$suite" run "$runtime" "$work/out"; done
for runtime in node web; do node tools/portability/run_node.mjs "$runtime" "$work/out"; done
"$venv/bin/python" "$suite" report "$work/out" "${bless[@]}"

mkdir -p "$work/gallery"
for i in 00000 00001 00002 00003 00004 00005; do cp fixtures/shapes/test/images/test_$i.png "$work/gallery/"; done
for runtime in web node ort-mobile openvino tract; do
  BLIP_E2E_RUNTIME=$runtime BLIP_PYTHON="$venv/bin/python" BLIP_ONNX="$cli" BLIP_PACKAGES="$p" BLIP_GALLERY="$work/gallery" \
  BLIP_ORT_MODELS="$([ $runtime = ort-mobile ] && echo "$work/out/ort-mobile-models")" \
  BLIP_VQA_QUESTIONS="$PWD/fixtures/shapes/test/vqa_questions.json" \
    node --import ./tools/portability/register.mjs --test --test-concurrency=1 tools/portability/e2e.test.mjs
done
echo "test-portability.sh: passed in $(( $(date +%s) - start )) s"
