"""The public model class and its result types."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, List, Literal, Optional, Sequence, Tuple, Union

import numpy as np

from . import _native
from ._native import ImageError, InputError
from ._runtime import onnxruntime_library

if TYPE_CHECKING:  # Pillow is optional: PIL images are recognised by duck typing.
    import PIL.Image

ImageLike = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, np.ndarray, "PIL.Image.Image"]
"""An image: a file path, encoded bytes (PNG, JPEG, WebP, GIF, BMP), a PIL image, or an
``H×W×3`` (or ``H×W`` grey) uint8 numpy array in RGB order."""

#: Images per vision-encoder batch in :meth:`BlipModel.embed_images` (the CLI's ``--batch-size``).
EMBED_BATCH_SIZE = 8


@dataclass(frozen=True)
class Caption:
    """A generated caption."""

    text: str
    """The caption, prompt removed (as BLIP)."""
    tokens: List[int]
    """Generated token ids, prompt included, ending with [SEP] when the caption finished."""
    score: Optional[float]
    """Beam score (beam search only)."""

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class ItmScore:
    """Image-text matching of one text with the image."""

    text: str
    match_probability: float
    """Softmax of the ITM head's logits: P(match)."""
    itm_logits: Tuple[float, float]
    """Raw ITM logits (no match, match)."""
    itc_similarity: float
    """Cosine similarity of the ITC embeddings."""


@dataclass(frozen=True)
class Answer:
    """An answer to one question."""

    question: str
    answer: str
    tokens: Optional[List[int]] = None
    """Generated ids (generation mode)."""
    candidates: Optional[List[Tuple[str, float]]] = None
    """Rank mode: the first-token top-k answers with their scores, in first-token order."""


@dataclass(frozen=True)
class Hit:
    """One image ranked for a text."""

    index: int
    """Row of the image in the embeddings."""
    score: float
    """ITM logit + ITC similarity when reranked, else the ITC similarity."""
    itc: float
    itm: Optional[float]


def _prepare(images: Iterable[ImageLike]) -> Tuple[List[Any], List[str]]:
    """Turns user images into what the native module reads (paths, bytes, uint8 arrays) and names
    each one for error messages."""
    if isinstance(images, (str, bytes, os.PathLike, np.ndarray)) or _is_pil(images):
        raise InputError("images must be a sequence of images (wrap a single image in a list)")
    items: List[Any] = []
    names: List[str] = []
    for i, image in enumerate(images):
        if isinstance(image, (str, os.PathLike)):
            path = os.fspath(image)
            items.append(path)
            names.append(str(path))
        elif isinstance(image, (bytes, bytearray, memoryview)):
            items.append(bytes(image))
            names.append(f"bytes[{i}]")
        elif isinstance(image, np.ndarray):
            name = f"array[{i}]"
            items.append(_rgb_array(image, name))
            names.append(name)
        elif _is_pil(image):
            name = getattr(image, "filename", "") or f"PIL[{i}]"
            items.append(np.asarray(image.convert("RGB")))
            names.append(name)
        else:
            items.append(image)  # the native side names the unsupported type
            names.append(f"images[{i}]")
    return items, names


def _is_pil(obj: object) -> bool:
    return hasattr(obj, "convert") and hasattr(obj, "mode") and hasattr(obj, "size")


def _rgb_array(array: np.ndarray, name: str) -> np.ndarray:
    if array.dtype != np.uint8:
        raise ImageError(f"image {name}: expected a uint8 array, got {array.dtype}")
    if array.ndim == 2:
        return np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ImageError(f"image {name}: expected an H×W×3 RGB array, got shape {array.shape}")
    return array


