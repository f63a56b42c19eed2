#!/usr/bin/env python3
"""Runs onnx.checker (full check, with shape inference) on every graph of the given packages."""
import json
import sys
from pathlib import Path

import onnx

failed = 0
checked = 0
for pkg in map(Path, sys.argv[1:]):
    manifest = json.loads((pkg / "blip.json").read_text())
    for role, graph in manifest["graphs"].items():
        path = pkg / graph["file"]
        try:
            onnx.checker.check_model(str(path), full_check=True)
            checked += 1
        except Exception as e:  # noqa: BLE001 - report every failing graph
            failed += 1
            print(f"FAIL {path}: {e}", file=sys.stderr)
print(f"onnx-checker: {checked} passed, {failed} failed")
sys.exit(1 if failed or not checked else 0)
