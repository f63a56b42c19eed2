#!/usr/bin/env bash
# Creates the developer-side reference environment (torch + transformers) used to build fixtures
# and PyTorch baselines. CI never runs this. Usage: tools/reference/setup.sh [VENV_DIR]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${1:-${BLIP_REF_VENV:-$HOME/.cache/blip-onnx/reference-venv}}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q -r "$here/requirements.txt"
echo "$venv/bin/python"
