#!/usr/bin/env bash
# A reranked search through `blip-onnx serve` over synthetic indexes of growing size (issue: "a
# reranked search (16) over 10^6 entries with int8 states within 1.2× of the same search over
# 10^4"), into docs/bench/ann-serve.{md,json}. The indexes hold clustered unit vectors of the shapes
# retrieval package's width and Gaussian int8 states (tools/bench-ann `store`); the query text runs
# through the real text encoder, the ANN graph and ITM on the 16 candidates' stored states.
#   scripts/bench-ann-serve.sh [SIZES...]      (default 10000 1000000)
#   BLIP_ONNX_BIN=target/release/blip-onnx scripts/bench-ann-serve.sh …   (an already built binary)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
[ $# -gt 0 ] || set -- 10000 1000000
eval "$(scripts/fetch-onnxruntime.sh)"
bin="${BLIP_ONNX_BIN:-}"
if [ -z "$bin" ]; then
  cargo build --release --quiet -p blip-onnx-cli
  bin=target/release/blip-onnx
fi
export CARGO_TARGET_DIR="$PWD/.cache/bench-ann/target"
cargo build --release --quiet -p blip-bench-ann
ann="$CARGO_TARGET_DIR/release/bench-ann"
unset CARGO_TARGET_DIR
work=.cache/bench-ann/serve
mkdir -p "$work"
trap 'stop_server' EXIT
pkgs=$(shapes_packages "$bin" "$work/packages")
queries=60
: > "$work/results.jsonl"
for n in "$@"; do
  idx="$work/index-$n.idx"
  if [ ! -f "$work/build-$n.json" ]; then
    rm -rf "$idx" "$idx-wal" "$idx-shm" "$idx.d"
    echo "bench-ann-serve: building $n entries" >&2
    "$ann" store "$idx" "$n" "$pkgs/retrieval" 1000 7 > "$work/build-$n.json"
  fi
  start_server "$work/serve-$n.log" "$bin" --package "$pkgs/retrieval" --index "$idx" --threads 2
  python3 - "$SERVER_ADDR" "$n" "$queries" "$work/build-$n.json" >> "$work/results.jsonl" <<'PY'
import json, sys, time, urllib.request
addr, n, queries, build = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
texts = ["a red circle", "two blue squares", "a yellow triangle and a green circle",
         "three shapes : a purple square , a red triangle and a blue circle"]
def search(text):
    req = urllib.request.Request(f"http://{addr}/v1/search", method="POST",
        data=json.dumps({"text": text, "k": 10, "rerank": 16}).encode(),
        headers={"content-type": "application/json"})
    t = time.perf_counter()
    with urllib.request.urlopen(req) as r:
        body = json.load(r)
    assert len(body["hits"]) == 10 and all(h["itm"] is not None for h in body["hits"][:10]), body
    return (time.perf_counter() - t) * 1e3
for t in texts:
    search(t)  # warm-up
ms = sorted(search(texts[i % len(texts)]) for i in range(queries))
row = json.load(open(build))
row.update(p50_ms=ms[len(ms) // 2], p90_ms=ms[int(len(ms) * 0.9)], queries=queries)
print(json.dumps(row))
PY
  stop_server
done
python3 - "$work/results.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
base = rows[0]
md = ["# Reranked search through `serve` at scale", "",
      "Made by `scripts/bench-ann-serve.sh` (do not edit by hand): `POST /v1/search` with `k` 10 and "
      "`rerank` 16 on the shapes retrieval package, over synthetic indexes (clustered unit vectors, "
      "int8 rerank states of the package's shape, usearch f16 graph); one client, "
      f"{base['queries']} queries after a warm-up, 2 threads.", "",
      "| entries | build s | disk MiB | p50 ms | p90 ms | p50 vs the first |", "|---:|---:|---:|---:|---:|---:|"]
for r in rows:
    md.append(f"| {r['entries']:,} | {r['build_s']:.0f} | {r['disk_bytes'] / 2**20:,.0f} | {r['p50_ms']:.1f} | "
              f"{r['p90_ms']:.1f} | {r['p50_ms'] / base['p50_ms']:.2f}× |")
open("docs/bench/ann-serve.md", "w").write("\n".join(md) + "\n")
json.dump(rows, open("docs/bench/ann-serve.json", "w"), indent=1)
print("\n".join(md))
PY
