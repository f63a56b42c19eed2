"""The ``blip-onnx`` console script: the native command line, run inside this package's extension.

``pip install blip-onnx`` puts ``blip-onnx`` on PATH (``[project.scripts]``); it is the same CLI as
the Rust binary (every subcommand, same output and exit codes), loading ONNX Runtime from the
``onnxruntime`` wheel as :class:`blip_onnx.BlipModel` does.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Optional


def _self_command() -> Optional[str]:
    """The executable that runs this CLI again, for subcommands that start copies of themselves
    (``bench`` measures each package in a child): the console script, not the Python interpreter
    the native side sees as its own executable."""
    argv0 = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if argv0 is not None and argv0.suffix != ".py" and os.access(argv0, os.X_OK) and argv0.is_file():
        return os.fspath(argv0.resolve())
    script = Path(sys.executable).with_name("blip-onnx")  # `python -m blip_onnx._cli` in a venv
    return os.fspath(script) if script.is_file() else None


def main() -> None:
    from ._runtime import onnxruntime_library
    from ._native import OnnxRuntimeError, cli_main

    # ONNX Runtime: ORT_DYLIB_PATH when set (the native CLI's override), else the onnxruntime
    # wheel's library. Set before any native thread starts; subprocesses inherit it.
    if not os.environ.get("ORT_DYLIB_PATH"):
        try:
            os.environ["ORT_DYLIB_PATH"] = onnxruntime_library()
        except OnnxRuntimeError as err:
            # A broken install (onnxruntime is a dependency). Commands that run no model (--help,
            # convert, quantize) still work; the others fail with the native search's message.
            print(f"blip-onnx: warning: {err}", file=sys.stderr)
    command = _self_command()
    if command is not None:
        os.environ.setdefault("BLIP_ONNX_EXE", command)
    # The native binary's signal handling: Python's SIGINT handler only sets a flag for the
    # interpreter (which waits in native code), so ctrl-c would neither stop `convert` nor reach
    # `serve` alone; back to the default action, `serve` installs its own SIGINT/SIGTERM handlers.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    sys.exit(cli_main(["blip-onnx", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
