"""Task metrics of the trained shapes models in PyTorch, on the test split, with the reference
implementations: pycocoevalcap's Bleu and Cider (CIDEr-D) on the same tokens `blip-onnx eval` uses,
BLIP's retrieval evaluation (ITC, then ITM logit + ITC over the top k), the official VQAv2 accuracy.
`blip-onnx eval` on the FP32 packages must give the same numbers.

    python tools/shapes/evaluate_pytorch.py --models fixtures/shapes/models --dataset fixtures/shapes/test \
        --out docs/eval/shapes-pytorch.json

Also writes the metric test cases for the Rust metric code (`--metric-cases FILE`).
"""

from __future__ import annotations

import argparse
import json
import re
import string
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "reference"))
import shapes  # noqa: E402
from train import pixels  # noqa: E402

PUNCTUATION = ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...",
               ";"]


def tokenize(text: str) -> str:
    """What `blip_eval::caption_metrics::tokenize` does: lower case, punctuation split off and dropped."""
    spaced = "".join(f" {c} " if c in string.punctuation and c != "'" else c for c in text.lower())
    return " ".join(t for t in spaced.split() if t not in PUNCTUATION)


def coco_metrics(hyps: dict, refs: dict) -> dict:
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    gts = {k: [tokenize(r) for r in v] for k, v in refs.items()}
    res = {k: [tokenize(hyps[k])] for k in refs}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    exact = sum(res[k][0] in gts[k] for k in gts) / len(gts)
    return {"bleu": bleu, "cider_d": float(cider), "exact_match": exact}


