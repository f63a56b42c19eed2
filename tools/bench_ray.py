"""Images/s of batch captioning and embedding: the CLI, blip_onnx.ray (1 actor x T threads, and T actors x 1
thread) and transformers' BLIP (PyTorch eager under torch.inference_mode) through the same Ray pipeline,
side by side in one run, rounds alternating. Run by scripts/bench-ray.sh (which makes the packages and
the environment); writes PREFIX.json and PREFIX.md.

    python tools/bench_ray.py --images DIR --cli BIN --caption-package P --caption-checkpoint C \
        --embed-package P --embed-checkpoint C [--threads 2] [--rounds 2] [--shards 4] -o PREFIX
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import pyarrow.parquet as pq
import ray

import blip_onnx
import blip_onnx.ray as blip_ray
from readme_block import write_block


def load_torch(model_class: str, checkpoint: str, threads: int):
    """torch (with `threads` intra-op threads), the FP32 model, its image processor and tokenizer."""
    import torch
    import transformers

    torch.set_num_threads(threads)
    model = getattr(transformers, model_class).from_pretrained(checkpoint, dtype=torch.float32).eval()
    size = model.config.vision_config.image_size
    processor = transformers.BlipImageProcessor(size={"height": size, "width": size})
    return torch, model, processor, transformers.BertTokenizerFast.from_pretrained(checkpoint)


class TorchCaptioner:
    """transformers' BlipForConditionalGeneration with BLIP's COCO settings (the library defaults:
    prompt "a picture of ", beam 3, 5 to 20 tokens), as the blip_onnx model's caption()."""

    def __init__(self, checkpoint: str, threads: int) -> None:
        self.torch, self.model, self.processor, self.tokenizer = load_torch(
            "BlipForConditionalGeneration", checkpoint, threads)
        d = blip_onnx.caption_defaults()
        self.settings = dict(num_beams=d["beams"], max_length=d["max_length"], min_length=d["min_length"])
        self.prompt = d["prompt"]

    def caption(self, images: List[Any], errors: str = "return", **_: Any) -> List[Any]:
        from PIL import Image

        pixels = self.processor(images=[Image.open(p).convert("RGB") for p in images], return_tensors="pt")
        prompt = self.tokenizer([self.prompt] * len(images), return_tensors="pt")
        with self.torch.inference_mode():
            out = self.model.generate(pixel_values=pixels["pixel_values"], input_ids=prompt["input_ids"],
                                      attention_mask=prompt["attention_mask"], **self.settings)
        pad = self.model.config.text_config.pad_token_id
        captions = []
        for ids in out.tolist():
            while ids and ids[-1] == pad:  # a batch's shorter sequences are padded
                ids.pop()
            captions.append(blip_onnx.Caption(self.tokenizer.decode(ids, skip_special_tokens=True), ids, None))
        return captions


class TorchEmbedder:
    """transformers' BlipForImageTextRetrieval: projected, L2-normalised ITC embeddings."""

    def __init__(self, checkpoint: str, threads: int) -> None:
        self.torch, self.model, self.processor, self.tokenizer = load_torch(
            "BlipForImageTextRetrieval", checkpoint, threads)

    def embed_images(self, images: List[Any], batch_size: int = 8) -> Any:
        from PIL import Image

        pixels = self.processor(images=[Image.open(p).convert("RGB") for p in images], return_tensors="pt")
        with self.torch.inference_mode():
            states = self.model.vision_model(pixel_values=pixels["pixel_values"]).last_hidden_state
            embeds = self.torch.nn.functional.normalize(self.model.vision_proj(states[:, 0, :]), dim=-1)
        return embeds.numpy()

    def embed_texts(self, texts: List[str]) -> Any:
        enc = self.tokenizer(texts, return_tensors="pt")
        with self.torch.inference_mode():
            states = self.model.text_encoder(**enc).last_hidden_state
            embeds = self.torch.nn.functional.normalize(self.model.text_proj(states[:, 0, :]), dim=-1)
        return embeds.numpy()


