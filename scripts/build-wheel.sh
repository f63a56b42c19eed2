#!/usr/bin/env bash
# Builds the blip_onnx wheel (python/, PyO3 + maturin) and prints its path: one abi3 wheel
# (CPython >= 3.9), linked against glibc 2.28 with zig (the build venv's ziglang, found through PATH),
# so it is tagged manylinux_2_28 like onnxruntime's wheel, in target/python-wheels.
#   WHEEL="$(scripts/build-wheel.sh)"
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="$(scripts/python-setup.sh)"
rm -rf target/python-wheels
# The index's ANN graph (usearch, through numkong) inlines popcnt intrinsics into functions
# compiled for baseline x86-64, which zig's clang refuses; every x86-64-v2 CPU (2008 on) has it.
export CFLAGS_x86_64_unknown_linux_gnu="-mpopcnt" CXXFLAGS_x86_64_unknown_linux_gnu="-mpopcnt"
(cd python && PATH="$VENV/bin:$PATH" maturin build --release --quiet --zig \
    --compatibility manylinux_2_28 --out ../target/python-wheels) >&2
wheels=(target/python-wheels/blip_onnx-*-cp39-abi3-manylinux_2_28_x86_64.whl)
[ -f "${wheels[0]}" ] || { echo "build-wheel.sh: no abi3 wheel in target/python-wheels" >&2; exit 1; }
echo "$PWD/${wheels[0]}"
