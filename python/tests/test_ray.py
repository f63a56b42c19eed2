"""blip_onnx.ray on a real two-node Ray cluster on loopback: results equal the CLI's, each image
exactly once, bad items as error rows, a killed driver resumes, a killed worker node is survived."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest

from conftest import SHAPES, cli_json, run_cli

if os.environ.get("BLIP_ONNX_REQUIRE_RAY") == "1":
    import ray  # noqa: F401  (scripts/python-test.sh installs it: never skipped in CI)
else:
    pytest.importorskip("ray")
import pyarrow as pa
import pyarrow.parquet as pq

RAY = str(Path(sys.executable).with_name("ray"))
SHARDS = 12
# Loopback only: no token authentication (Ray turns it on when ~/.ray/auth_token exists, and the
# nodes and drivers started here would have to share it).
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pids_with(text: str) -> List[int]:
    """Processes whose command line contains `text` (this cluster's temp dir or a node's port)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmdline:
                found.append(int(entry.name))
    return found


class Cluster:
    def __init__(self) -> None:
        # Short: Ray puts unix sockets under it (path length limit).
        self.temp = tempfile.mkdtemp(prefix="blipray", dir="/tmp")
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.worker_port = _free_port()

    def start(self) -> None:
        common = ["--num-cpus", "1", "--object-store-memory", str(100 * 1024**2), "--disable-usage-stats"]
        self._start("--head", "--port", str(self.port), "--node-ip-address", "127.0.0.1",
                    "--include-dashboard", "false", "--temp-dir", self.temp, *common)
        self.start_worker()

    def _start(self, *args: str) -> None:
        proc = subprocess.run([RAY, "start", *args], capture_output=True, text=True, env=ENV)
        assert proc.returncode == 0, proc.stderr + proc.stdout

    def start_worker(self) -> None:
        self._start("--address", self.address, "--node-ip-address", "127.0.0.1",
                    "--node-manager-port", str(self.worker_port), "--num-cpus", "1",
                    "--object-store-memory", str(100 * 1024**2), "--disable-usage-stats")

    def kill_worker_raylet(self) -> None:
        raylets = [p for p in _pids_with(f"--node_manager_port={self.worker_port}") if "raylet" in _comm(p)]
        assert len(raylets) == 1, raylets
        os.kill(raylets[0], signal.SIGKILL)

    def stop(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in _pids_with(self.temp):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            time.sleep(1)  # let them exit before the forced pass
        shutil.rmtree(self.temp, ignore_errors=True)


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text()
    except OSError:
        return ""


@pytest.fixture(scope="module")
def cluster():
    c = Cluster()
    try:
        c.start()
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def job_inputs(tmp_path_factory, packages):
    """A Parquet list of 300 shapes images plus a missing path and a corrupt file, and the CLI's
    captions (greedy) and embeddings of the images."""
    root = tmp_path_factory.mktemp("ray-inputs")
    images = sorted((SHAPES / "test" / "images").glob("*.png"))
    corrupt = root / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    missing = root / "missing.png"
    paths = [str(p) for p in images[:150]] + [str(missing)] + [str(p) for p in images[150:]] + [str(corrupt)]
    listing = root / "inputs.parquet"
    pq.write_table(pa.table({"id": [f"img{i:04d}" for i in range(len(paths))], "path": paths}), listing)
    captions = cli_json("caption", "-p", packages["caption"], "--beams", "1", *images)
    embeds = cli_json("embed", "-p", packages["retrieval"], "--image", *images)
    return {
        "listing": listing,
        "paths": paths,
        "bad": {str(missing), str(corrupt)},
        "captions": {c["image"]: c for c in captions},
        "embeddings": {e["image"]: np.array(e["embedding"], np.float32) for e in embeds},
    }


def _driver(cluster, packages, job_inputs, output: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "blip_onnx.ray", str(job_inputs["listing"]), str(output),
         "--caption-package", str(packages["caption"]), "--embed-package", str(packages["retrieval"]),
         "--address", cluster.address, "--shards", str(SHARDS), "--actors", "2", "--threads", "1",
         "--beams", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
    )


def _finish(proc: subprocess.Popen) -> Dict:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-4000:]
    # Ray forwards its workers' and raylet's log lines to the driver's stdout, sometimes after the
    # summary: the summary is the last JSON line, not necessarily the last line.
    summary = [line for line in out.splitlines() if line.startswith("{")]
    assert summary, out[-4000:]
    return json.loads(summary[-1])


def _shards(output: Path) -> List[Path]:
    return sorted(output.glob("part-*.parquet"))


def _wait_for_a_shard(output: Path, proc: subprocess.Popen) -> List[Path]:
    while not _shards(output):
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.05)
    return _shards(output)


