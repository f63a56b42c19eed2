"""Finding the ONNX Runtime library shipped by the ``onnxruntime`` wheel.

The package is located without importing it: its Python module loads a second copy of ONNX Runtime
into the process, which blip_onnx does not need.
"""

from __future__ import annotations

import importlib.machinery
import importlib.metadata
import os
from pathlib import Path
from typing import Optional, Sequence

from ._native import ORT_MIN_MINOR, ORT_VERSION, OnnxRuntimeError

_LIBRARY_PATTERNS = ("libonnxruntime.so.*", "libonnxruntime.*.dylib", "onnxruntime.dll")
_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu")
_FIX = f"install it with `pip install onnxruntime=={ORT_VERSION}`"


def _distribution_version(path: Optional[Sequence[str]]) -> Optional[str]:
    where = {"path": list(path)} if path is not None else {}
    for name in _DISTRIBUTIONS:
        for dist in importlib.metadata.distributions(name=name, **where):
            return f"{dist.metadata['Name']} {dist.version}"
    return None


def onnxruntime_library(path: Optional[Sequence[str]] = None) -> str:
    """Returns the ONNX Runtime shared library of the installed ``onnxruntime`` package.

    ``path`` replaces ``sys.path`` for the search (for tests). Raises :class:`OnnxRuntimeError` when
    the package is missing, too old, or ships no shared library.
    """
    spec = importlib.machinery.PathFinder.find_spec(
        "onnxruntime", list(path) if path is not None else None
    )
    if spec is None or not spec.submodule_search_locations:
        raise OnnxRuntimeError(f"the onnxruntime package is not installed; {_FIX}")
    dist = _distribution_version(path)
    if dist is not None:
        major, _, rest = dist.rsplit(" ", 1)[1].partition(".")
        minor = rest.split(".")[0]
        if major != "1" or not minor.isdigit() or int(minor) < ORT_MIN_MINOR:
            raise OnnxRuntimeError(
                f"{dist} is installed, but blip-onnx needs ONNX Runtime 1.{ORT_MIN_MINOR} or newer; {_FIX}"
            )
    capi = Path(next(iter(spec.submodule_search_locations))) / "capi"
    for pattern in _LIBRARY_PATTERNS:
        found = sorted(capi.glob(pattern))
        if found:
            return os.fspath(found[-1])
    raise OnnxRuntimeError(
        f"{capi} holds no ONNX Runtime shared library (looked for {', '.join(_LIBRARY_PATTERNS)}); {_FIX}"
    )
