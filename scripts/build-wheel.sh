#!/usr/bin/env bash
# Builds the blip_onnx wheel (python/, PyO3 + maturin) and prints its path, in target/python-wheels.
#   WHEEL="$(scripts/build-wheel.sh)"          the wheel to ship: one abi3 wheel (CPython >= 3.9),
#       release profile, linked against glibc 2.28 with zig (the build venv's ziglang, found through
#       PATH), so it is tagged manylinux_2_28 like onnxruntime's wheel;
#   WHEEL="$(scripts/build-wheel.sh --test)"   the same module for the test suite: the dev profile
#       with the host's linker, so it reuses the crates `cargo test --workspace` just built (a few
#       crates rebuild, against ~12 minutes for a cold release cross-link), tagged linux_x86_64.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=release
case "${1:-}" in
  "") ;;
  --test) mode=test ;;
  *) echo "build-wheel.sh: unknown option $1 (use --test or nothing)" >&2; exit 2 ;;
esac
VENV="$(scripts/python-setup.sh)"
rm -rf target/python-wheels
if [ "$mode" = release ]; then
  # The index's ANN graph (usearch, through numkong) inlines popcnt intrinsics into functions
  # compiled for baseline x86-64, which zig's clang refuses; every x86-64-v2 CPU (2008 on) has it.
  export CFLAGS_x86_64_unknown_linux_gnu="-mpopcnt" CXXFLAGS_x86_64_unknown_linux_gnu="-mpopcnt"
  (cd python && PATH="$VENV/bin:$PATH" maturin build --release --quiet --zig \
      --compatibility manylinux_2_28 --out ../target/python-wheels) >&2
  tag=manylinux_2_28_x86_64
else
  (cd python && PATH="$VENV/bin:$PATH" maturin build --profile dev --quiet \
      --compatibility linux --out ../target/python-wheels) >&2
  tag=linux_x86_64
fi
wheels=(target/python-wheels/blip_onnx-*-cp39-abi3-"$tag".whl)
[ -f "${wheels[0]}" ] || { echo "build-wheel.sh: no abi3 $tag wheel in target/python-wheels" >&2; exit 1; }
echo "$PWD/${wheels[0]}"