def _check_output(output: Path, job_inputs) -> None:
    """Every shard complete and readable; every input exactly once; results equal the CLI's."""
    files = _shards(output)
    assert [f.name for f in files] == [f"part-{i:05d}-of-{SHARDS:05d}.parquet" for i in range(SHARDS)]
    assert not list(output.glob(".*.tmp"))
    table = pa.concat_tables([pq.read_table(f) for f in files])
    rows = table.to_pylist()
    assert sorted(r["id"] for r in rows) == [f"img{i:04d}" for i in range(len(job_inputs["paths"]))]
    assert [r["path"] for r in rows] == job_inputs["paths"]  # shards keep the input order
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 64)
    for r in rows:
        if r["path"] in job_inputs["bad"]:
            assert r["caption"] is None and r["embedding"] is None
            assert r["error"] and Path(r["path"]).name in r["error"]
            continue
        assert r["error"] is None
        cli = job_inputs["captions"][r["path"]]
        assert (r["caption"], r["caption_tokens"]) == (cli["caption"], cli["tokens"])
        assert np.abs(np.array(r["embedding"], np.float32) - job_inputs["embeddings"][r["path"]]).max() <= 1e-6


def test_two_nodes_write_every_image_once_as_the_cli(cluster, packages, job_inputs, tmp_path):
    summary = _finish(_driver(cluster, packages, job_inputs, tmp_path / "out"))
    assert summary["skipped"] == [] and len(summary["written"]) == SHARDS
    assert len({w["node"] for w in summary["written"]}) == 2, "both nodes ran shards"
    assert sum(w["errors"] for w in summary["written"]) == 2
    _check_output(tmp_path / "out", job_inputs)
    # A rerun finds every shard written and computes nothing.
    again = _finish(_driver(cluster, packages, job_inputs, tmp_path / "out"))
    assert again["written"] == [] and len(again["skipped"]) == SHARDS
    _check_index_from_shards(packages, job_inputs, tmp_path)


def _check_index_from_shards(packages, job_inputs, tmp_path: Path) -> None:
    """The cluster's shards become the CLI's search index: the two error rows are reported and
    left out (exit 3), and an ITC search over it ranks as the CLI's own embeddings do."""
    index = tmp_path / "from-shards.idx"
    proc = run_cli("index", "-p", packages["retrieval"], "--from-parquet", tmp_path / "out",
                   "-o", index, "--format", "json", check=False)
    assert proc.returncode == 3, proc.stderr
    assert "missing.png" in proc.stderr and "corrupt.png" in proc.stderr, proc.stderr
    summary = json.loads(proc.stdout)[0]
    assert (summary["images"], summary["shards"], summary["failed"]) == (len(job_inputs["paths"]) - 2, SHARDS, 2)
    query = "a red circle"
    text = np.array(cli_json("embed", "-p", packages["retrieval"], "--text", query)[0]["embedding"], np.float32)
    paths = sorted(job_inputs["embeddings"])
    scores = np.stack([job_inputs["embeddings"][p] for p in paths]) @ text
    want = [(paths[i], float(scores[i])) for i in np.argsort(-scores, kind="stable")[:5]]
    hits = cli_json("search", "-p", packages["retrieval"], index, query, "-k", "5", "--rerank", "0")
    assert [h["image"] for h in hits] == [p for p, _ in want]
    assert np.allclose([h["score"] for h in hits], [s for _, s in want], atol=1e-5)


