#!/usr/bin/env bash
# Load benchmark of `blip-onnx serve` on random-weight base packages (not a test): wrk at 1, 4, 16 and
# 64 clients against the default quantized caption package and, side by side in the same run, a
# FastAPI/uvicorn server around transformers' BLIP (PyTorch eager, the same threads); then search with
# ITM rerank 16 over an index of 10 000 images (INT8 retrieval package) and a 10 000-request soak for
# the RSS growth; a 10 000-request caption soak on the shapes package. tools/bench_serve.py drives it,
# into docs/bench/serve-base.{json,md} and the README's table.
#   scripts/bench-serve.sh [SECONDS] [CLIENTS] [SCENARIOS]
#     (default: 90 s per client count; 1,4,16,64; caption,search,soak — a subset replaces those
#     scenarios in docs/bench/serve-base.json and keeps the others; the index is built only for search)
# Developer-side: the reference environment (tools/reference/setup.sh) gets FastAPI, uvicorn and the
# wheel; Debian's wrk is installed when missing. The 10 000 indexed files are 1 000 distinct synthetic
# images, each under ten names: `index` encodes a file's content once (about 1 s an image on 2 cores
# without VNNI, so 10 000 distinct ones would take close to 3 h) and gives every copy its own entry and
# its own 0.9 MB of rerank states. A query's work does not depend on the content: it embeds the text,
# scores all 10 000 embeddings and reranks 16 candidates from their stored states. Later runs reuse the
# index.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-90}"
clients="${2:-1,4,16,64}"
scenarios="${3:-caption,search,soak}"
py="${BLIP_REFERENCE_PYTHON:-$(tools/reference/setup.sh | tail -n1)}"
b=.cache/bench
command -v wrk >/dev/null || { apt-get install -y -q wrk >/dev/null; }
eval "$(scripts/fetch-onnxruntime.sh)"
cargo build --release --quiet -p blip-onnx-cli
bin="$PWD/target/release/blip-onnx"
images="$b/serve-images-10000-of-1000"
scripts/bench-inputs.sh "$py" "$bin" "$images" 10000 1000
# `index` reuses the entries of unchanged files, so a finished index costs nothing to check.
[[ ",$scenarios," != *,search,* ]] ||
  "$bin" index -p "$b/base-retrieval-int8" --threads 2 -o "$b/serve-index-10000.idx" "$images" --quiet
[ -f "$b/shapes-caption/blip.json" ] ||
  "$bin" convert fixtures/shapes/models/shapes-caption -o "$b/shapes-caption" --force >/dev/null

wheel="$(scripts/build-wheel.sh)"
"$py" -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps "$wheel"
"$py" -m pip install --quiet --disable-pip-version-check -r tools/reference/requirements-serve.txt
"$py" tools/bench_serve.py --cli "$bin" --threads 2 --seconds "$seconds" --clients "$clients" \
  --caption-package "$b/base-caption-mixed" --caption-checkpoint "$b/base-caption" \
  --retrieval-package "$b/base-retrieval-int8" --index "$b/serve-index-10000.idx" --images "$images" \
  --soak-caption-package "$b/shapes-caption" --soak-requests 10000 --scenarios "$scenarios" -o docs/bench/serve-base --readme docs/benchmarks.md
