"""How BLIP is served today: FastAPI + uvicorn around transformers' BlipForConditionalGeneration
(PyTorch eager, FP32), answering the same `POST /v1/caption` JSON as `blip-onnx serve`, so one load
generator drives both (scripts/bench-serve.sh). Developer-side only.

    python tools/reference/blip_fastapi_server.py CHECKPOINT --port 8081 [--threads 2]

BLIP's COCO caption settings come from the blip_onnx wheel (the project's one definition of them).
Requests decode their images in FastAPI's thread pool; the model runs one request at a time (a lock):
PyTorch's intra-op pool already uses every thread it is given, and concurrent forward passes over one
pool only slow each other down. No batching across requests: that is what the common recipe does.
"""

from __future__ import annotations

import argparse
import base64
import io
import threading
from typing import List

import blip_onnx
import torch
import transformers
import uvicorn
from fastapi import FastAPI, HTTPException
from PIL import Image
from pydantic import BaseModel


class CaptionRequest(BaseModel):
    images: List[str]


def decode_image(text: str) -> Image.Image:
    if text.startswith("data:"):
        text = text.split(",", 1)[-1]
    return Image.open(io.BytesIO(base64.b64decode(text))).convert("RGB")


def build_app(checkpoint: str, threads: int) -> FastAPI:
    torch.set_num_threads(threads)
    model = transformers.BlipForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float32).eval()
    size = model.config.vision_config.image_size
    processor = transformers.BlipImageProcessor(size={"height": size, "width": size})
    tokenizer = transformers.BertTokenizerFast.from_pretrained(checkpoint)
    d = blip_onnx.caption_defaults()
    settings = dict(num_beams=d["beams"], max_length=d["max_length"], min_length=d["min_length"])
    pad = model.config.text_config.pad_token_id
    lock = threading.Lock()
    app = FastAPI()

    @app.get("/health/ready")
    def ready() -> dict:
        return {"status": "ready"}

    @app.post("/v1/caption")
    def caption(req: CaptionRequest) -> dict:  # a plain def: FastAPI runs it in its thread pool
        if not req.images:
            raise HTTPException(400, "no images")
        try:
            images = [decode_image(t) for t in req.images]
        except Exception as e:
            raise HTTPException(415, f"not an image: {e}")
        pixels = processor(images=images, return_tensors="pt")["pixel_values"]
        prompt = tokenizer([d["prompt"]] * len(images), return_tensors="pt")
        with lock, torch.inference_mode():
            out = model.generate(pixel_values=pixels, input_ids=prompt["input_ids"],
                                 attention_mask=prompt["attention_mask"], **settings)
        results = []
        for ids in out.tolist():
            while ids and ids[-1] == pad:
                ids.pop()
            results.append({"caption": tokenizer.decode(ids, skip_special_tokens=True), "tokens": ids})
        return {"results": results}

    return app


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8081)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    uvicorn.run(build_app(args.checkpoint, args.threads), host=args.host, port=args.port,
                workers=1, log_level="warning")


if __name__ == "__main__":
    main()
