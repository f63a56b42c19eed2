"""Threads: inference releases the GIL, and a shared model gives the same answers from many threads."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import sys


def test_shared_model_from_threads_gives_serial_results(models, images):
    model = models["caption"]
    serial = [[c.tokens for c in model.caption([im], beams=1)] for im in images]
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(lambda im: [c.tokens for c in model.caption([im], beams=1)], images))
    assert threaded == serial


def test_inference_releases_the_gil(models, images):
    """While one thread is inside a native call, another keeps running Python.

    The worker marks its native call; the main thread counts its own loop turns while the mark is
    up *and* the worker's frame stands on the native call. Were the GIL held through the call, the
    main thread could not run at all then (at most the turn or two around the call's entry/exit).
    """
    model = models["caption"]._native
    items, names = [str(p) for p in images] * 3, [str(p) for p in images] * 3
    inside = threading.Event()
    done = threading.Event()

    def work():
        for _ in range(3):
            inside.set()
            model.caption(items, names)  # the line the main thread looks for
            inside.clear()
        done.set()

    worker = threading.Thread(target=work)
    worker.start()
    call_line = work.__code__.co_firstlineno + 3
    turns = 0
    while not done.is_set():
        frame = sys._current_frames().get(worker.ident)
        if inside.is_set() and frame is not None and frame.f_code is work.__code__ and frame.f_lineno == call_line:
            turns += 1
        time.sleep(0.001)  # releases the GIL each turn, so a GIL-holding worker would stall us
    worker.join()
    assert turns >= 10
