"""Closed-loop caption load on a running `blip-onnx serve` (scripts/serve-load-shapes.sh).

  serve_load.py BASE CLIENTS REQUESTS_PER_CLIENT same|mixed SCHEDULER ROUND  -> one JSON line
  serve_load.py --table RESULTS.jsonl CLIENTS ROUNDS                         -> Markdown table
"""
import base64
import glob
import json
import statistics
import sys
import threading
import time
import urllib.request

# "mixed": four decoding settings in turn (request-level batching decodes only equal settings together).
SETTINGS = [{}, {"beams": 1}, {"sample": True, "top_p": 0.9, "seed": 3}, {"beams": 2}]


def load(base, clients, n, mix, scheduler, round_):
    imgs = [base64.b64encode(open(p, "rb").read()).decode()
            for p in sorted(glob.glob("fixtures/shapes/test/images/*.png"))[:50]]
    lat, errors = [], [0]

    def worker(k):
        for j in range(n):
            i = k * n + j
            body = dict(SETTINGS[i % len(SETTINGS)] if mix == "mixed" else {})
            body["images"] = [imgs[i % len(imgs)]]
            req = urllib.request.Request(base + "/v1/caption", json.dumps(body).encode(),
                                         {"content-type": "application/json"})
            t = time.perf_counter()
            try:
                urllib.request.urlopen(req).read()
                lat.append(time.perf_counter() - t)
            except Exception:
                errors[0] += 1

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    lat.sort()
    return {"scheduler": scheduler, "mix": mix, "clients": clients, "round": round_,
            "per_s": len(lat) / elapsed, "p50_ms": lat[len(lat) // 2] * 1e3 if lat else None,
            "p99_ms": lat[max(0, int(len(lat) * 0.99) - 1)] * 1e3 if lat else None,
            "errors": errors[0], "requests": len(lat)}


def table(path, clients, rounds):
    rows = [json.loads(l) for l in open(path) if l.strip()]
    out = [f"Shapes caption package, `blip-onnx serve --threads 2`, closed loop, {rounds} round(s) "
           f"alternating the schedulers (medians over rounds); clients {clients}. "
           "Produced by `scripts/serve-load-shapes.sh`.", "",
           "| settings | clients | request-level captions/s | iteration-level captions/s | ratio | "
           "request p50 / p99 ms | iteration p50 / p99 ms | errors |", "|---|---|---|---|---|---|---|---|"]
    keys = sorted({(r["mix"], r["clients"]) for r in rows}, key=lambda k: (k[0] != "same", k[1]))
    for mix, c in keys:
        def med(s, f):
            v = [r[f] for r in rows if r["mix"] == mix and r["clients"] == c and r["scheduler"] == s
                 and r[f] is not None]
            return statistics.median(v) if v else float("nan")
        req, it = med("request", "per_s"), med("iteration", "per_s")
        errs = sum(r["errors"] for r in rows if r["mix"] == mix and r["clients"] == c)
        out.append(f"| {mix} | {c} | {req:.1f} | {it:.1f} | {it / req:.2f} | "
                   f"{med('request', 'p50_ms'):.0f} / {med('request', 'p99_ms'):.0f} | "
                   f"{med('iteration', 'p50_ms'):.0f} / {med('iteration', 'p99_ms'):.0f} | {errs} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    if sys.argv[1] == "--table":
        sys.stdout.write(table(sys.argv[2], sys.argv[3], sys.argv[4]))
    else:
        base, clients, n, mix, scheduler, round_ = sys.argv[1:7]
        print(json.dumps(load(base, int(clients), int(n), mix, scheduler, int(round_))), flush=True)
