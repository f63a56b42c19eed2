#!/usr/bin/env bash
# Batch captioning / embedding throughput on random-weight base packages: the CLI, the blip_onnx.ray
# pipeline (1 actor x 2 threads, 2 actors x 1 thread) and transformers' BLIP in the same Ray
# pipeline (1 actor x 2 threads), side by side in one run (tools/bench_ray.py), into docs/bench/ray-base.{json,md}
# and the README's table.
#   scripts/bench-ray.sh [ROUNDS] [IMAGES]      (default: 2 rounds, 128 images; PyTorch in the first)
# Developer-side: the reference environment (tools/reference/setup.sh: torch, transformers) gets the
# wheel and pinned Ray installed; the checkpoints and packages are made in .cache/bench/ when missing
# (the same ones as scripts/bench-base.sh: the default quantized caption package, INT8 retrieval).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-2}"
count="${2:-128}"
py="${BLIP_REFERENCE_PYTHON:-$(tools/reference/setup.sh | tail -n1)}"
b=.cache/bench
eval "$(scripts/fetch-onnxruntime.sh)"
cargo build --release --quiet -p blip-onnx-cli
bin="$PWD/target/release/blip-onnx"

images="$b/ray-images-$count"
scripts/bench-inputs.sh "$py" "$bin" "$images" "$count"

wheel="$(scripts/build-wheel.sh)"
"$py" -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps "$wheel"
"$py" -m pip install --quiet --disable-pip-version-check -r python/requirements-ray.txt
# Ray starts its workers at nice 15 (worker_niceness): anything else running on the machine would then
# slow the Ray rows and not the CLI's. The benchmark runs them at the CLI's priority.
RAY_worker_niceness=0 RAY_AUTH_MODE=disabled "$py" tools/bench_ray.py --images "$images" --cli "$bin" \
  --caption-package "$b/base-caption-mixed" --caption-checkpoint "$b/base-caption" \
  --embed-package "$b/base-retrieval-int8" --embed-checkpoint "$b/base-retrieval" \
  --threads 2 --rounds "$rounds" --shards 4 -o docs/bench/ray-base --readme docs/benchmarks.md
