"""The wheel's ``blip-onnx`` console script is the native CLI: same output, same exit codes, the
onnxruntime wheel's library (no ORT_DYLIB_PATH), and ``serve`` stops on SIGTERM / SIGINT.

Every run of the console script here has ORT_DYLIB_PATH removed and the fetch script's cache moved
to an empty folder, so the only ONNX Runtime it can find is the onnxruntime wheel's.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, List, Tuple

import pytest

import blip_onnx
from conftest import CLI, ROOT, SHAPES, run_cli

SCRIPT = Path(sys.executable).with_name("blip-onnx")


@pytest.fixture(scope="module")
def pip_env(tmp_path_factory: pytest.TempPathFactory) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "ORT_DYLIB_PATH"}
    env["BLIP_ONNX_CACHE"] = str(tmp_path_factory.mktemp("no-ort-cache"))
    return env


def run_pip(env: dict, *args: Any) -> subprocess.CompletedProcess:
    assert SCRIPT.is_file(), f"the wheel installed no console script at {SCRIPT}"
    return subprocess.run(
        [str(SCRIPT), *[str(a) for a in args]], capture_output=True, text=True, env=env, timeout=300
    )


@pytest.fixture(scope="module")
def pip_package(pip_env: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pip-convert") / "caption"
    proc = run_pip(pip_env, "convert", SHAPES / "models" / "shapes-caption", "-o", out)
    assert proc.returncode == 0, proc.stderr
    return out


def test_help_is_the_native_help(pip_env):
    got = run_pip(pip_env, "--help")
    want = run_cli("--help")
    assert got.returncode == 0, got.stderr
    assert got.stdout == want.stdout and "convert" in got.stdout


def package_files(folder: Path) -> list[str]:
    # Hidden files are not the package: `.blip-verified` is written by the first open that checks
    # the graphs' checksums, so it depends on which tests opened the folder before.
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def test_convert_writes_the_native_package(pip_package, packages):
    native = packages["caption"]
    assert package_files(pip_package) == package_files(native)
    assert "blip.json" in package_files(native)
    for graph in sorted(native.glob("*.onnx")):
        assert (pip_package / graph.name).read_bytes() == graph.read_bytes(), graph.name


def test_caption_prints_the_native_captions(pip_env, pip_package, packages, images):
    args = ["--format", "json", "--threads", "1", *images]
    got = run_pip(pip_env, "caption", "-p", pip_package, *args)
    want = run_cli("caption", "-p", packages["caption"], *args)
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout) == json.loads(want.stdout)
    assert len(json.loads(got.stdout)) == len(images)


def test_usage_error_exits_2_with_the_native_message(pip_env):
    got = run_pip(pip_env, "caption")
    want = run_cli("caption", check=False)
    assert (got.returncode, want.returncode) == (2, 2)
    assert got.stderr == want.stderr and "--package" in got.stderr


def test_runtime_error_exits_1_with_the_native_message(pip_env, tmp_path, images):
    missing = tmp_path / "no-such-package"
    got = run_pip(pip_env, "caption", "-p", missing, images[0])
    want = run_cli("caption", "-p", missing, images[0], check=False)
    assert (got.returncode, want.returncode) == (1, 1)
    assert got.stderr == want.stderr and str(missing) in got.stderr


@contextmanager
def serving(cmd: List[str], env: dict) -> Iterator[Tuple[subprocess.Popen, str]]:
    proc = subprocess.Popen(
        [*cmd, "--port", "0", "--threads", "1"], stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()  # blocks until the server listens (or exits)
        assert "listening on http://" in line, line
        url = line.strip().rsplit(" ", 1)[-1]
        wait_ready(url, proc)
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def wait_ready(url: str, proc: subprocess.Popen) -> None:
    """The server listens while it still loads and warms the packages (503 until ready)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/health/ready", timeout=10) as resp:
                if resp.status == 200:
                    return
        except urllib.error.HTTPError as err:
            if err.code != 503:
                raise
        time.sleep(0.2)
    pytest.fail(f"{url} not ready (exit code {proc.poll()})")


def caption_request(url: str, image: Path) -> dict:
    body = json.dumps({"images": [base64.b64encode(image.read_bytes()).decode()], "beams": 1})
    req = urllib.request.Request(
        f"{url}/v1/caption", data=body.encode(), headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=120) as resp:
        return json.loads(resp.read())


def loaded_onnxruntime(pid: int) -> set:
    maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
    return {os.path.realpath(line.split()[-1]) for line in maps if "libonnxruntime" in line}


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_answers_as_native_and_stops_on_signal(pip_env, pip_package, packages, images, stop):
    with serving([str(CLI), "serve", "--package", str(packages["caption"])], dict(os.environ)) as (_, url):
        want = caption_request(url, images[0])
    with serving([str(SCRIPT), "serve", "--package", str(pip_package)], pip_env) as (proc, url):
        got = caption_request(url, images[0])
        assert got == want and want["results"][0]["caption"]
        # The console script's process is the server, on the onnxruntime wheel's library.
        assert loaded_onnxruntime(proc.pid) == {os.path.realpath(blip_onnx.onnxruntime_library())}
        proc.send_signal(stop)
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"blip-onnx serve did not stop on {stop.name}")
        rest = proc.stderr.read() if proc.stderr else ""
    assert code == 0, rest
    assert "shutting down" in rest and "Traceback" not in rest, rest


def test_python_threads_run_while_the_cli_runs(pip_env):
    """cli_main releases the GIL: a Python thread keeps running during a native command. With the
    GIL held, no tick could be stamped between the call's start and end."""
    code = (
        "import threading, time, blip_onnx._native as n\n"
        "ticks = []\n"
        "def tick():\n"
        "    while not done: ticks.append(time.monotonic()); time.sleep(0.005)\n"
        "done = False\n"
        "t = threading.Thread(target=tick); t.start()\n"
        "t0 = time.monotonic()\n"
        f"rc = n.cli_main(['blip-onnx', 'convert', {str(SHAPES / 'models' / 'shapes-caption')!r},"
        " '-o', __import__('tempfile').mkdtemp() + '/pkg'])\n"
        "t1 = time.monotonic()\n"
        "done = True; t.join()\n"
        "print(rc, sum(1 for x in ticks if t0 < x < t1), t1 - t0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=pip_env)
    rc, inside, seconds = proc.stdout.strip().splitlines()[-1].split()  # after convert's report
    assert rc == "0", proc.stderr
    assert int(inside) >= 2, f"{inside} ticks during a {float(seconds):.3f} s call"
