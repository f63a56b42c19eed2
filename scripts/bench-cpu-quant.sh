#!/usr/bin/env bash
# INT8 on every CPU class (issue 27), measured by running this script; writes docs/bench/cpu-quant.md
# and .json (nothing else writes them; the test suite never runs this).
#
# On a base caption package with random weights: FP32, the previous default quantized form
# (full-range INT8 encoders + INT4 decoder) and the current one (7-bit INT8 encoders + INT4 decoder),
# side by side in one process with rounds interleaved (crates/blip-runtime/examples/quant_bench.rs);
# the vision encoder's other INT8 forms (MatMulNBits 8/4-bit, accuracy level 4) with ORT's own profile
# naming the kernels (tools/bench/cpu_quant_graphs.py); and open-to-first-caption-ready, median of 10
# cold processes (examples/open_time.rs). Each on this CPU as it is and as an AVX2-only CPU: tools/bench/avx2only.c
# hides AVX-512, VNNI and AMX from CPUID (Linux CPUID faulting), so ORT picks its AVX2 kernels as on
# AMD EPYC Zen 2/3. Every timing run holds /tmp/blip-bench.lock.
#   scripts/bench-cpu-quant.sh [ROUNDS]        (default 3)
# The checkpoint: .cache/bench/base-caption (scripts/bench-base.sh's) when present, else a seeded
# random one written with numpy (tools/bench/random_checkpoint.py). Python: BLIP_BENCH_PYTHON, else the
# portability suite's venv (numpy, onnx, onnxruntime 1.32; scripts/test-portability.sh makes it).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-3}"
b=.cache/bench
py="${BLIP_BENCH_PYTHON:-$HOME/.cache/blip-onnx/portability-venv/bin/python}"
eval "$(scripts/fetch-onnxruntime.sh)"
cargo build --release --quiet -p blip-onnx-cli
cargo build --release --quiet -p blip-runtime --examples
bin=target/release/blip-onnx
ex=target/release/examples
mkdir -p "$b"

ckpt="$b/base-caption"
if [ ! -f "$ckpt/config.json" ]; then
  ckpt="$b/rand-base-caption"
  [ -f "$ckpt/config.json" ] || "$py" tools/bench/random_checkpoint.py "$ckpt"
fi
p="$b/cq"
"$bin" convert "$ckpt" -o "$p-fp32" --force >/dev/null
"$bin" quantize "$p-fp32" -o "$p-int8-full" --full-range --force >/dev/null
"$bin" quantize "$p-int8-full" -o "$p-full" --precision int4 --force >/dev/null
"$bin" quantize "$p-fp32" -o "$p-int8" --force >/dev/null
"$bin" quantize "$p-int8" -o "$p-default" --precision int4 --force >/dev/null

shim="$b/avx2only.so"
cc -O2 -shared -fPIC -o "$shim" tools/bench/avx2only.c
lock() { flock /tmp/blip-bench.lock "$@"; }
out="$b/cq-results"
rm -rf "$out" && mkdir -p "$out"
for cpu in native avx2; do
  pre=()
  [ "$cpu" = avx2 ] && pre=(env "LD_PRELOAD=$PWD/$shim")
  "${pre[@]}" lock "$ex/quant_bench" fixtures/images/grace_hopper.jpg "$rounds" 5 2 \
    "$p-fp32" "$p-full" "$p-default" >"$out/$cpu-caption.json"
  "${pre[@]}" lock "$py" tools/bench/cpu_quant_graphs.py "$p-fp32" "$p-int8-full" "$p-int8" \
    --rounds "$rounds" --threads 2 --profile-dir "$out/profiles-$cpu" >"$out/$cpu-graphs.json"
  for i in $(seq 10); do
    for pkg in fp32 full default; do
      echo "{\"package\": \"$pkg\", \"run\": $("${pre[@]}" lock "$ex/open_time" "$p-$pkg" 2)}"
    done
  done >"$out/$cpu-open.jsonl"
done
"$py" tools/bench/cpu_quant_report.py "$out" --cpu "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs)" \
  --rounds "$rounds" -o docs/bench/cpu-quant