def test_a_killed_job_resumes_without_recomputing_finished_shards(cluster, packages, job_inputs, tmp_path):
    output = tmp_path / "out"
    proc = _driver(cluster, packages, job_inputs, output)
    finished = _wait_for_a_shard(output, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    stamps = {f.name: (f.stat().st_ino, f.stat().st_mtime_ns) for f in finished}
    assert len(stamps) < SHARDS, "the job finished before it was killed"
    summary = _finish(_driver(cluster, packages, job_inputs, output))
    assert set(stamps) <= set(summary["skipped"])
    assert {w["file"] for w in summary["written"]}.isdisjoint(stamps)
    assert {f: (output / f).stat() for f in stamps} and all(
        ((output / f).stat().st_ino, (output / f).stat().st_mtime_ns) == s for f, s in stamps.items()
    )
    _check_output(output, job_inputs)


def test_the_job_survives_a_worker_node_killed_mid_job(cluster, packages, job_inputs, tmp_path):
    output = tmp_path / "out"
    proc = _driver(cluster, packages, job_inputs, output)
    done_before = _wait_for_a_shard(output, proc)
    cluster.kill_worker_raylet()
    assert proc.poll() is None and len(done_before) < SHARDS, "the job finished before the kill"
    summary = _finish(proc)
    assert len(summary["written"]) == SHARDS
    _check_output(output, job_inputs)


def _webdataset(root: Path, images: List[Path]) -> List[Path]:
    """Two WebDataset shards: samples `NNNN.png` + `NNNN.txt`, one with a corrupt image."""
    import io
    import tarfile

    tars = []
    for t, part in enumerate((images[:5], images[5:9])):
        path = root / f"shard-{t:03d}.tar"
        with tarfile.open(path, "w") as tar:
            for i, image in enumerate(part):
                for name, data in ((f"s{t}{i:03d}.png", image.read_bytes()), (f"s{t}{i:03d}.txt", b"caption")):
                    info = tarfile.TarInfo(f"sample/{name}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
            info = tarfile.TarInfo("sample/bad.png")
            info.size = 3
            tar.addfile(info, io.BytesIO(b"bad"))
        tars.append(path)
    return tars


def test_cli_caption_parquet_has_the_pipeline_columns(cluster, packages, job_inputs, tmp_path):
    """`blip-onnx caption DIR --format parquet` (one machine) writes what a pipeline shard holds
    for captions: the same column names and types, the ids the pipeline gives folder images, and
    the same captions and tokens."""
    folder = tmp_path / "images"
    folder.mkdir()
    for p in sorted((SHAPES / "test" / "images").glob("*.png"))[:6]:
        shutil.copy(p, folder / p.name)
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    cli_out = tmp_path / "cli.parquet"
    proc = run_cli("caption", "-p", packages["caption"], "--beams", "1", "--threads", "1",
                   "--format", "parquet", "-o", cli_out, folder, check=False)
    assert proc.returncode == 3, proc.stderr
    out = tmp_path / "ray"
    ray_proc = subprocess.run(
        [sys.executable, "-m", "blip_onnx.ray", str(folder), str(out), "--caption-package", str(packages["caption"]),
         "--address", cluster.address, "--shards", "2", "--actors", "1", "--threads", "1", "--beams", "1"],
        capture_output=True, text=True, env=ENV, timeout=600)
    assert ray_proc.returncode == 0, ray_proc.stderr[-4000:]
    pipeline = pa.concat_tables([pq.read_table(f) for f in _shards(out)])
    cli = pq.read_table(cli_out)
    assert cli.schema.names == pipeline.schema.names
    assert [f.type for f in cli.schema] == [f.type for f in pipeline.schema]
    cli_rows, pipeline_rows = cli.to_pylist(), pipeline.to_pylist()
    assert [r["id"] for r in cli_rows] == [r["id"] for r in pipeline_rows]
    for a, b in zip(cli_rows, pipeline_rows):
        assert (a["path"], a["caption"], a["caption_tokens"]) == (b["path"], b["caption"], b["caption_tokens"])
        assert (a["error"] is None) == (b["error"] is None)
    assert cli_rows[0]["id"] == "corrupt.png" and "corrupt.png" in cli_rows[0]["error"]


def test_inputs_from_a_folder_parquet_and_webdataset(tmp_path):
    import blip_onnx.ray as blip_ray

    images = sorted((SHAPES / "test" / "images").glob("*.png"))[:9]
    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    for p in images[:3]:
        (folder / "sub" / p.name).symlink_to(p)
    (folder / "notes.txt").write_text("not an image")
    assert [(i.id, i.path) for i in blip_ray.list_inputs(folder)] == [
        (f"sub/{p.name}", str(folder / "sub" / p.name)) for p in images[:3]
    ]
    listing = tmp_path / "list.parquet"
    pq.write_table(pa.table({"path": [str(p) for p in images[:2]]}), listing)
    assert [(i.id, i.path) for i in blip_ray.list_inputs(listing)] == [("0", str(images[0])), ("1", str(images[1]))]
    tars = _webdataset(tmp_path, images)
    items = blip_ray.list_inputs(tars)
    assert [i.id for i in items][:3] == ["shard-000/sample/bad", "shard-000/sample/s0000", "shard-000/sample/s0001"]
    assert len(items) == 11 and {i.member.rsplit(".", 1)[1] for i in items} == {"png"}
    assert blip_ray.list_inputs(tmp_path) == items  # a folder of .tar files is WebDataset
    assert [len(s) for s in blip_ray.split(items, 4)] == [3, 3, 3, 2]


def test_webdataset_shards_on_the_cluster_equal_the_cli(cluster, packages, job_inputs, tmp_path):
    images = sorted((SHAPES / "test" / "images").glob("*.png"))[:9]
    tars = _webdataset(tmp_path, images)
    proc = subprocess.run(
        [sys.executable, "-m", "blip_onnx.ray", *map(str, tars), str(tmp_path / "out"),
         "--caption-package", str(packages["caption"]), "--address", cluster.address,
         "--shards", "4", "--actors", "2", "--beams", "1"],
        capture_output=True, text=True, env=ENV, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = pa.concat_tables([pq.read_table(f) for f in sorted((tmp_path / "out").glob("part-*.parquet"))]).to_pylist()
    assert len(rows) == 11 and len({r["id"] for r in rows}) == 11
    by_member = {r["path"].rsplit("#", 1)[1]: r for r in rows}
    for t, part in enumerate((images[:5], images[5:9])):
        for i, image in enumerate(part):
            r = by_member[f"sample/s{t}{i:03d}.png"]
            cli = job_inputs["captions"][str(image)]
            assert (r["caption"], r["caption_tokens"], r["error"]) == (cli["caption"], cli["tokens"], None)
    bad = [r for r in rows if r["path"].endswith("#sample/bad.png")]
    assert len(bad) == 2 and all(r["caption"] is None and "shard-00" in r["error"] for r in bad)
