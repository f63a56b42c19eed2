"""Type stubs of the Rust extension module (crates/blip-python). Use the ``blip_onnx`` package API."""

import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

ORT_VERSION: str
ORT_MIN_MINOR: int

class BlipError(Exception): ...
class OnnxRuntimeError(BlipError): ...
class PackageError(BlipError): ...
class SessionError(BlipError): ...
class DeviceError(BlipError): ...
class InferenceError(BlipError): ...
class ImageError(BlipError): ...
class TextError(BlipError): ...
class InputError(BlipError): ...
class ConvertError(BlipError): ...
class QuantizeError(BlipError): ...

# A native image item: a path, encoded bytes, or an H×W×3 uint8 array.
_Item = Union[str, bytes, npt.NDArray[np.uint8]]

class Model:
    def __init__(
        self, path: Union[str, os.PathLike[str]], library: str, threads: int = 0, device: str = "cpu"
    ) -> None: ...
    @property
    def head(self) -> str: ...
    @property
    def package(self) -> Path: ...
    def caption(
        self,
        images: Sequence[_Item],
        names: Sequence[str],
        *,
        prompt: Optional[str] = None,
        beams: Optional[int] = None,
        sample: bool = False,
        top_p: Optional[float] = None,
        top_k: Optional[int] = None,
        temperature: Optional[float] = None,
        seed: Optional[int] = None,
        max_length: Optional[int] = None,
        min_length: Optional[int] = None,
        length_penalty: Optional[float] = None,
        repetition_penalty: Optional[float] = None,
    ) -> List[Union[Tuple[str, List[int], Optional[float]], BlipError]]: ...
    def embed_images(self, images: Sequence[_Item], names: Sequence[str]) -> npt.NDArray[np.float32]: ...
    def embed_texts(self, texts: Sequence[str]) -> npt.NDArray[np.float32]: ...
    def itm(
        self, image: _Item, name: str, texts: Sequence[str]
    ) -> Tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]: ...
    def answer(
        self, image: _Item, name: str, questions: Sequence[str], *, mask_question_padding: bool = False
    ) -> List[Tuple[str, List[int]]]: ...
    def rank_answers(
        self, image: _Item, name: str, questions: Sequence[str], answers: Sequence[str], k: Optional[int] = None
    ) -> List[Tuple[int, List[Tuple[int, float]]]]: ...
    def rank_images(
        self,
        text: str,
        embeddings: npt.NDArray[np.float32],
        rerank: int,
        images: Optional[Sequence[_Item]] = None,
        names: Optional[Sequence[str]] = None,
        k: Optional[int] = None,
    ) -> List[Tuple[int, float, float, Optional[float]]]: ...

def convert(
    checkpoint: str,
    output: str,
    *,
    image_size: Optional[int] = None,
    config: Optional[str] = None,
    tokenizer: Optional[str] = None,
    head: Optional[str] = None,
    external_data: Optional[str] = None,
    force: bool = False,
) -> Dict[str, Any]: ...
def quantize(
    package: str,
    output: str,
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
    keep_fp32: Optional[List[str]] = None,
    force: bool = False,
) -> List[Dict[str, Any]]: ...
def caption_defaults() -> Dict[str, Any]: ...

def cli_main(argv: List[str]) -> int: ...
