#!/usr/bin/env python3
"""PyTorch reference tool for BLIP-2 (developer side only; CI never runs it).

Subcommands
  fixtures    build the tiny seeded random-weight BLIP-2 checkpoints that the repo commits under
              fixtures/models/tiny-blip2-*, and the goldens (fixtures/goldens/tiny-blip2-*) the Rust
              parity tests compare against. BLIP's own fixtures (blip_reference.py) are left alone.

Shares the assets (vocabulary, images) and the golden format with blip_reference.py. Everything is
seeded and deterministic on CPU. Reference behaviour: docs/blip2-reference.md.
"""

from __future__ import annotations

import argparse
import shutil
import sys

import torch

from blip_reference import (FIXTURES, TEXTS, ensure_assets, make_tokenizer, round_to_fp16_, save_checkpoint,
                            save_goldens)

# A Q-Former of 3 layers with cross-attention every 2nd layer has layers with (0, 2) and without (1) it.
TINY = dict(
    vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                       image_size=32, patch_size=8, qkv_bias=True, layer_norm_eps=1e-6, initializer_range=0.02),
    qformer_config=dict(vocab_size=30523, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, cross_attention_frequency=2,
                        use_qformer_text_input=True, initializer_range=0.02),
    num_query_tokens=8,
    image_text_hidden_size=16,
)


def build_retrieval(seed: int):
    from transformers import Blip2Config, Blip2ForImageTextRetrieval

    cfg = Blip2Config(**TINY)
    cfg.architectures = ["Blip2ForImageTextRetrieval"]
    torch.manual_seed(seed)
    model = Blip2ForImageTextRetrieval(cfg).eval()
    with torch.no_grad():
        # As for BLIP's tiny fixtures: a wider init makes outputs depend on the input, and the zero
        # q/v biases of a fresh model are made non-zero so their placement in qkv is tested.
        for name, p in model.named_parameters():
            if p.dim() >= 2 or "embedding" in name or name == "query_tokens":
                p.normal_(0.0, 0.1)
            elif name.endswith("qkv.bias"):
                d = p.shape[0] // 3
                p[:d].normal_(0.0, 0.1)
                p[d:2 * d].zero_()  # BLIP-2 has no key bias
                p[2 * d:].normal_(0.0, 0.1)
    return model


def pixel_values_clip(images, size: int) -> torch.Tensor:
    from PIL import Image
    from transformers import BlipImageProcessor
    from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    proc = BlipImageProcessor(size={"height": size, "width": size}, image_mean=OPENAI_CLIP_MEAN,
                              image_std=OPENAI_CLIP_STD)
    pil = [Image.open(p).convert("RGB") for p in images]
    return proc(images=pil, return_tensors="pt")["pixel_values"].float()


def retrieval_goldens(model, tok, images) -> dict:
    size = TINY["vision_config"]["image_size"]
    pv = pixel_values_clip(images, size)
    enc = tok(TEXTS, padding="longest", truncation=True, max_length=35, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    vision = model.vision_model(pixel_values=pv).last_hidden_state
    itc = model(pixel_values=pv, input_ids=ids, attention_mask=mask, use_image_text_matching_head=False)
    itm = model(pixel_values=pv, input_ids=ids, attention_mask=mask, use_image_text_matching_head=True)
    return {
        "pixel_values": pv,
        "input_ids": ids,
        "attention_mask": mask,
        "vision.last_hidden_state": vision,
        "image_embeds": itc.image_embeds,
        "text_embeds": itc.text_embeds,
        "logits_per_image": itc.logits_per_image,
        "itm_logits": itm.logits_per_image,
    }


def cmd_fixtures(_args) -> None:
    assets = ensure_assets()
    tok = make_tokenizer(assets["vocab"])
    model = build_retrieval(seed=21)
    round_to_fp16_(model)
    name = "tiny-blip2-retrieval"
    save_checkpoint(model, FIXTURES / "models" / name, "float16", assets["vocab"], tokenizer_json=False)
    tensors = retrieval_goldens(model, tok, assets["images"])
    save_goldens(tensors, {"name": name, "texts": TEXTS, "images": [p.name for p in assets["images"]]},
                 FIXTURES / "goldens")
    print(f"{name}: {sum(p.numel() for p in model.parameters())} params", file=sys.stderr)

    # The same weights with the vision attention's biases stored as LAVIS and older transformers
    # releases store them (`q_bias`, `v_bias`; no key bias): the converter assembles qkv's bias itself.
    from safetensors.torch import save_file
    split = FIXTURES / "models" / f"{name}-qv-bias"
    split.mkdir(parents=True, exist_ok=True)
    state = {}
    for k, v in model.half().state_dict().items():
        if k.endswith(".self_attn.qkv.bias"):
            d = v.shape[0] // 3
            state[k.replace("qkv.bias", "q_bias")] = v[:d].clone()
            state[k.replace("qkv.bias", "v_bias")] = v[2 * d:].clone()
        else:
            state[k] = v.clone()
    model.float()
    save_file(state, str(split / "model.safetensors"), metadata={"format": "pt"})
    shutil.copy(FIXTURES / "models" / name / "config.json", split / "config.json")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("fixtures", help="write the tiny BLIP-2 fixtures and goldens")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    {"fixtures": cmd_fixtures}[args.cmd](args)


if __name__ == "__main__":
    main()
