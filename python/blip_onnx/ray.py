"""Captions and embeddings of many images on a Ray cluster, written as Parquet shards.

    import ray, blip_onnx.ray
    ray.init()                       # or ray.init(address="head:6379") on a cluster
    blip_onnx.ray.run("photos/", "out/", caption_package="blip-caption", actors=2, threads=4)

Inputs: a folder (every image below it, as ``blip-onnx index``), a Parquet file with a ``path``
column (and optionally ``id``), or WebDataset ``.tar`` shards (one sample per key; its image member).
They are split in a fixed order into ``shards`` shards; Ray Data runs ``map_batches`` over the shards
with an actor pool, each actor holding one :class:`~blip_onnx.BlipModel` per package with
``threads`` intra-op threads. Each shard becomes one file ``part-NNNNN-of-MMMMM.parquet`` with columns
``id``, ``path``, ``caption``, ``caption_tokens`` and/or ``embedding`` (fixed-size list of float32),
and ``error``: an image that cannot be read is an error row with its message, not a failed job.

A shard file is written to a temporary name and renamed, so it is either complete or absent, and a
rerun skips the shards already written: a job killed half way resumes without recomputing them, and
a worker lost mid-shard has that shard redone by another actor. The output folder must be shared by
every node (the same path on each; on one machine any folder).

Needs ``pip install "ray[data]"`` (tested with ray 2.60.0).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tarfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ._model import EMBED_BATCH_SIZE, BlipModel

#: Image file extensions read from folders and WebDataset samples (as the CLI's folder listing).
IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp", "gif", "bmp")

PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class Item:
    """One input image: ``id`` (unique in the job), ``path`` (the file, or the tar shard), and
    ``member`` (the image inside a tar shard)."""

    id: str
    path: str
    member: Optional[str] = None


def list_inputs(source: Union[PathLike, Sequence[PathLike]], input_format: str = "auto") -> List[Item]:
    """The job's images, in a fixed order. ``input_format``: ``folder``, ``parquet``,
    ``webdataset`` or ``auto`` (a folder, a ``.parquet`` file, ``.tar`` files or a folder of them)."""
    sources = [Path(os.fspath(s)) for s in ([source] if isinstance(source, (str, os.PathLike)) else source)]
    if input_format == "auto":
        if all(s.suffix == ".parquet" for s in sources):
            input_format = "parquet"
        elif all(s.suffix == ".tar" for s in sources):
            input_format = "webdataset"
        elif len(sources) == 1 and sources[0].is_dir():
            tars = sorted(sources[0].glob("*.tar"))
            input_format, sources = ("webdataset", tars) if tars else ("folder", sources)
        else:
            raise ValueError(f"cannot tell the input format of {', '.join(map(str, sources))}; pass input_format")
    items: List[Item] = []
    for s in sources:
        if input_format == "folder":
            items += _folder(s)
        elif input_format == "parquet":
            items += _parquet(s)
        elif input_format == "webdataset":
            items += _tar(s)
        else:
            raise ValueError(f"input_format {input_format!r}: expected auto, folder, parquet or webdataset")
    ids = [i.id for i in items]
    if len(set(ids)) != len(ids):
        raise ValueError("input ids are not unique")
    return items


def _is_image(name: str) -> bool:
    return name.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS


def _folder(root: Path) -> List[Item]:
    files = sorted(p for p in root.rglob("*") if p.is_file() and _is_image(p.name))
    return [Item(str(p.relative_to(root)), str(p)) for p in files]


def _parquet(path: Path) -> List[Item]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    if "path" not in table.column_names:
        raise ValueError(f"{path}: no 'path' column")
    paths = table.column("path").to_pylist()
    ids = table.column("id").to_pylist() if "id" in table.column_names else range(len(paths))
    return [Item(str(i), str(p)) for i, p in zip(ids, paths)]


def _tar(path: Path) -> List[Item]:
    """WebDataset: members sharing a key (the name up to its first dot) are one sample; its image
    member is the image."""
    samples: Dict[str, str] = {}
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            if not member.isfile():
                continue
            base = member.name.rsplit("/", 1)[-1]
            key = member.name[: len(member.name) - len(base)] + base.split(".", 1)[0]
            if _is_image(base) and key not in samples:
                samples[key] = member.name
    return [Item(f"{path.stem}/{key}", str(path), samples[key]) for key in sorted(samples)]


def shard_name(index: int, count: int) -> str:
    return f"part-{index:05d}-of-{count:05d}.parquet"


def split(items: Sequence[Item], shards: int) -> List[List[Item]]:
    """Contiguous shards of nearly equal size, in input order."""
    size = math.ceil(len(items) / shards) if items else 0
    return [list(items[i * size : (i + 1) * size]) for i in range(shards)]


class ShardWriter:
    """A Ray Data actor: opens the packages once, then captions / embeds whole shards and writes
    each one atomically."""

    def __init__(
        self,
        output: str,
        caption_package: Optional[str],
        embed_package: Optional[str],
        threads: int,
        batch_size: int,
        caption_options: Dict[str, Any],
    ) -> None:
        self.output = Path(output)
        self.captioner = BlipModel.open(caption_package, threads=threads) if caption_package else None
        self.embedder = BlipModel.open(embed_package, threads=threads) if embed_package else None
        self.batch_size = batch_size
        self.caption_options = caption_options

    def __call__(self, batch: Dict[str, np.ndarray]) -> Dict[str, List[Any]]:
        out: Dict[str, List[Any]] = {"shard": [], "file": [], "rows": [], "errors": [], "node": []}
        for shard, file, items_json in zip(batch["shard"], batch["file"], batch["items"]):
            items = [Item(**i) for i in json.loads(items_json)]
            table = self._table(items)
            _write_atomically(table, self.output / file)
            out["shard"].append(int(shard))
            out["file"].append(str(file))
            out["rows"].append(table.num_rows)
            out["errors"].append(table.num_rows - table.column("error").null_count)
            out["node"].append(_node_id())
        return out

    def _table(self, items: List[Item]):
        import pyarrow as pa

        n = len(items)
        errors: List[Optional[str]] = [None] * n
        texts: List[Optional[str]] = [None] * n
        tokens: List[Optional[List[int]]] = [None] * n
        vectors: List[Optional[List[float]]] = [None] * n
        for start in range(0, n, self.batch_size):
            batch = list(range(start, min(start + self.batch_size, n)))
            images, read_errors = _read([items[j] for j in batch])
            readable = [(j, image) for j, image, e in zip(batch, images, read_errors) if e is None]
            for j, e in zip(batch, read_errors):
                errors[j] = e
            if not readable:
                continue
            chunk, values = [j for j, _ in readable], [v for _, v in readable]
            if self.captioner is not None:
                for j, c in zip(chunk, self.captioner.caption(values, errors="return", **self.caption_options)):
                    if isinstance(c, Exception):
                        errors[j] = _named(items[j], c)
                    else:
                        texts[j], tokens[j] = c.text, c.tokens
            if self.embedder is not None:
                for j, v in zip(chunk, self._embed(chunk, items, values, errors)):
                    vectors[j] = v
        columns: Dict[str, Any] = {
            "id": pa.array([i.id for i in items], pa.string()),
            "path": pa.array([i.path if i.member is None else f"{i.path}#{i.member}" for i in items], pa.string()),
        }
        if self.captioner is not None:
            columns["caption"] = pa.array(texts, pa.string())
            columns["caption_tokens"] = pa.array(tokens, pa.list_(pa.int64()))
        if self.embedder is not None:
            dim = self.embedder.embed_texts(["a"]).shape[1]
            flat = np.zeros((n, dim), np.float32)
            for j, v in enumerate(vectors):
                if v is not None:
                    flat[j] = v
            mask = pa.array([v is None for v in vectors], pa.bool_())
            columns["embedding"] = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), dim, mask=mask)
        columns["error"] = pa.array(errors, pa.string())
        return pa.table(columns)

    def _embed(
        self, chunk: List[int], items: List[Item], images: List[Any], errors: List[Optional[str]]
    ) -> List[Optional[List[float]]]:
        from ._native import BlipError

        try:
            return [list(v) for v in self.embedder.embed_images(images, batch_size=len(images))]
        except BlipError:
            # One bad image fails the batch: redo it image by image to name the culprit.
            out: List[Optional[List[float]]] = []
            for j, image in zip(chunk, images):
                try:
                    out.append(list(self.embedder.embed_images([image])[0]))
                except BlipError as e:
                    errors[j] = _named(items[j], e)
                    out.append(None)
            return out


def _named(item: Item, error: Exception) -> str:
    """An error row's message: the model names a file by its path; a tar member (read as bytes) is
    named here."""
    return str(error) if item.member is None else f"{item.path}#{item.member}: {error}"


def _read(items: List[Item]) -> Tuple[List[Any], List[Optional[str]]]:
    """What the model gets per item (the path, or the tar member's bytes), and a read error per item."""
    images: List[Any] = []
    errors: List[Optional[str]] = []
    for item in items:
        if item.member is None:
            images.append(item.path)
            errors.append(None)
            continue
        try:
            with tarfile.open(item.path) as tar:
                data = tar.extractfile(item.member)
                images.append(data.read() if data else b"")
            errors.append(None)
        except (OSError, KeyError, tarfile.TarError) as e:
            images.append(b"")
            errors.append(f"{item.path}#{item.member}: {e}")
    return images, errors


def _write_atomically(table, path: Path) -> None:
    import pyarrow.parquet as pq

    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        pq.write_table(table, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


@dataclass(frozen=True)
class Summary:
    shards: int
    """Shards of the job."""
    written: List[Dict[str, Any]]
    """One row per shard written by this run: shard, file, rows, errors, node."""
    skipped: List[str]
    """Shard files already present (from an earlier run), not recomputed."""


def run(
    source: Union[PathLike, Sequence[PathLike]],
    output: PathLike,
    *,
    caption_package: Optional[PathLike] = None,
    embed_package: Optional[PathLike] = None,
    shards: Optional[int] = None,
    images_per_shard: int = 1000,
    actors: int = 1,
    threads: int = 1,
    batch_size: int = EMBED_BATCH_SIZE,
    input_format: str = "auto",
    writer: type = ShardWriter,
    **caption_options: Any,
) -> Summary:
    """Captions (``caption_package``) and/or embeds (``embed_package``, a retrieval package) every
    input image on the connected Ray cluster (``ray.init`` first; a local one is started
    otherwise) and writes the Parquet shards into ``output``.

    ``shards`` (default: one per ``images_per_shard`` images) must stay the same across reruns of a
    job. ``actors`` actors (one Ray Data actor pool), each with ``threads`` CPUs and ONNX Runtime
    threads; ``batch_size`` images per model call; ``caption_options`` as
    :meth:`BlipModel.caption`. ``writer`` is the actor class: :class:`ShardWriter` or a subclass
    that swaps the engine (the benchmark runs transformers' BLIP through the same pipeline this way).
    Returns what was written and what was skipped.
    """
    import ray

    if caption_package is None and embed_package is None:
        raise ValueError("give caption_package and/or embed_package")
    items = list_inputs(source, input_format)
    count = shards or max(1, math.ceil(len(items) / images_per_shard))
    out = Path(os.fspath(output))
    out.mkdir(parents=True, exist_ok=True)
    parts = split(items, count)
    pending = []
    skipped = []
    for index, part in enumerate(parts):
        name = shard_name(index, count)
        if (out / name).exists():
            skipped.append(name)
        else:
            items_json = json.dumps([{"id": i.id, "path": i.path, "member": i.member} for i in part])
            pending.append({"shard": index, "file": name, "items": items_json})
    if not pending:
        return Summary(count, [], skipped)
    ds = ray.data.from_items(pending, override_num_blocks=len(pending))
    results = ds.map_batches(
        writer,
        fn_constructor_kwargs={
            "output": str(out.resolve()),
            "caption_package": None if caption_package is None else str(Path(caption_package).resolve()),
            "embed_package": None if embed_package is None else str(Path(embed_package).resolve()),
            "threads": threads,
            "batch_size": batch_size,
            "caption_options": caption_options,
        },
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=actors, max_tasks_in_flight_per_actor=1),
        num_cpus=threads,
    ).take_all()
    return Summary(count, sorted(results, key=lambda r: r["shard"]), skipped)


def main(argv: Optional[Sequence[str]] = None) -> None:
    """``python -m blip_onnx.ray SOURCE OUTPUT --caption-package P [--address A] ...``"""
    p = argparse.ArgumentParser(prog="python -m blip_onnx.ray", description=__doc__.split("\n")[0])
    p.add_argument("source", nargs="+")
    p.add_argument("output")
    p.add_argument("--caption-package")
    p.add_argument("--embed-package")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, or a local cluster)")
    p.add_argument("--shards", type=int)
    p.add_argument("--actors", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--beams", type=int)
    p.add_argument("--input-format", default="auto")
    args = p.parse_args(argv)
    import ray

    ray.init(address=args.address, log_to_driver=False)
    options = {} if args.beams is None else {"beams": args.beams}
    summary = run(
        args.source,
        args.output,
        caption_package=args.caption_package,
        embed_package=args.embed_package,
        shards=args.shards,
        actors=args.actors,
        threads=args.threads,
        input_format=args.input_format,
        **options,
    )
    print(json.dumps({"shards": summary.shards, "written": summary.written, "skipped": summary.skipped}))


if __name__ == "__main__":
    main()
