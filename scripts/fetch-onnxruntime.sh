#!/usr/bin/env bash
# Fetches libonnxruntime.so from the PyPI `onnxruntime` wheel (pinned version and sha256) into a
# cache folder, and prints the export line for ORT_DYLIB_PATH.
#   eval "$(scripts/fetch-onnxruntime.sh)"
# blip-onnx also finds the library in this cache by itself when ORT_DYLIB_PATH is unset.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
ORT_VERSION=$(pinned ORT_VERSION)
ORT_WHEEL=$(pinned ORT_WHEEL)
ORT_WHEEL_SHA256=$(pinned ORT_WHEEL_SHA256)
CACHE="$(blip_cache)/onnxruntime-$ORT_VERSION"
LIB="$CACHE/libonnxruntime.so.$ORT_VERSION"

if [ "$(uname -sm)" != "Linux x86_64" ]; then
  echo "fetch-onnxruntime.sh: only Linux x86_64 is pinned here; set ORT_DYLIB_PATH to an ONNX Runtime $ORT_VERSION library" >&2
  exit 1
fi

if [ ! -f "$LIB" ]; then
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  # The wheel flavour is pinned so the result does not depend on the local Python version;
  # the hash is checked by pip itself (--require-hashes).
  echo "onnxruntime==$ORT_VERSION --hash=sha256:$ORT_WHEEL_SHA256" > "$tmp/req.txt"
  python3 -m pip download --quiet --no-deps --only-binary=:all: --require-hashes \
      --platform manylinux_2_28_x86_64 --python-version 3.11 --implementation cp --abi cp311 \
      -r "$tmp/req.txt" -d "$tmp" >&2
  [ -f "$tmp/$ORT_WHEEL" ] || { echo "fetch-onnxruntime.sh: $ORT_WHEEL not downloaded" >&2; exit 1; }
  mkdir -p "$CACHE"
  python3 - "$tmp/$ORT_WHEEL" "$CACHE" "$ORT_VERSION" <<'PY'
import os, sys, zipfile
wheel, dest, version = sys.argv[1:]
member = f"onnxruntime/capi/libonnxruntime.so.{version}"
with zipfile.ZipFile(wheel) as z:
    data = z.read(member)
part = os.path.join(dest, os.path.basename(member) + ".part")
with open(part, "wb") as f:
    f.write(data)
os.chmod(part, 0o755)
os.replace(part, part[: -len(".part")])  # atomic: never a half-written library in the cache
PY
fi
echo "export ORT_DYLIB_PATH=$LIB"
