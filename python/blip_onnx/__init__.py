"""BLIP captioning, image-text retrieval and VQA on ONNX Runtime, without torch or transformers.

    import blip_onnx
    model = blip_onnx.BlipModel.open("blip-caption-base")
    print(model.caption(["photo.jpg"])[0].text)

Model packages are written by :func:`convert` (or the ``blip-onnx convert`` CLI) from a Hugging Face
or salesforce/BLIP checkpoint. ONNX Runtime is the ``onnxruntime`` package's own shared library.
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence, Union

from . import _native
from ._model import Answer, BlipModel, Caption, Hit, ImageLike, ItmScore
from ._native import (
    BlipError,
    ConvertError,
    DeviceError,
    ImageError,
    InferenceError,
    InputError,
    OnnxRuntimeError,
    PackageError,
    QuantizeError,
    SessionError,
    TextError,
)
from ._runtime import onnxruntime_library

__all__ = [
    "Answer",
    "BlipError",
    "BlipModel",
    "Caption",
    "ConvertError",
    "DeviceError",
    "Hit",
    "ImageError",
    "ImageLike",
    "InferenceError",
    "InputError",
    "ItmScore",
    "OnnxRuntimeError",
    "PackageError",
    "QuantizeError",
    "SessionError",
    "TextError",
    "caption_defaults",
    "convert",
    "onnxruntime_library",
    "quantize",
]

__version__ = "0.1.0"

PathLike = Union[str, "os.PathLike[str]"]


def caption_defaults() -> Dict[str, object]:
    """The library's captioning defaults (what :meth:`BlipModel.caption` uses for options left unset)."""
    return dict(_native.caption_defaults())


def convert(
    checkpoint: PathLike,
    output: PathLike,
    *,
    image_size: Optional[int] = None,
    config: Optional[PathLike] = None,
    tokenizer: Optional[PathLike] = None,
    head: Optional[str] = None,
    external_data: Optional[str] = None,
    force: bool = False,
) -> Dict[str, object]:
    """Converts a BLIP checkpoint into a model package (as ``blip-onnx convert``).

    ``checkpoint``: a Hugging Face folder (config.json + model.safetensors / pytorch_model.bin) or a
    salesforce/BLIP ``.pth``. ``image_size``: package image size (position embeddings are
    interpolated when it differs). ``config``: a config.json for ``.pth`` files. ``tokenizer``:
    tokenizer.json / vocab.txt or a folder holding one. ``head``: ``caption``, ``retrieval`` or
    ``vqa`` when the checkpoint does not say. ``external_data``: ``auto`` (default), ``always`` or
    ``never``. The package is written to a temporary folder and renamed into place when complete;
    ``force`` replaces an existing one. Returns the report: ``output`` (a ``pathlib.Path``), ``head``,
    ``seconds`` and per-graph ``graphs`` (role, bytes, nodes, seconds).
    Raises :class:`ConvertError`.
    """
    return _native.convert(
        os.fspath(checkpoint),
        os.fspath(output),
        image_size=image_size,
        config=None if config is None else os.fspath(config),
        tokenizer=None if tokenizer is None else os.fspath(tokenizer),
        head=head,
        external_data=external_data,
        force=force,
    )


def quantize(
    package: PathLike,
    output: PathLike,
    *,
    target: str = "native",
    precision: Optional[str] = None,
    policy: str = "default",
    block_size: Optional[int] = None,
    accuracy_level: Optional[int] = None,
    reduce_range: Optional[bool] = None,
    weight_type: Optional[str] = None,
    asymmetric: Optional[bool] = None,
    keep_embeddings: Optional[bool] = None,
    keep_fp32: Optional[Sequence[str]] = None,
    force: bool = False,
) -> List[Dict[str, object]]:
    """Writes a quantized copy of a package (as ``blip-onnx quantize``).

    ``target``: ``native`` (ONNX Runtime), ``web`` (onnxruntime-web's wasm: INT8 on every graph,
    QUInt8 weights) or ``webgpu`` (FP16); it sets the defaults below and the manifest's runtimes.
    ``precision``: ``int8`` (dynamic INT8, standard ops; the default except for webgpu), ``int4``
    (weight-only, MatMulNBits) or ``fp16``. ``policy``: ``default`` (int8: the encoders, int4: the
    decoder, fp16: every graph; web int8: every graph),
    ``encoders``, ``decoder``, ``all``, or comma-separated roles. INT4: ``block_size`` (default 128)
    and ``accuracy_level`` (default 4), ``asymmetric`` blocks. INT8: ``reduce_range`` (7-bit),
    ``weight_type`` (``qint8`` / ``quint8``). ``keep_embeddings`` leaves the word embeddings float;
    ``keep_fp32``: FP16 op types kept in FP32. Options left at ``None`` keep the library defaults.
    Returns one dict per graph. Raises :class:`QuantizeError`.
    """
    return _native.quantize(
        os.fspath(package),
        os.fspath(output),
        target=target,
        precision=precision,
        policy=policy,
        block_size=block_size,
        accuracy_level=accuracy_level,
        reduce_range=reduce_range,
        weight_type=weight_type,
        asymmetric=asymmetric,
        keep_embeddings=keep_embeddings,
        keep_fp32=None if keep_fp32 is None else list(keep_fp32),
        force=force,
    )
