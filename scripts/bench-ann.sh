#!/usr/bin/env bash
# ANN crates for blip-index, measured side by side in one run: usearch (f32, f16, i8 storage),
# hnsw_rs, faiss's IndexHNSWFlat (faiss-cpu from PyPI, pinned in tools/requirements-bench-ann.txt)
# and exact search, on synthetic clustered 256-d unit vectors (how they are drawn:
# tools/bench-ann/src/main.rs), into docs/bench/ann-<N>.{md,json}.
#   scripts/bench-ann.sh [N] [QUERIES] [CENTRES]     (default 100000 2000 1000)
#   ENGINES="exact usearch-f16 faiss" scripts/bench-ann.sh 1000000 2000 10000   (a subset)
# Each timed run holds /tmp/blip-bench.lock, so other benchmarks on the machine do not overlap it.
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-100000}"
q="${2:-2000}"
centres="${3:-1000}"
threads=2
# Noise norm 0.75: a vector's cosine to its centre is ~0.8, and two of one cluster ~0.64.
sigma=0.75
work=".cache/bench-ann/data-$n"
venv=.cache/bench-ann/venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check -r tools/requirements-bench-ann.txt
py="$venv/bin/python"
# Its own target dir: the shared one is often locked by other builds.
export CARGO_TARGET_DIR="$PWD/.cache/bench-ann/target"
cargo build --release --quiet -p blip-bench-ann
bin="$CARGO_TARGET_DIR/release/bench-ann"
lock() { flock /tmp/blip-bench.lock "$@"; }
if [ ! -f "$work/gt.i32" ]; then
  "$bin" gen "$work" "$n" "$q" 256 "$centres" "$sigma" 7
  "$py" tools/bench_ann.py gt "$work"
fi
results=()
for engine in ${ENGINES:-exact usearch-f32 usearch-f16 usearch-i8 hnsw_rs faiss}; do
  echo "bench-ann: $engine at $n" >&2
  if [ "$engine" = faiss ]; then
    lock "$py" tools/bench_ann.py faiss "$work" "$threads" > "$work/faiss.json"
  else
    lock "$bin" run "$work" "$engine" "$threads" > "$work/$engine.json"
  fi
  results+=("$work/$engine.json")
done
mkdir -p docs/bench
"$py" tools/bench_ann.py table "$work" "docs/bench/ann-$n.md" "docs/bench/ann-$n.json" "${results[@]}"
cat "docs/bench/ann-$n.md"
