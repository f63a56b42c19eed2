"""Errors: one exception class per kind, with the library's message naming the item."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import blip_onnx
from conftest import cli_json, run_cli


def test_exception_classes_share_one_base():
    kinds = [
        blip_onnx.OnnxRuntimeError, blip_onnx.PackageError, blip_onnx.SessionError, blip_onnx.DeviceError,
        blip_onnx.InferenceError, blip_onnx.ImageError, blip_onnx.TextError, blip_onnx.InputError,
        blip_onnx.ConvertError, blip_onnx.QuantizeError,
    ]
    assert len(set(kinds)) == len(kinds)
    assert all(issubclass(k, blip_onnx.BlipError) and k is not blip_onnx.BlipError for k in kinds)


def test_bad_images_are_named_and_the_others_still_captioned(models, packages, images, tmp_path):
    missing = tmp_path / "missing.png"
    corrupt = b"\x89PNG\r\n\x1a\nnot really a png"
    got = models["caption"].caption([images[0], missing, corrupt, images[1]], beams=1, errors="return")
    expected = cli_json("caption", "-p", packages["caption"], "--beams", "1", images[0], images[1])
    assert [got[0].tokens, got[3].tokens] == [e["tokens"] for e in expected]
    assert isinstance(got[1], blip_onnx.ImageError) and str(missing) in str(got[1])
    assert isinstance(got[2], blip_onnx.ImageError) and "bytes[2]" in str(got[2])
    # The CLI reports the same error text for the missing file.
    cli = run_cli("caption", "-p", packages["caption"], "--beams", "1", missing, check=False)
    assert cli.returncode == 3 and str(got[1]) in cli.stderr
    with pytest.raises(blip_onnx.ImageError, match="missing.png"):
        models["caption"].caption([images[0], missing])


def test_bad_arguments_raise_input_errors(models, images):
    caption = models["caption"]
    with pytest.raises(blip_onnx.InputError, match=r"beams: 0 is out of range: 1 \(greedy\) to 16"):
        caption.caption(images[:1], beams=0)
    with pytest.raises(blip_onnx.InputError, match="max_length"):
        caption.caption(images[:1], max_length=1)
    with pytest.raises(blip_onnx.InputError, match="sequence of images"):
        caption.caption(images[0])
    with pytest.raises(blip_onnx.InputError, match=r"images\[1\].*got int"):
        caption.caption([images[0], 42])
    with pytest.raises(blip_onnx.ImageError, match=r"array\[0\].*float64"):
        caption.caption([np.zeros((8, 8, 3))])
    with pytest.raises(blip_onnx.ImageError, match=r"array\[0\].*\(8, 8, 4\)"):
        caption.caption([np.zeros((8, 8, 4), dtype=np.uint8)])
    with pytest.raises(blip_onnx.InputError, match="no image embeddings"):
        caption.embed_images(images[:1])
    with pytest.raises(blip_onnx.PackageError, match="no text_encoder graph"):
        caption.embed_texts(["a circle"])
    with pytest.raises(blip_onnx.InputError, match="rerank needs the images"):
        models["retrieval"].rank_images("a circle", np.zeros((2, 4), np.float32), rerank=1)
    with pytest.raises(blip_onnx.InputError, match=r"^answers: is empty"):
        models["vqa"].answer(images[0], ["what shape?"], answers=[])


def test_open_errors(packages, tmp_path):
    with pytest.raises(blip_onnx.PackageError, match="not a blip-onnx package"):
        blip_onnx.BlipModel.open(tmp_path)
    with pytest.raises(blip_onnx.InputError, match="expected cpu, cuda or cuda:N"):
        blip_onnx.BlipModel.open(packages["caption"], device="tpu")
    with pytest.raises(blip_onnx.DeviceError, match="CUDA"):
        blip_onnx.BlipModel.open(packages["caption"], device="cuda")
    with pytest.raises(blip_onnx.ConvertError, match="no such file"):
        blip_onnx.convert(tmp_path / "nothing", tmp_path / "out")
    with pytest.raises(blip_onnx.InputError, match="head"):
        blip_onnx.convert(tmp_path, tmp_path / "out", head="segmentation")


def _fake_onnxruntime(root: Path, version: str, library: bool = True) -> Path:
    dist = root / f"onnxruntime-{version}.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: onnxruntime\nVersion: {version}\n")
    capi = root / "onnxruntime" / "capi"
    capi.mkdir(parents=True)
    (root / "onnxruntime" / "__init__.py").write_text("raise ImportError('blip_onnx must not import onnxruntime')\n")
    if library:
        (capi / f"libonnxruntime.so.{version}").write_bytes(b"\x7fELF not a library")
    return root


def test_onnxruntime_lookup_errors(tmp_path):
    real = blip_onnx.onnxruntime_library()
    assert Path(real).name == "libonnxruntime.so.1.32.0" and Path(real).parent.name == "capi"
    with pytest.raises(blip_onnx.OnnxRuntimeError, match="not installed.*pip install onnxruntime==1.32.0"):
        blip_onnx.onnxruntime_library(path=[str(tmp_path)])
    old = _fake_onnxruntime(tmp_path / "old", "1.20.0")
    with pytest.raises(blip_onnx.OnnxRuntimeError, match="onnxruntime 1.20.0 is installed.*1.31 or newer"):
        blip_onnx.onnxruntime_library(path=[str(old)])
    empty = _fake_onnxruntime(tmp_path / "empty", "1.32.0", library=False)
    with pytest.raises(blip_onnx.OnnxRuntimeError, match="holds no ONNX Runtime shared library"):
        blip_onnx.onnxruntime_library(path=[str(empty)])


def _open_in_new_process(package: Path, pythonpath: Path, *flags: str) -> str:
    """Opens `package` in a fresh interpreter (a failed ONNX Runtime load is final for a process);
    returns what it printed: the OnnxRuntimeError's message."""
    code = f"""
import blip_onnx
try:
    blip_onnx.BlipModel.open({str(package)!r})
except blip_onnx.OnnxRuntimeError as e:
    print("OnnxRuntimeError:", e)
"""
    proc = subprocess.run(
        [sys.executable, *flags, "-c", code],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(pythonpath)},
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_unusable_onnxruntime_is_one_clear_error(packages, tmp_path):
    broken = _fake_onnxruntime(tmp_path / "broken", "1.32.0")
    out = _open_in_new_process(packages["caption"], broken)
    assert "OnnxRuntimeError:" in out and "is not a usable ONNX Runtime library" in out
    assert str(broken) in out

    # No onnxruntime at all: only blip_onnx and numpy on the path (-S: no site-packages).
    isolated = tmp_path / "isolated"
    isolated.mkdir()
    for module in (blip_onnx, np):
        folder = Path(module.__file__).parent
        for part in (folder, folder.with_name(folder.name + ".libs")):  # numpy.libs: its openblas
            if part.exists():
                (isolated / part.name).symlink_to(part)
    out = _open_in_new_process(packages["caption"], isolated, "-S")
    assert "OnnxRuntimeError: the onnxruntime package is not installed" in out