class TorchShardWriter(blip_ray.ShardWriter):
    """The pipeline's actor with transformers' models in place of the packages: the packages' paths
    name the checkpoints (the bench passes checkpoints here)."""

    def __init__(self, output: str, caption_package: Optional[str], embed_package: Optional[str], threads: int,
                 batch_size: int, caption_options: Dict[str, Any]) -> None:
        self.output = Path(output)
        self.captioner = TorchCaptioner(caption_package, threads) if caption_package else None
        self.embedder = TorchEmbedder(embed_package, threads) if embed_package else None
        self.batch_size = batch_size
        self.caption_options = caption_options


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def read_shards(folder: Path) -> Dict[str, Dict[str, Any]]:
    rows: Dict[str, Dict[str, Any]] = {}
    for f in sorted(folder.glob("part-*.parquet")):
        for row in pq.read_table(f).to_pylist():
            if row["id"] in rows:
                raise SystemExit(f"{row['id']} written twice")
            if row["error"]:
                raise SystemExit(f"{row['id']}: {row['error']}")
            rows[row["id"]] = row
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--render", action="store_true", help="only re-render PREFIX.md (and --readme) from PREFIX.json")
    p.add_argument("--readme", help="also write the table into this README's <!-- bench:ray-base --> block")
    p.add_argument("--images")
    p.add_argument("--cli")
    p.add_argument("--caption-package")
    p.add_argument("--caption-checkpoint")
    p.add_argument("--embed-package")
    p.add_argument("--embed-checkpoint")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--torch-rounds", type=int, default=1, help="rounds that run the PyTorch pipeline too")
    p.add_argument("--torch-splits", default="1xT",
                   help="PyTorch pipeline's actors x threads, comma-separated (T: --threads); default 1xT")
    p.add_argument("-o", "--output", required=True, help="PREFIX: writes PREFIX.json and PREFIX.md")
    args = p.parse_args()
    if args.render:
        write(json.loads(Path(args.output + ".json").read_text()), args.output, args.readme)
        return
    missing = [a for a in ("images", "cli", "caption_package", "caption_checkpoint", "embed_package",
                           "embed_checkpoint") if getattr(args, a) is None]
    if missing:
        p.error("missing " + ", ".join("--" + m.replace("_", "-") for m in missing))

    images = Path(args.images)
    files = sorted(str(f) for f in images.iterdir() if f.is_file())
    n = len(files)
    t = args.threads
    ray.init(num_cpus=t, log_to_driver=False, include_dashboard=False)
    work = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    samples: Dict[str, List[float]] = {}
    check: Dict[str, Any] = {}

    def record(key: str, seconds: float) -> None:
        samples.setdefault(key, []).append(seconds)
        print(f"{key}: {seconds:.2f} s ({n / seconds:.2f} images/s)", file=sys.stderr, flush=True)

    def cli(task: str) -> None:
        if task == "caption":
            cmd = [args.cli, "caption", "-p", args.caption_package, str(images)]
        else:
            cmd = [args.cli, "embed", "-p", args.embed_package, "--image", *files]
        out = work / f"cli-{task}.jsonl"
        with open(out, "w") as f:
            subprocess.run([*cmd, "--format", "jsonl", "--threads", str(t), "--quiet"], stdout=f, check=True)

    def pipeline(task: str, engine: str, actors: int, threads: int) -> Path:
        out = Path(tempfile.mkdtemp(prefix=f"{task}-{engine}-{actors}x{threads}-", dir=work))
        packages = {"onnx": (args.caption_package, args.embed_package),
                    "torch": (args.caption_checkpoint, args.embed_checkpoint)}[engine]
        which = {"caption_package": packages[0]} if task == "caption" else {"embed_package": packages[1]}
        writer = TorchShardWriter if engine == "torch" else blip_ray.ShardWriter
        blip_ray.run(str(images), out, shards=args.shards, actors=actors, threads=threads, writer=writer, **which)
        return out

    splits = [(1, t), (t, 1)] if t > 1 else [(1, 1)]
    torch_splits = [tuple(int(x) for x in split.replace("T", str(t)).split("x"))
                    for split in args.torch_splits.split(",")]
    for r in range(args.rounds):
        for task in ("caption", "embed"):
            record(f"{task} cli", timed(lambda: cli(task)))
            for actors, threads in splits:
                holder: Dict[str, Path] = {}
                record(f"{task} ray onnx {actors}x{threads}",
                       timed(lambda: holder.setdefault("out", pipeline(task, "onnx", actors, threads))))
                check[f"{task} ray onnx {actors}x{threads}"] = holder["out"]
            if r < args.torch_rounds:
                for actors, threads in torch_splits:
                    holder = {}
                    record(f"{task} ray pytorch {actors}x{threads}",
                           timed(lambda: holder.setdefault("out", pipeline(task, "torch", actors, threads))))
                    check[f"{task} ray pytorch {actors}x{threads}"] = holder["out"]

    # The runs did the same work: every image once; the ONNX pipeline's results equal the CLI's.
    cli_caps = {Path(j["image"]).relative_to(images).as_posix(): j
                for j in map(json.loads, (work / "cli-caption.jsonl").read_text().splitlines())}
    agreement: Dict[str, Any] = {}
    for key, folder in check.items():
        rows = read_shards(folder)
        if len(rows) != n:
            raise SystemExit(f"{key}: {len(rows)} rows for {n} images")
        if key.startswith("caption"):
            same = sum(rows[i]["caption_tokens"] == cli_caps[i]["tokens"] for i in rows)
            agreement[key] = f"{same}/{n} captions token-equal to the CLI's"
            if "onnx" in key and same != n:
                raise SystemExit(f"{key}: {agreement[key]}")
    ray.shutdown()

    rows = []
    for key, secs in samples.items():
        task, engine = key.split(" ", 1)
        med = statistics.median(secs)
        rows.append({"task": task, "engine": engine, "seconds": secs, "median_s": med, "images_per_s": n / med,
                     "agreement": agreement.get(key)})
    for row in rows:
        base = next(x for x in rows if x["task"] == row["task"] and x["engine"] == "cli")
        row["vs_cli"] = row["images_per_s"] / base["images_per_s"]
        torch_best = max((x["images_per_s"] for x in rows if x["task"] == row["task"] and "pytorch" in x["engine"]),
                         default=None)
        row["vs_pytorch_best"] = row["images_per_s"] / torch_best if torch_best else None
    report = {"images": n, "threads": t, "rounds": args.rounds, "torch_rounds": args.torch_rounds,
              "shards": args.shards, "caption_package": args.caption_package, "embed_package": args.embed_package,
              "caption_checkpoint": args.caption_checkpoint, "embed_checkpoint": args.embed_checkpoint,
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "ray": ray.__version__,
              "command": " ".join(sys.argv), "rows": rows}
    Path(args.output + ".json").write_text(json.dumps(report, indent=1) + "\n")
    write(report, args.output, args.readme)
    print(markdown(report))