# The official VQA normalisation (vqaEval.py), as the Rust code reproduces it.
def vqa_accuracy(pred: str, humans: list[str]) -> float:
    contractions = {}  # the shapes answers never contain one; the Rust tests cover the table
    manual = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
              "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
    punct = [";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]

    def proc_punct(t):
        out = t
        for p in punct:
            if (p + " " in t or " " + p in t) or re.search(r"(\d)(,)(\d)", t) is not None:
                out = out.replace(p, "")
            else:
                out = out.replace(p, " ")
        return re.compile(r"(?!<=\d)(\.)(?!\d)").sub("", out, re.UNICODE)

    def proc_digit(t):
        words = [manual.get(w, w) for w in t.lower().split()]
        return " ".join(contractions.get(w, w) for w in words if w not in ("a", "an", "the"))

    gts = [h.replace("\n", " ").replace("\t", " ").strip() for h in humans]
    pred = pred.replace("\n", " ").replace("\t", " ").strip()
    if len(set(gts)) > 1:
        gts = [proc_digit(proc_punct(g)) for g in gts]
        pred = proc_digit(proc_punct(pred))
    accs = [min(1.0, sum(1 for j, o in enumerate(gts) if j != i and o == pred) / 3) for i in range(len(gts))]
    return sum(accs) / len(accs)


def write_metric_cases(path: str) -> None:
    """pycocoevalcap results on small cases, for the Rust metric tests."""
    cases = []
    for hyps_, refs_ in [
        ({1: "a red circle"}, {1: ["a red circle", "there is a red circle"]}),
        ({1: "a cat sitting on a mat", 2: "two dogs play in the park near a tree"},
         {1: ["a cat is sitting on the mat", "there is a cat on a mat"],
          2: ["two dogs playing in a park", "dogs play near the tree in a park", "a pair of dogs outside"]}),
        ({1: "the the the", 2: "a man riding a horse on a beach", 3: "a plate of food"},
         {1: ["a man with a hat"], 2: ["a man rides a horse along the beach", "a person on a horse"],
          3: ["a plate with food on a table", "some food on a white plate", "a dish of food"]}),
    ]:
        m = coco_metrics(hyps_, refs_)
        cases.append({"hyps": {str(k): v for k, v in hyps_.items()}, "refs": {str(k): v for k, v in refs_.items()},
                      "bleu": m["bleu"], "cider_d": m["cider_d"]})
    Path(path).write_text(json.dumps({"source": "pycocoevalcap 1.2 Bleu(4), Cider()",
                                                   "cases": cases}, indent=1) + "\n")


def load(folder: Path, cls):
    return cls.from_pretrained(folder, dtype=torch.float32).eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models")
    ap.add_argument("--dataset")
    ap.add_argument("--out")
    ap.add_argument("--rerank-k", type=int, default=16)
    ap.add_argument("--metric-cases", help="also write pycocoevalcap results on small cases for the Rust tests")
    args = ap.parse_args()
    if args.metric_cases:
        write_metric_cases(args.metric_cases)
    if not args.models:
        return
    torch.set_grad_enabled(False)
    torch.set_num_threads(2)
    from transformers import (BlipForConditionalGeneration, BlipForImageTextRetrieval, BlipForQuestionAnswering,
                              PreTrainedTokenizerFast)

    models, ds = Path(args.models), Path(args.dataset)
    coco = json.loads((ds / "captions.json").read_text())
    images = coco["images"]
    pv = pixels([Image.open(ds / "images" / i["file_name"]).convert("RGB") for i in images])
    refs = {}
    for a in coco["annotations"]:
        refs.setdefault(a["image_id"], []).append(a["caption"])
    report = {"dataset": str(ds), "command": " ".join(sys.argv)}

    # Captioning: beam 3, 5-20 tokens, BLIP's prompt (the runtime's defaults).
    tok = PreTrainedTokenizerFast.from_pretrained(models / "shapes-caption")
    cap = load(models / "shapes-caption", BlipForConditionalGeneration)
    prompt = tok([shapes.PROMPT] * len(images), return_tensors="pt")
    hyps = {}
    for s in range(0, len(images), 32):
        out = cap.generate(pixel_values=pv[s:s + 32], input_ids=prompt["input_ids"][s:s + 32],
                           attention_mask=prompt["attention_mask"][s:s + 32], num_beams=3, max_length=20,
                           min_length=5)
        for i, seq in zip(range(s, s + 32), out):
            text = tok.decode(seq, skip_special_tokens=True)
            hyps[images[i]["id"]] = text[len(shapes.PROMPT.strip()):].strip()
    report["caption"] = coco_metrics(hyps, refs)
    report["caption"]["predictions"] = {images[i]["file_name"]: hyps[images[i]["id"]] for i in range(len(images))}
    print("caption", {k: v for k, v in report["caption"].items() if k != "predictions"}, flush=True)

    # Retrieval: every caption as a query; ITC, then ITM logit + ITC over the top k.
    ret = load(models / "shapes-retrieval", BlipForImageTextRetrieval)
    index = {im["id"]: n for n, im in enumerate(images)}
    texts = [(index[a["image_id"]], a["caption"]) for a in coco["annotations"] if a["image_id"] in index]
    hidden = ret.vision_model(pixel_values=pv).last_hidden_state
    img = F.normalize(ret.vision_proj(hidden[:, 0]), dim=-1)
    enc = tok([t for _, t in texts], padding="longest", truncation=True, max_length=35, return_tensors="pt")
    txt_h = ret.text_encoder(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
    txt = F.normalize(ret.text_proj(txt_h[:, 0]), dim=-1)
    t2i = txt @ img.t()
    enc_id = tok.convert_tokens_to_ids("[ENC]")

    def itm(ids, mask, states):
        ids = ids.clone()
        ids[:, 0] = enc_id
        out = ret.text_encoder(input_ids=ids, attention_mask=mask, encoder_hidden_states=states,
                               encoder_attention_mask=torch.ones(states.shape[:2], dtype=torch.long))
        return ret.itm_head(out.last_hidden_state[:, 0])[:, 1]

    def recall(ranks):
        return {f"r{k}": sum(r < k for r in ranks) / len(ranks) for k in (1, 5, 10)}

    def ranks_t2i(s):
        return [int((s[t].argsort(descending=True, stable=True) == texts[t][0]).nonzero()[0]) for t in range(len(texts))]

    def ranks_i2t(s):
        out = []
        for i in range(s.shape[0]):
            order = s[i].argsort(descending=True, stable=True).tolist()
            out.append(next(p for p, t in enumerate(order) if texts[t][0] == i))
        return out

    r = {"images": len(images), "texts": len(texts), "text_to_image_itc": recall(ranks_t2i(t2i)),
         "image_to_text_itc": recall(ranks_i2t(t2i.t()))}
    k = args.rerank_k
    rt2i = torch.full_like(t2i, float("-inf"))
    for t in range(len(texts)):
        top = t2i[t].argsort(descending=True, stable=True)[:k]
        n = enc["attention_mask"][t].sum()
        rt2i[t, top] = itm(enc["input_ids"][t:t + 1, :n].repeat(len(top), 1),
                           enc["attention_mask"][t:t + 1, :n].repeat(len(top), 1), hidden[top]) + t2i[t, top]
    ri2t = torch.full_like(t2i.t(), float("-inf"))
    for i in range(len(images)):
        top = t2i[:, i].argsort(descending=True, stable=True)[:k]
        ri2t[i, top] = itm(enc["input_ids"][top], enc["attention_mask"][top], hidden[i:i + 1].repeat(len(top), 1, 1)) \
            + t2i[top, i]
    r["rerank_k"] = k
    r["text_to_image_itm"] = recall(ranks_t2i(rt2i))
    r["image_to_text_itm"] = recall(ranks_i2t(ri2t))
    report["retrieval"] = r
    print("retrieval", r, flush=True)

    # VQA: beam 3, 1-10 tokens; the official accuracy.
    vqa = load(models / "shapes-vqa", BlipForQuestionAnswering)
    qs = json.loads((ds / "vqa_questions.json").read_text())["questions"]
    anns = {a["question_id"]: a for a in json.loads((ds / "vqa_annotations.json").read_text())["annotations"]}
    preds, accs = {}, []
    for s in range(0, len(qs), 64):
        chunk = qs[s:s + 64]
        q = tok([c["question"] for c in chunk], padding="longest", return_tensors="pt")
        ids = q["input_ids"].clone()
        ids[:, 0] = enc_id
        out = vqa.generate(input_ids=ids, attention_mask=q["attention_mask"],
                           pixel_values=pv[[index[c["image_id"]] for c in chunk]], num_beams=3, max_length=10,
                           min_length=1)
        for c, seq in zip(chunk, out):
            a = tok.decode(seq, skip_special_tokens=True).strip()
            preds[c["question_id"]] = a
            accs.append(vqa_accuracy(a, [x["answer"] for x in anns[c["question_id"]]["answers"]]))
    report["vqa"] = {"questions": len(qs), "accuracy": sum(accs) / len(accs), "predictions": preds}
    print("vqa", report["vqa"]["accuracy"], flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
