#!/usr/bin/env python3
"""The table of scripts/bench-cpu-quant.sh: its results folder -> OUT.md and OUT.json."""
import argparse
import json
import statistics
from pathlib import Path

FORMS = {"fp32": "FP32", "full": "previous default (full-range INT8 + INT4 decoder)",
         "default": "default (7-bit INT8 + INT4 decoder)"}
CPUS = {"native": "this CPU as it is", "avx2": "AVX2-only (AVX-512, VNNI, AMX hidden)"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("results", type=Path)
    ap.add_argument("--cpu", required=True)
    ap.add_argument("--rounds", type=int, required=True)
    ap.add_argument("-o", "--output", type=Path, required=True)
    args = ap.parse_args()
    r = args.results
    data = {"cpu": args.cpu, "rounds": args.rounds, "modes": {}}
    md = [f"# INT8 on every CPU class (base caption, random weights)\n",
          f"Made by `scripts/bench-cpu-quant.sh {args.rounds}` on {args.cpu}, 2 threads; each CPU mode in one "
          "process per table, rounds interleaved (medians over rounds of per-round medians). The AVX2-only "
          "mode hides AVX-512, VNNI and AMX from CPUID (`tools/bench/avx2only.c`), so ONNX Runtime runs its "
          "AVX2 kernels, as on AMD EPYC Zen 2/3.\n"]
    for cpu, label in CPUS.items():
        cap = json.loads((r / f"{cpu}-caption.json").read_text())
        graphs = json.loads((r / f"{cpu}-graphs.json").read_text())
        opens = [json.loads(line) for line in (r / f"{cpu}-open.jsonl").read_text().splitlines()]
        pkgs = {Path(p["package"]).name.split("cq-")[-1]: p["ms"] for p in cap["packages"]}
        med = {k: {c: statistics.median(v) for c, v in ms.items()} for k, ms in pkgs.items()}
        data["modes"][cpu] = {"caption": cap, "graphs": graphs, "open": opens}
        md.append(f"\n## {label}\n\n| case (median ms) | " + " | ".join(FORMS.values()) +
                  " | default vs FP32 | previous vs FP32 |\n|---|" + "---|" * (len(FORMS) + 2))
        for case in med["fp32"]:
            f, p, d = med["fp32"][case], med["full"][case], med["default"][case]
            ratio = (lambda x: f"{x / f:.2f}×") if case.startswith("vision") else (lambda x: f"{f / x:.2f}× faster")
            md.append(f"| {case} | {f:.0f} | {p:.0f} | {d:.0f} | {ratio(d)} | {ratio(p)} |")
        md.append("\nVision encoder, batch 1, every INT8 form (`tools/bench/cpu_quant_graphs.py`, ORT Python "
                  f"{graphs['ort']}; kernels from ORT's profile: op(activation type, weight type)):\n\n"
                  "| form | median ms | × FP32 | min token cosine vs FP32 | integer kernels in the profile |\n"
                  "|---|---|---|---|---|")
        for row in graphs["rows"]:
            kernels = ", ".join(f"{k} ×{n}" for k, n in row.get("kernels", {}).items()) or "—"
            md.append(f"| {row['form']} | {row['median_ms']:.0f} | {row['x_fp32']:.2f} | "
                      f"{row['min_token_cosine']:.5f} | {kernels} |")
        md.append("\nOpen to first caption ready (`BlipModel::open`: checksums, tokenizer, every session), "
                  "median of 10 cold processes, seconds:\n\n| package | open | first 1-token caption |\n|---|---|---|")
        for pkg, name in FORMS.items():
            t = {k: statistics.median(o["run"][k] for o in opens if o["package"] == pkg)
                 for k in ("open_s", "first_caption_s")}
            md.append(f"| {name} | {t['open_s']:.2f} | {t['first_caption_s']:.2f} |")
    args.output.with_suffix(".json").write_text(json.dumps(data, indent=1) + "\n")
    args.output.with_suffix(".md").write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
