#!/usr/bin/env bash
# A quick closed-loop load on `blip-onnx serve` with the shapes caption package: captions/s, p50/p99
# and the mean images per caption run, at each client count (not the base-size load benchmark).
#   scripts/serve-load-shapes.sh [CLIENTS...]      (default: 1 8)
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -gt 0 ] || set -- 1 8
eval "$(scripts/fetch-onnxruntime.sh)"
cargo build --quiet -p blip-onnx-cli
bin=target/debug/blip-onnx
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$bin" convert fixtures/shapes/models/shapes-caption -o "$work/caption" >/dev/null
for clients in "$@"; do
  BLIP_PORT=0 "$bin" serve --package "$work/caption" --threads 2 2>"$work/log" &
  pid=$!
  addr=""
  for _ in $(seq 1 200); do
    addr=$(sed -n 's|.*listening on http://||p' "$work/log" | head -n1)
    [ -n "$addr" ] && break
    sleep 0.1
  done
  for _ in $(seq 1 200); do curl -sf "http://$addr/health/ready" >/dev/null && break; sleep 0.1; done
  python3 - "http://$addr" "$clients" $((160 / clients)) <<'PY'
import base64, glob, json, sys, threading, time, urllib.request
base, clients, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
imgs = [base64.b64encode(open(p, "rb").read()).decode()
        for p in sorted(glob.glob("fixtures/shapes/test/images/*.png"))[:50]]
lat, errors = [], [0]
def worker(k):
    for j in range(n):
        body = json.dumps({"images": [imgs[(k * n + j) % len(imgs)]]}).encode()
        t = time.perf_counter()
        try:
            req = urllib.request.Request(base + "/v1/caption", body, {"content-type": "application/json"})
            urllib.request.urlopen(req).read()
            lat.append(time.perf_counter() - t)
        except Exception:
            errors[0] += 1
t0 = time.perf_counter()
threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
for t in threads: t.start()
for t in threads: t.join()
elapsed = time.perf_counter() - t0
lat.sort()
metrics = urllib.request.urlopen(base + "/metrics").read().decode()
def total(prefix):
    return sum(float(l.rsplit(" ", 1)[1]) for l in metrics.splitlines() if l.startswith(prefix))
batch = total('blip_batch_size_sum{head="caption"') / max(1, total('blip_batch_size_count{head="caption"'))
print(f"clients {clients}: {len(lat) / elapsed:.1f} captions/s, p50 {lat[len(lat) // 2] * 1000:.0f} ms, "
      f"p99 {lat[max(0, int(len(lat) * 0.99) - 1)] * 1000:.0f} ms, errors {errors[0]}, "
      f"mean images per caption run {batch:.2f}")
PY
  kill "$pid"
  wait "$pid" || true
done
