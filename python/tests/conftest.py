"""Shared fixtures: the shapes packages converted by the native CLI, and the CLI's own outputs.

The CLI binary comes from BLIP_ONNX_CLI (scripts/python-test.sh builds it); it finds ONNX Runtime
through ORT_DYLIB_PATH as in the Rust tests.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any, List

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHAPES = ROOT / "fixtures" / "shapes"
CLI = Path(os.environ.get("BLIP_ONNX_CLI", ROOT / "target" / "debug" / "blip-onnx"))


def run_cli(*args: Any, check: bool = True) -> subprocess.CompletedProcess:
    if not CLI.is_file():
        pytest.fail(f"the blip-onnx CLI is not built at {CLI} (set BLIP_ONNX_CLI)")
    proc = subprocess.run(
        [str(CLI), *[str(a) for a in args]], capture_output=True, text=True, env={**os.environ}
    )
    if check and proc.returncode != 0:
        pytest.fail(f"blip-onnx {' '.join(map(str, args))} failed ({proc.returncode}): {proc.stderr}")
    return proc


def cli_json(*args: Any) -> Any:
    return json.loads(run_cli(*args, "--format", "json", "--threads", "1").stdout)


@pytest.fixture(scope="session")
def packages(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("packages")
    found = {}
    for head in ("caption", "retrieval", "vqa"):
        run_cli("convert", SHAPES / "models" / f"shapes-{head}", "-o", out / head)
        found[head] = out / head
    return found


@pytest.fixture(scope="session")
def images() -> List[Path]:
    """Six shapes test images (PNG) and one JPEG photo."""
    shapes = sorted((SHAPES / "test" / "images").glob("*.png"))[:6]
    return shapes + [ROOT / "fixtures" / "images" / "grace_hopper.jpg"]


@pytest.fixture(scope="session")
def models(packages: dict):
    import blip_onnx

    return {head: blip_onnx.BlipModel.open(path, threads=1) for head, path in packages.items()}
