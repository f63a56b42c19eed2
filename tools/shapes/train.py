"""Trains three small BLIP models on the shapes scenes with the real transformers classes:
captioning (LM loss, BLIP's "a picture of " prompt), retrieval (ITC contrastive + ITM with hard
negatives, as BLIP pre-trains) and VQA (answer LM loss on [ENC]-first questions). Seeded and logged;
on 2 CPU cores the three take well under an hour.

    python tools/shapes/train.py --out fixtures/shapes/models          # all three
    python tools/shapes/train.py --out /tmp/m --steps-scale 0.05          # a smoke run

Each model is saved as a Hugging Face folder (fp16 safetensors, config.json, tokenizer.json,
vocab.txt): what `blip-onnx convert` reads.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
import shapes  # noqa: E402

MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
MODEL = dict(
    vision=dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=2,
                image_size=shapes.SIZE, patch_size=16, initializer_range=0.02),
    text=dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=2,
              max_position_embeddings=48),
    image_text_hidden_size=64,
)


def make_tokenizer(folder: Path):
    """WordPiece over the scenes' words (+ BERT's specials, then [DEC] and [ENC] as BLIP appends them)."""
    from tokenizers.implementations import BertWordPieceTokenizer
    from transformers import PreTrainedTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(SPECIALS + shapes.vocabulary()) + "\n")
    raw = BertWordPieceTokenizer(str(vocab), lowercase=True)
    raw.add_special_tokens(["[DEC]", "[ENC]"])
    return PreTrainedTokenizerFast(tokenizer_object=raw._tokenizer, unk_token="[UNK]", sep_token="[SEP]",
                                   pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]", bos_token="[DEC]",
                                   additional_special_tokens=["[ENC]"])


def config(tok):
    from transformers import BlipConfig

    ids = dict(vocab_size=len(tok), bos_token_id=tok.convert_tokens_to_ids("[DEC]"), pad_token_id=0,
               sep_token_id=tok.sep_token_id, eos_token_id=tok.sep_token_id)
    return BlipConfig(text_config=dict(MODEL["text"], **ids), vision_config=MODEL["vision"],
                      image_text_hidden_size=MODEL["image_text_hidden_size"])


def pixels(images) -> torch.Tensor:
    """BLIP preprocessing of 96-px scenes (already the model size: no resize): 1/255, CLIP mean/std."""
    a = np.stack([np.asarray(im, np.float32) / 255.0 for im in images])
    return torch.from_numpy(((a - MEAN) / STD).transpose(0, 3, 1, 2).copy())


class Pool:
    """Training scenes drawn once (a pure function of the index), sampled per step."""

    def __init__(self, count: int):
        t = time.time()
        self.scenes = [shapes.scene("train", i) for i in range(count)]
        self.pixels = pixels([s.image for s in self.scenes])
        print(f"{count} training scenes in {time.time() - t:.1f} s", flush=True)

    def batch(self, rng: random.Random, n: int):
        idx = [rng.randrange(len(self.scenes)) for _ in range(n)]
        return idx, self.pixels[idx]


def encode(tok, texts, first: str | None = None):
    enc = tok(texts, padding="longest", return_tensors="pt")
    ids = enc["input_ids"].clone()
    if first:
        ids[:, 0] = tok.convert_tokens_to_ids(first)
    return ids, enc["attention_mask"]


def schedule(opt, step: int, total: int, lr: float, warmup: int = 200) -> None:
    f = step / warmup if step < warmup else 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
    for g in opt.param_groups:
        g["lr"] = lr * max(f, 0.02)


def train_loop(name, model, params, steps, lr, loss_fn, log):
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    model.train()
    t0 = time.time()
    for step in range(steps):
        schedule(opt, step, steps, lr)
        loss, parts = loss_fn()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            line = {"model": name, "step": step, "loss": round(loss.item(), 4),
                    **{k: round(v, 4) for k, v in parts.items()}, "seconds": round(time.time() - t0, 1)}
            print(json.dumps(line), flush=True)
            log.append(line)
    model.eval()


def train_caption(tok, pool, steps, log):
    from transformers import BlipForConditionalGeneration

    model = BlipForConditionalGeneration(config(tok))
    rng = random.Random(11)
    prompt_len = len(tok(shapes.PROMPT).input_ids) - 1  # [DEC] + prompt words (no [SEP])

    def loss_fn():
        idx, pv = pool.batch(rng, 64)
        ids, mask = encode(tok, [shapes.PROMPT + pool.scenes[i].captions[0] for i in idx], "[DEC]")
        labels = ids.masked_fill(mask == 0, -100)
        labels[:, :prompt_len] = -100
        out = model(pixel_values=pv, input_ids=ids, attention_mask=mask, labels=labels)
        return out.loss, {}

    train_loop("caption", model, list(model.parameters()), steps, 1e-3, loss_fn, log)
    return model


def train_retrieval(tok, pool, steps, log, caption):
    from transformers import BlipForImageTextRetrieval

    model = BlipForImageTextRetrieval(config(tok))
    # Start from the captioner: its ViT, and its text decoder's BERT for the text encoder (BLIP shares
    # these between its text encoder and decoder too); the captioner already binds colours to shapes.
    model.vision_model.load_state_dict(caption.vision_model.state_dict())
    missing, unexpected = model.text_encoder.load_state_dict(caption.text_decoder.bert.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("pooler") for k in missing), (missing, unexpected)
    temp = torch.nn.Parameter(torch.tensor(0.07))
    rng = random.Random(12)
    enc_id = tok.convert_tokens_to_ids("[ENC]")

    def loss_fn():
        idx, pv = pool.batch(rng, 48)
        # Retrieval texts: any of the scene's captions.
        texts = [rng.choice(pool.scenes[i].captions) for i in idx]
        canon = [pool.scenes[i].captions[0] for i in idx]
        ids, mask = encode(tok, texts)
        img = model.vision_model(pixel_values=pv).last_hidden_state
        img_feat = F.normalize(model.vision_proj(img[:, 0]), dim=-1)
        txt = model.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        txt_feat = F.normalize(model.text_proj(txt[:, 0]), dim=-1)
        t = temp.clamp(0.001, 0.5)
        sim = img_feat @ txt_feat.t() / t
        # Scenes with the same canonical caption are positives of each other.
        same = torch.tensor([[a == b for b in canon] for a in canon], dtype=torch.float32)
        targets = same / same.sum(1, keepdim=True)
        itc = (-(F.log_softmax(sim, 1) * targets).sum(1).mean() - (F.log_softmax(sim.t(), 1) * targets).sum(1).mean()) / 2
        # ITM: positives, plus one hard negative text per image and one hard negative image per text,
        # drawn by ITC similarity (BLIP's hard-negative mining).
        with torch.no_grad():
            w_i2t = F.softmax(sim, 1).masked_fill(same > 0, 0) + 1e-9
            w_t2i = F.softmax(sim.t(), 1).masked_fill(same > 0, 0) + 1e-9
        neg_txt = torch.multinomial(w_i2t, 1).squeeze(1)
        neg_img = torch.multinomial(w_t2i, 1).squeeze(1)
        itm_ids = ids.clone()
        itm_ids[:, 0] = enc_id
        all_ids = torch.cat([itm_ids, itm_ids[neg_txt], itm_ids])
        all_mask = torch.cat([mask, mask[neg_txt], mask])
        all_img = torch.cat([img, img, img[neg_img]])
        out = model.text_encoder(input_ids=all_ids, attention_mask=all_mask, encoder_hidden_states=all_img,
                                 encoder_attention_mask=torch.ones(all_img.shape[:2], dtype=torch.long))
        logits = model.itm_head(out.last_hidden_state[:, 0])
        n = len(idx)
        labels = torch.cat([torch.ones(n), torch.zeros(2 * n)]).long()
        itm = F.cross_entropy(logits, labels)
        return itc + itm, {"itc": itc.item(), "itm": itm.item(), "temp": t.item()}

    train_loop("retrieval", model, list(model.parameters()) + [temp], steps, 5e-4, loss_fn, log)
    return model


def train_vqa(tok, pool, steps, log, caption):
    from transformers import BlipForQuestionAnswering

    model = BlipForQuestionAnswering(config(tok))
    model.vision_model.load_state_dict(caption.vision_model.state_dict())
    model.text_decoder.load_state_dict(caption.text_decoder.state_dict())
    rng = random.Random(13)

    def loss_fn():
        idx, pv = pool.batch(rng, 64)
        qa = [rng.choice(pool.scenes[i].qa) for i in idx]
        q_ids, q_mask = encode(tok, [q for q, _ in qa], "[ENC]")
        a_ids, a_mask = encode(tok, [a for _, a in qa], "[DEC]")
        labels = a_ids.masked_fill(a_mask == 0, -100)
        out = model(input_ids=q_ids, attention_mask=q_mask, pixel_values=pv, decoder_input_ids=a_ids,
                    decoder_attention_mask=a_mask, labels=labels)
        return out.loss, {}

    train_loop("vqa", model, list(model.parameters()), steps, 5e-4, loss_fn, log)
    return model


def save(model, tok, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.half().save_pretrained(out, safe_serialization=True)
    model.float()
    tok.save_pretrained(out)
    (out / "vocab.txt").write_text("\n".join(SPECIALS + shapes.vocabulary()) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder for shapes-caption, shapes-retrieval, shapes-vqa")
    ap.add_argument("--steps-scale", type=float, default=1.0)
    ap.add_argument("--pool", type=int, default=12000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", choices=["caption", "retrieval", "vqa"],
                    help="train one model (the others are read from --out: retrieval and VQA start from the captioner)")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    with tempfile.TemporaryDirectory() as tmp:
        tok = make_tokenizer(Path(tmp))
    pool = Pool(args.pool)
    log: list[dict] = []
    steps = lambda n: max(2, int(n * args.steps_scale))  # noqa: E731
    t = time.time()
    if args.only in (None, "caption"):
        cap = train_caption(tok, pool, steps(2500), log)
        save(cap, tok, out / "shapes-caption")
    else:
        from transformers import BlipForConditionalGeneration

        cap = BlipForConditionalGeneration.from_pretrained(out / "shapes-caption", dtype=torch.float32)
    if args.only in (None, "retrieval"):
        ret = train_retrieval(tok, pool, steps(3000), log, cap)
        save(ret, tok, out / "shapes-retrieval")
    if args.only in (None, "vqa"):
        vqa = train_vqa(tok, pool, steps(2000), log, cap)
        save(vqa, tok, out / "shapes-vqa")
    # The log keeps every model's latest run.
    path = out / "training-log.jsonl"
    old = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() and args.only else []
    log = [x for x in old if x["model"] != args.only] + log
    path.write_text("".join(json.dumps(x) + "\n" for x in log))
    print(f"trained in {time.time() - t:.0f} s", flush=True)


if __name__ == "__main__":
    main()
