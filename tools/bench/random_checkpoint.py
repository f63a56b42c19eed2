#!/usr/bin/env python3
"""A seeded random-weight BLIP caption checkpoint at base size, with numpy only.

For benchmarks on machines without the reference environment (torch + transformers,
tools/reference/setup.sh): the tensor names and layout are the Hugging Face ones of the tiny caption
fixture, widened to base (ViT-B/16 at 384 px, BERT-base decoder). Initialisation as transformers'
(normal(0, 0.02) weights and embeddings, zero biases, unit LayerNorms), so INT8 accuracy on it is
comparable to the reference environment's `blip_reference.py checkpoint --size base`.

    random_checkpoint.py OUT_DIR [--seed N]
"""
import argparse
import json
import re
import shutil
import struct
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "fixtures/models/tiny-caption"
H, I, LAYERS, IMAGE, PATCH, POS = 768, 3072, 12, 384, 16, 512
TINY_H, TINY_I = 32, 64


def base_shape(name: str, shape: list[int]) -> list[int]:
    if name.endswith("position_embeddings.weight"):
        return [POS, H]
    if name == "vision_model.embeddings.position_embedding":
        return [1, (IMAGE // PATCH) ** 2 + 1, H]
    if name == "vision_model.embeddings.patch_embedding.weight":
        return [H, 3, PATCH, PATCH]
    if name.endswith("self_attn.qkv.weight"):
        return [3 * H, H]
    if name.endswith("self_attn.qkv.bias"):
        return [3 * H]
    wide = {TINY_H: H, TINY_I: I}
    return [wide.get(d, d) for d in shape]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    raw = (TINY / "model.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    header.pop("__metadata__", None)
    names = []
    for name in sorted(header):
        m = re.search(r"\.(layer|layers)\.(\d+)\.", name)
        if m and m.group(2) != "0":
            continue  # layer 0 is the template of every layer
        if m:
            names += [name.replace(f".{m.group(1)}.0.", f".{m.group(1)}.{i}.") for i in range(LAYERS)]
        else:
            names.append(name)
    rng = np.random.default_rng(args.seed)
    tensors, offset, meta = [], 0, {}
    for name in names:
        template = re.sub(r"\.(layer|layers)\.\d+\.", r".\1.0.", name)
        shape = base_shape(name, header[template]["shape"])
        if "LayerNorm" in name or "layer_norm" in name or "layernorm" in name:
            value = np.ones(shape) if name.endswith("weight") else np.zeros(shape)
        elif name.endswith("bias"):
            value = np.zeros(shape)
        else:
            value = rng.normal(0.0, 0.02, size=shape)
        data = value.astype(np.float16).tobytes()
        meta[name] = {"dtype": "F16", "shape": shape, "data_offsets": [offset, offset + len(data)]}
        tensors.append(data)
        offset += len(data)
    args.out.mkdir(parents=True, exist_ok=True)
    head = json.dumps(meta).encode()
    head += b" " * (-len(head) % 8)
    with open(args.out / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for t in tensors:
            f.write(t)
    config = json.loads((TINY / "config.json").read_text())
    config["image_text_hidden_size"] = 256
    t, v = config["text_config"], config["vision_config"]
    t.update(hidden_size=H, intermediate_size=I, num_hidden_layers=LAYERS, num_attention_heads=12,
             max_position_embeddings=POS, encoder_hidden_size=H)
    v.update(hidden_size=H, intermediate_size=I, num_hidden_layers=LAYERS, num_attention_heads=12,
             image_size=IMAGE, patch_size=PATCH)
    (args.out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for f in ("generation_config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        shutil.copy(TINY / f, args.out / f)


if __name__ == "__main__":
    main()