class BlipModel:
    """A blip-onnx model package (written by ``blip-onnx convert`` or :func:`blip_onnx.convert`)
    loaded on ONNX Runtime.

    One instance is safe to share between threads (calls run one at a time); inference runs with
    the GIL released, so other Python threads keep running. Open one model per thread or process to
    run them in parallel.
    """

    def __init__(self, native: _native.Model) -> None:
        self._native = native

    @classmethod
    def open(cls, path: Union[str, "os.PathLike[str]"], *, threads: int = 0, device: str = "cpu") -> "BlipModel":
        """Opens the package folder at ``path``.

        ``threads``: intra-op threads (0: one per core); the first model of a process sizes the thread
        pool its models share. ``device``: ``cpu``, or ``cuda`` / ``cuda:N`` (an error when it cannot be
        used, never a silent CPU fallback).

        Raises :class:`OnnxRuntimeError` when the ``onnxruntime`` package is missing or unusable,
        :class:`PackageError` for a bad package, :class:`DeviceError` for an unusable device.
        """
        library = onnxruntime_library()
        return cls(_native.Model(os.fspath(path), library, threads, device))

    @property
    def head(self) -> str:
        """The package's task head: ``caption``, ``retrieval`` or ``vqa``."""
        return self._native.head

    def __repr__(self) -> str:
        return f"BlipModel({os.fspath(self._native.package)!r}, head={self.head!r})"

    def caption(
        self,
        images: Sequence[ImageLike],
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
        errors: Literal["raise", "return"] = "raise",
    ) -> List[Union[Caption, _native.BlipError]]:
        """Captions images (caption package), in one batch.

        Options left at ``None`` keep the library defaults, BLIP's COCO evaluation (see
        :func:`blip_onnx.caption_defaults`): prompt ``"a picture of "`` (stripped from the text),
        beam search with 3 beams, 5 to 20 tokens (prompt included). ``beams=1`` is greedy;
        ``sample=True`` is nucleus sampling (``top_p``, ``top_k``, ``temperature``, ``seed``).

        An image that cannot be read raises its :class:`ImageError` (naming it) with
        ``errors="raise"``; with ``errors="return"`` its slot holds that exception and the other
        images are still captioned.
        """
        if errors not in ("raise", "return"):
            raise InputError(f"errors={errors!r}: expected 'raise' or 'return'")
        items, names = _prepare(images)
        results = self._native.caption(
            items,
            names,
            prompt=prompt,
            beams=beams,
            sample=sample,
            top_p=top_p,
            top_k=top_k,
            temperature=temperature,
            seed=seed,
            max_length=max_length,
            min_length=min_length,
            length_penalty=length_penalty,
            repetition_penalty=repetition_penalty,
        )
        out: List[Union[Caption, _native.BlipError]] = []
        for result in results:
            if isinstance(result, BaseException):
                if errors == "raise":
                    raise result
                out.append(result)
            else:
                text, tokens, score = result
                out.append(Caption(text, list(tokens), score))
        return out

    def embed_images(self, images: Sequence[ImageLike], *, batch_size: int = EMBED_BATCH_SIZE) -> np.ndarray:
        """ITC embeddings of images (retrieval package): ``float32 [n, E]``, L2-normalised.

        Raises :class:`ImageError` naming the first image that cannot be read."""
        items, names = _prepare(images)
        if batch_size < 1:
            raise InputError("batch_size must be at least 1")
        if not items:
            raise InputError("no images given")
        parts = [
            self._native.embed_images(items[i : i + batch_size], names[i : i + batch_size])
            for i in range(0, len(items), batch_size)
        ]
        return np.concatenate(parts, axis=0)

    def embed_texts(self, texts: Union[str, Sequence[str]]) -> np.ndarray:
        """ITC embeddings of texts (retrieval package): ``float32 [n, E]``, L2-normalised."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            raise InputError("no texts given")
        return self._native.embed_texts(texts)

    def itm(self, image: ImageLike, texts: Union[str, Sequence[str]]) -> List[ItmScore]:
        """Image-text matching of one image with each text (retrieval package)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        items, names = _prepare([image])
        logits, itc = self._native.itm(items[0], names[0], texts)
        # P(match) = softmax(logits)[1], written to stay finite for any logits.
        probability = 1.0 / (1.0 + np.exp(logits[:, 0].astype(np.float64) - logits[:, 1]))
        return [
            ItmScore(t, float(p), (float(l0), float(l1)), float(s))
            for t, p, (l0, l1), s in zip(texts, probability, logits, itc)
        ]

    def answer(
        self,
        image: ImageLike,
        questions: Union[str, Sequence[str]],
        answers: Optional[Sequence[str]] = None,
        *,
        k: Optional[int] = None,
        mask_question_padding: bool = False,
    ) -> List[Answer]:
        """Answers questions about one image (VQA package).

        Without ``answers``: generated answers (beam 3, BLIP's settings). With ``answers``: LAVIS's
        rank mode, the ``k`` answers whose first token is likeliest (default 128) re-scored by their
        full likelihood, the best one returned. ``mask_question_padding`` (generation) masks the
        question padding in cross-attention, which BLIP and transformers do not.
        """
        questions = [questions] if isinstance(questions, str) else list(questions)
        items, names = _prepare([image])
        if answers is None:
            generated = self._native.answer(
                items[0], names[0], questions, mask_question_padding=mask_question_padding
            )
            return [Answer(q, text, list(ids)) for q, (text, ids) in zip(questions, generated)]
        answers = list(answers)
        ranked = self._native.rank_answers(items[0], names[0], questions, answers, k)
        return [
            Answer(q, answers[best], candidates=[(answers[i], s) for i, s in candidates])
            for q, (best, candidates) in zip(questions, ranked)
        ]

    def rank_images(
        self,
        text: str,
        embeddings: np.ndarray,
        k: Optional[int] = None,
        rerank: int = 0,
        *,
        images: Optional[Sequence[ImageLike]] = None,
    ) -> List[Hit]:
        """Ranks images for a text (retrieval package) and returns the best ``k`` (default 10).

        ``embeddings``: the images' ITC embeddings (from :meth:`embed_images`), one row per image.
        The best ``rerank`` by ITC similarity are re-scored with the ITM head (score = ITM logit + ITC
        similarity, as BLIP's evaluation); that needs the ``images`` themselves, row-aligned with
        ``embeddings``. ``rerank=0`` ranks by ITC only.
        """
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        if embeddings.ndim != 2:
            raise InputError(f"embeddings must be [n, E], got shape {embeddings.shape}")
        if images is not None:
            items, names = _prepare(images)
            hits = self._native.rank_images(text, embeddings, rerank, items, names, k=k)
        else:
            hits = self._native.rank_images(text, embeddings, rerank, k=k)
        return [Hit(i, score, itc, itm) for i, score, itc, itm in hits]
