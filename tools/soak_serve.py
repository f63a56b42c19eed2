#!/usr/bin/env python3
"""Hostile soak of a running `blip-onnx serve` (shapes packages and an index): COUNT requests from
CLIENTS threads, good and bad mixed, index adds and deletes among them. Then the server is killed
with SIGKILL and started again on the same index, and every acknowledged add and delete is checked.

Fails (exit 1) on any 5xx, on a good request not answered 200 (or 429), on a bad request not
answered with the expected 4xx in the JSON error shape, on RSS growth of 5 % or more between the
end of the warm-up (the first tenth) and the end, or on a lost acknowledged change. Prints a JSON
summary; with --out also writes a Markdown table there. Standard library only.

  tools/soak_serve.py --bin BLIP_ONNX --packages DIR --index FILE --images DIR [--clients 32]
                      [--count 10000] [--out docs/bench/soak-shapes.md]
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path


def start(args, log: Path):
    cmd = [args.bin, "serve", "--port", "0", "--threads", "2", "--index", args.index]
    for head in ("caption", "retrieval", "vqa"):
        cmd += ["--package", str(Path(args.packages) / head)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(log, "w"))
    addr = None
    for _ in range(600):
        m = re.search(r"listening on http://(\S+)", log.read_text())
        if m:
            addr = m.group(1)
            break
        time.sleep(0.05)
    if not addr:
        sys.exit(f"the server did not start: {log.read_text()}")
    host, port = addr.rsplit(":", 1)
    for _ in range(1200):
        try:
            if request(host, int(port), "GET", "/health/ready")[0] == 200:
                return proc, host, int(port)
        except OSError:
            pass
        time.sleep(0.05)
    sys.exit("the server never became ready")


def request(host, port, method, path, body=None, headers=None, timeout=60):
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        hdrs = {"content-type": "application/json"} if data is not None else {}
        hdrs.update(headers or {})
        conn.request(method, path, body=data, headers=hdrs)
        r = conn.getresponse()
        raw = r.read()
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = raw.decode(errors="replace")
        return r.status, parsed
    finally:
        conn.close()


def raw_declared_too_long(host, port):
    """Headers declaring a 1 GB body, and nothing after them: 413 before any body byte."""
    s = socket.create_connection((host, port), timeout=30)
    try:
        s.sendall(b"POST /v1/caption HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 1000000000\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        status = int(data.split(b" ", 2)[1]) if data else 0
        return status, None
    finally:
        s.close()


def rss_kb(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--packages", required=True)
    ap.add_argument("--index", required=True)
    ap.add_argument("--images", required=True)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--count", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--only", help="run only these request kinds (comma-separated), for finding what grows")
    ap.add_argument("--out")
    args = ap.parse_args()

    work = Path(args.index).parent
    proc, host, port = start(args, work / "soak-serve.log")
    pngs = sorted(Path(args.images).glob("*.png"))[:8]
    imgs = [base64.b64encode(p.read_bytes()).decode() for p in pngs]

    # name -> (expected statuses, request): good ones are answered 200 (or refused 429 under load).
    good = {
        "caption": (200, lambda r: ("POST", "/v1/caption", {"images": [r.choice(imgs)], "beams": 1})),
        "search": (200, lambda r: ("POST", "/v1/search", {"text": "a purple triangle", "rerank": 4})),
        "embed": (200, lambda r: ("POST", "/v1/embed", {"texts": ["a red circle", "a blue square"]})),
        "itm": (200, lambda r: ("POST", "/v1/itm", {"image": r.choice(imgs), "texts": ["a red circle"]})),
        "vqa": (200, lambda r: ("POST", "/v1/vqa", {"image": r.choice(imgs), "questions": ["what shape is it?"]})),
    }
    bad = {
        "beams_string": (422, lambda r: ("POST", "/v1/caption", {"images": [imgs[0]], "beams": "3"})),
        "prompt_long": (422, lambda r: ("POST", "/v1/caption", {"images": [imgs[0]], "prompt": "word " * 2000})),
        "k_huge": (422, lambda r: ("POST", "/v1/vqa", {"image": imgs[0], "questions": ["q?"], "answers": ["a", "b"], "k": 10**12})),
        "broken_json": (400, lambda r: ("POST", "/v1/embed", b'{"texts": [')),
        "not_base64": (422, lambda r: ("POST", "/v1/caption", {"images": ["!!!"]})),
        "gzip": (415, lambda r: ("POST", "/v1/embed", b"\x1f\x8b\x08\x00", {"content-encoding": "gzip"})),
        "unknown_route": (404, lambda r: ("GET", "/v2/nothing", None)),
        "search_long": (422, lambda r: ("POST", "/v1/search", {"text": "x" * 100000})),
        "declared_too_long": (413, None),
    }
    if args.only:
        keep = set(args.only.split(","))
        good = {k: v for k, v in good.items() if k in keep}
        bad = {k: v for k, v in bad.items() if k in keep}
    index_changes = not args.only or "index" in args.only.split(",")
    lock = threading.Lock()
    counts = {}
    failures = []
    acked_add, acked_delete = {}, set()
    next_id = [0]
    done = [0]
    rss = {}

    def record(name, status):
        with lock:
            counts.setdefault(name, {}).setdefault(status, 0)
            counts[name][status] += 1

    def worker(k):
        r = random.Random(args.seed * 1000 + k)
        while True:
            with lock:
                if done[0] >= args.count:
                    return
                done[0] += 1
                n = done[0]
                if n % max(1, args.count // 10) == 0:
                    rss.setdefault("series", []).append(rss_kb(proc.pid) // 1024)
                if n == args.count // 10:
                    rss["warm"] = rss_kb(proc.pid)
            # 6 % adds and 6 % deletes (the index keeps its size), 48 % good requests, 40 % bad.
            roll = r.random()
            if not index_changes:
                roll = 0.12 + roll * 0.88
            if not good and 0.12 <= roll < 0.6:
                roll = 0.6 + (roll - 0.12) / 0.48 * 0.4 if bad else roll * 0.12
            if not bad and roll >= 0.6:
                roll = 0.12 + (roll - 0.6) * 1.2 if good else (roll - 0.6) * 0.3
            try:
                if roll < 0.06:
                    with lock:
                        next_id[0] += 1
                        ident = f"soak-{next_id[0]}"
                    image = r.randrange(len(imgs))
                    st, body = request(host, port, "POST", "/v1/index",
                                       {"images": [{"id": ident, "image": imgs[image]}]})
                    record("index_add", st)
                    if st == 200 and body["results"][0]["added"]:
                        with lock:
                            acked_add[ident] = image
                    elif st not in (200, 429):
                        failures.append(f"index add {ident}: {st} {body}")
                elif roll < 0.12:
                    with lock:
                        live = [i for i in acked_add if i not in acked_delete]
                        ident = r.choice(live) if live else None
                        if ident:
                            acked_delete.add(ident)  # reserved: no other client deletes it
                    if ident:
                        st, body = request(host, port, "DELETE", f"/v1/index/{ident}")
                        record("index_delete", st)
                        if st != 200:
                            with lock:
                                acked_delete.discard(ident)
                            failures.append(f"delete {ident}: {st} {body}")
                elif roll < 0.6:
                    name = r.choice(sorted(good))
                    want, make = good[name]
                    method, path, body = make(r)
                    st, got = request(host, port, method, path, body)
                    record(name, st)
                    if st not in (want, 429):
                        failures.append(f"{name}: {st} {str(got)[:200]}")
                else:
                    name = r.choice(sorted(bad))
                    want, make = bad[name]
                    if make is None:
                        st, got = raw_declared_too_long(host, port)
                    else:
                        spec = make(r)
                        method, path, body = spec[:3]
                        headers = spec[3] if len(spec) > 3 else None
                        st, got = request(host, port, method, path, body, headers)
                    record(name, st)
                    shaped = make is None or (isinstance(got, dict) and "error" in got and "error_type" in got)
                    if st != want or not shaped:
                        failures.append(f"{name}: {st} {str(got)[:200]}")
            except OSError as e:
                record("connection_error", 0)
                failures.append(f"connection error: {e}")

    start_t = time.time()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.time() - start_t
    rss["end"] = rss_kb(proc.pid)
    fivexx = sum(n for c in counts.values() for s, n in c.items() if s >= 500)

    # Crash and restart: every acknowledged change must have survived.
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc, host, port = start(args, work / "soak-serve-2.log")
    lost = []
    for ident, _ in acked_add.items():
        st, _ = request(host, port, "GET", f"/v1/images/{ident}")
        if ident in acked_delete and st != 404:
            lost.append(f"{ident} deleted but answers {st}")
        if ident not in acked_delete and st != 200:
            lost.append(f"{ident} added but answers {st}")
    proc.terminate()
    proc.wait()

    growth = (rss["end"] - rss["warm"]) / rss["warm"] * 100 if rss.get("warm") else 0.0
    summary = {
        "requests": args.count, "clients": args.clients, "seconds": round(seconds, 1),
        "per_second": round(args.count / seconds, 1), "5xx": fivexx,
        "rss_warm_mb": round(rss.get("warm", 0) / 1024, 1), "rss_end_mb": round(rss["end"] / 1024, 1),
        "rss_growth_pct": round(growth, 2), "rss_mb_each_tenth": rss.get("series", []),
        "acknowledged_adds": len(acked_add),
        "acknowledged_deletes": len(acked_delete), "lost_after_sigkill": len(lost),
        "failures": len(failures), "statuses": {k: dict(sorted(v.items())) for k, v in sorted(counts.items())},
    }
    print(json.dumps(summary, indent=1))
    for f in failures[:20] + lost[:20]:
        print("FAIL", f, file=sys.stderr)
    if args.out:
        rows = "\n".join(f"| {k} | {', '.join(f'{s}: {n}' for s, n in sorted(v.items()))} |"
                         for k, v in sorted(counts.items()))
        Path(args.out).write_text(
            f"Hostile soak of `blip-onnx serve` (shapes caption, retrieval and VQA packages, an index; "
            f"`--threads 2`): {args.count} requests from {args.clients} clients, good and bad mixed, "
            f"index adds and deletes among them, then SIGKILL and a restart on the same index. "
            f"Produced by `scripts/soak-serve.sh`.\n\n"
            f"| figure | value |\n|---|---|\n"
            f"| requests / s | {summary['per_second']} |\n| 5xx | {fivexx} |\n"
            f"| RSS after warm-up → end | {summary['rss_warm_mb']} → {summary['rss_end_mb']} MB "
            f"({summary['rss_growth_pct']:+.2f} %) |\n"
            f"| acknowledged adds / deletes | {len(acked_add)} / {len(acked_delete)} |\n"
            f"| lost after SIGKILL + restart | {len(lost)} |\n| unexpected answers | {len(failures)} |\n\n"
            f"| request | statuses |\n|---|---|\n{rows}\n")
    ok = fivexx == 0 and not failures and not lost and growth < 5.0
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