def write(report: Dict[str, Any], prefix: str, readme: Optional[str]) -> None:
    """PREFIX.md, and the README's block between <!-- bench:ray-base --> and <!-- /bench:ray-base -->."""
    table = markdown(report)
    Path(prefix + ".md").write_text(table)
    if readme:
        write_block(readme, "ray-base", table)


def markdown(r: Dict[str, Any]) -> str:
    lines = [
        f"Batch captioning and embedding, {r['images']} images, {r['threads']} cores in all "
        f"({r['machine']}); wall time of the whole job, model loading included; median over "
        f"{r['rounds']} round(s) (PyTorch: {r['torch_rounds']}). Ray pipeline: blip_onnx.ray, {r['shards']} shards, "
        f"actors x threads each. Produced by `scripts/bench-ray.sh`.",
        "",
        f"Packages: `{r['caption_package']}` (captions), `{r['embed_package']}` (embeddings); PyTorch: "
        "transformers' BLIP from the checkpoints they were converted from, under `torch.inference_mode`, "
        "in the same Ray pipeline (`TorchShardWriter`).",
        "",
        "| task | engine | images/s | vs CLI | vs best PyTorch | seconds (each round) | results |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for row in r["rows"]:
        vs_torch = "" if row["vs_pytorch_best"] is None else f"{row['vs_pytorch_best']:.2f}x"
        secs = ", ".join(f"{s:.1f}" for s in row["seconds"])
        lines.append(f"| {row['task']} | {row['engine']} | {row['images_per_s']:.2f} | {row['vs_cli']:.2f}x | "
                     f"{vs_torch} | {secs} | {row['agreement'] or ''} |")
    lines += [
        "",
        "Results: the ONNX pipelines' caption tokens are compared with the CLI's (the same package). PyTorch runs "
        "the FP32 checkpoint, so its tokens are those of FP32, not of the quantized package: on random weights "
        "(near-uniform logits) quantization changes them; FP32 packages are token-exact with PyTorch "
        "(`cargo test`, the parity suite).",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
