#!/usr/bin/env bash
# Task quality of the trained shapes models at every precision, written to docs/eval/ by running
# `blip-onnx eval` (FP32, INT8 everywhere, INT4 everywhere, FP16 on CPU), plus `validate` quality
# gates of the quantized packages against FP32, and the README table.
#   scripts/eval-shapes.sh [OUT_DIR]     (default: out/shapes-eval)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-out/shapes-eval}"
eval "$(scripts/fetch-onnxruntime.sh)"
cargo build --release --quiet -p blip-onnx-cli
bin=target/release/blip-onnx
data=fixtures/shapes/test
mkdir -p "$out" docs/eval
for head in caption retrieval vqa; do
  fp32="$out/shapes-$head"
  "$bin" convert "fixtures/shapes/models/shapes-$head" -o "$fp32" --force >/dev/null
  "$bin" quantize "$fp32" -o "$fp32-int8" --policy all --force >/dev/null
  "$bin" quantize "$fp32" -o "$fp32-int4" --precision int4 --policy all --force >/dev/null
  "$bin" quantize "$fp32" -o "$fp32-fp16" --precision fp16 --force >/dev/null
  for p in fp32 int8 int4 fp16; do
    pkg="$fp32"; [ "$p" = fp32 ] || pkg="$fp32-$p"
    "$bin" eval -p "$pkg" --dataset "$data" --quiet -o "docs/eval/shapes-$head-$p" >/dev/null
    echo "shapes-$head $p: docs/eval/shapes-$head-$p.json"
  done
  for p in int8 int4; do
    # The quality gate: the task metric may drop by at most 2 % relative to FP32 (exit 4 otherwise).
    "$bin" validate "$fp32-$p" --against "$fp32" --images "$data/images" --eval-dataset "$data" --max-batch 4 --long-run 500 \
      --format json > "docs/eval/validate-shapes-$head-$p.json" || true
  done
done
python3 - <<'EOF'
import json, pathlib
rows = ["| task | metric | FP32 | INT8 | INT4 | FP16 |", "|---|---|---|---|---|---|"]
def m(head, p):
    return json.loads(pathlib.Path(f"docs/eval/shapes-{head}-{p}.json").read_text())["metrics"]
def gate(head, p):
    v = json.loads(pathlib.Path(f"docs/eval/validate-shapes-{head}-{p}.json").read_text())
    g = next((g for g in v["gates"] if g["name"].startswith("quality:")), None)
    return "" if g is None else (" ✓" if g["pass"] else " ✗")
ps = ["fp32", "int8", "int4", "fp16"]
def row(task, name, f, head):
    cells = []
    for p in ps:
        cells.append(f(m(head, p)) + (gate(head, p) if p in ("int8", "int4") else ""))
    rows.append(f"| {task} | {name} | " + " | ".join(cells) + " |")
row("caption", "CIDEr-D", lambda x: f"{x['cider_d']:.3f}", "caption")
row("caption", "BLEU-4 %", lambda x: f"{100 * x['bleu'][3]:.2f}", "caption")
row("caption", "exact match %", lambda x: f"{100 * x['exact_match']:.2f}", "caption")
row("retrieval", "text→image R@1 % (ITC / ITM rerank 16)",
    lambda x: f"{100 * x['text_to_image_itc']['r1']:.2f} / {100 * x['text_to_image_itm']['r1']:.2f}", "retrieval")
row("retrieval", "image→text R@1 % (ITC / ITM rerank 16)",
    lambda x: f"{100 * x['image_to_text_itc']['r1']:.2f} / {100 * x['image_to_text_itm']['r1']:.2f}", "retrieval")
row("vqa", "VQA accuracy %", lambda x: f"{100 * x['accuracy']:.2f}", "vqa")
pt = json.loads(pathlib.Path("fixtures/eval/shapes-pytorch.json").read_text())
rows += ["", "PyTorch (transformers, the same checkpoints, tools/shapes/evaluate_pytorch.py): "
         f"CIDEr-D {pt['caption']['cider_d']:.3f}, BLEU-4 {100 * pt['caption']['bleu'][3]:.2f} %, "
         f"exact match {100 * pt['caption']['exact_match']:.2f} %, text→image R@1 "
         f"{100 * pt['retrieval']['text_to_image_itc']['r1']:.2f} / {100 * pt['retrieval']['text_to_image_itm']['r1']:.2f} %, "
         f"image→text R@1 {100 * pt['retrieval']['image_to_text_itc']['r1']:.2f} / "
         f"{100 * pt['retrieval']['image_to_text_itm']['r1']:.2f} %, VQA accuracy {100 * pt['vqa']['accuracy']:.2f} %.",
         "", "Shapes test split (300 scenes, 900 captions, "
         f"{pt['vqa']['questions']} questions); INT8 / INT4: every graph (`quantize --policy all`), FP16 run on "
         "the CPU; ✓ / ✗: `validate --eval-dataset` quality gate (task metric within 2 % of FP32). "
         "Produced by `scripts/eval-shapes.sh`."]
table = "\n".join(rows)
pathlib.Path("docs/eval/shapes.md").write_text("# Task quality of the shapes models\n\n" + table + "\n")
readme = pathlib.Path("README.md")
text = readme.read_text()
a, b = text.index("<!-- eval:shapes -->"), text.index("<!-- /eval:shapes -->")
readme.write_text(text[:a] + "<!-- eval:shapes -->\n" + table + "\n" + text[b:])
print(table)
EOF
