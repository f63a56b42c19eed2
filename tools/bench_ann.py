"""The Python side of scripts/bench-ann.sh: the exact top-10 (faiss IndexFlatIP) that every engine's
recall is measured against, faiss's IndexHNSWFlat measured as tools/bench-ann measures the Rust
crates, and the table.

  bench_ann.py gt DIR                      -> DIR/gt.i32
  bench_ann.py faiss DIR THREADS           -> one JSON object on stdout
  bench_ann.py table DIR OUT.md OUT.json RESULT.json...
"""
import json
import os
import sys
import time

import faiss
import numpy as np

K = 10
# Links per node on the upper layers (2M on the base layer), as usearch's connectivity and
# hnsw_rs's max_nb_connection: the same graph degree for every engine.
M = 16
EF_CONSTRUCTION = 64
EFS = [16, 24, 32, 48, 64, 96, 128, 192, 256]
TARGET = 0.97


def load(d):
    meta = json.load(open(os.path.join(d, "meta.json")))
    dim = meta["dim"]
    read = lambda n: np.fromfile(os.path.join(d, n), dtype="<f4").reshape(-1, dim)
    return meta, read("base.f32"), read("queries.f32"), read("extra.f32")


def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def gt(d):
    _, base, queries, _ = load(d)
    flat = faiss.IndexFlatIP(base.shape[1])
    flat.add(base)
    _, ids = flat.search(queries, K)
    ids.astype("<i4").tofile(os.path.join(d, "gt.i32"))


def bench_faiss(d, threads):
    meta, base, queries, extra = load(d)
    truth = np.fromfile(os.path.join(d, "gt.i32"), dtype="<i4").reshape(-1, K)
    n, dim = base.shape
    faiss.omp_set_num_threads(threads)
    rss0 = rss()
    t = time.perf_counter()
    index = faiss.IndexHNSWFlat(dim, M, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = EF_CONSTRUCTION
    index.add(base)
    build = time.perf_counter() - t
    ram = rss() - rss0
    path = os.path.join(d, "saved-faiss.index")
    faiss.write_index(index, path)
    disk = os.path.getsize(path)
    os.remove(path)
    sweep, chosen = [], None
    # Per-query latency with one thread, queries one at a time as a server answers them.
    faiss.omp_set_num_threads(1)
    for ef in EFS:
        index.hnsw.efSearch = ef
        lat, found = [], []
        t0 = time.perf_counter()
        for q in queries:
            t = time.perf_counter()
            _, ids = index.search(q[None, :], K)
            lat.append((time.perf_counter() - t) * 1e3)
            found.append(ids[0])
        total = time.perf_counter() - t0
        hits = sum(len(set(f) & set(g)) for f, g in zip(found, truth))
        recall = hits / (len(found) * K)
        row = {"ef_search": ef, "recall_at_10": recall,
               "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
               "qps_1": len(queries) / total}
        sweep.append(row)
        if recall >= TARGET or ef == EFS[-1]:
            chosen = dict(row)
            break
    # faiss spreads a batch's queries over its OpenMP threads.
    faiss.omp_set_num_threads(threads)
    t = time.perf_counter()
    index.search(queries, K)
    chosen[f"qps_{threads}"] = len(queries) / (time.perf_counter() - t)
    faiss.omp_set_num_threads(1)
    t = time.perf_counter()
    for v in extra:
        index.add(v[None, :])
    adds = len(extra) / (time.perf_counter() - t)
    print(json.dumps({"engine": "faiss-hnsw-flat", "n": n, "dim": dim, "queries": len(queries),
                      "threads": threads, "m": M, "ef_construction": EF_CONSTRUCTION,
                      "build_s": build, "ram_bytes": ram, "disk_bytes": disk,
                      "at_target": chosen, "sweep": sweep, "adds_per_s": adds,
                      # IndexHNSWFlat has no remove_ids.
                      "deletes_per_s": None, "faiss": faiss.__version__}))


def table(d, out_md, out_json, results):
    meta = json.load(open(os.path.join(d, "meta.json")))
    rows = [json.load(open(r)) for r in results]
    mib = lambda b: f"{b / 2**20:.0f}"
    rate = lambda r: "n/a" if r is None else f"{r:,.0f}"
    lines = [
        f"# ANN benchmark: {meta['n']:,} × {meta['dim']}-d unit vectors",
        "",
        "Made by `scripts/bench-ann.sh` (do not edit by hand). Data: "
        f"{meta['centres']:,} centres uniform on the unit sphere; each vector is a centre picked "
        f"uniformly plus isotropic Gaussian noise of norm ≈ {meta['sigma']}, renormalised (seed "
        f"{meta['seed']}); {meta['queries']:,} held-out queries from the same distribution. Recall@10 "
        "against faiss IndexFlatIP (exact). Every HNSW: M=16 (16 links per node on the upper "
        "layers, 32 on the base layer: faiss's M, usearch's connectivity, hnsw_rs's max_nb_connection), "
        "efConstruction 64, built with 2 threads; efSearch is the smallest of "
        f"{EFS} reaching recall@10 ≥ {TARGET}. Latency: one query at a time, one thread. RAM: "
        "resident-memory growth while building, over the loaded vectors. Adds/deletes: 1,000 one "
        "at a time after the build. Exact search answers a sample of the queries.",
        "",
        "| engine | build s | RAM MiB | disk MiB | efSearch | recall@10 | p50 ms | p99 ms | QPS 1 thr | QPS 2 thr | adds/s | deletes/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        a = r["at_target"]
        ef = a["ef_search"] or "—"
        lines.append(
            f"| {r['engine']} | {r['build_s']:.1f} | {mib(r['ram_bytes'])} | {mib(r['disk_bytes'])} "
            f"| {ef} | {a['recall_at_10']:.3f} | {a['p50_ms']:.3f} | {a['p99_ms']:.3f} "
            f"| {a['qps_1']:,.0f} | {a.get('qps_2', a.get('qps_' + str(r['threads']), 0)):,.0f} "
            f"| {rate(r['adds_per_s'])} | {rate(r['deletes_per_s'])} |")
    lines.append("")
    open(out_md, "w").write("\n".join(lines))
    json.dump({"meta": meta, "results": rows}, open(out_json, "w"), indent=1)


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "gt":
        gt(sys.argv[2])
    elif cmd == "faiss":
        bench_faiss(sys.argv[2], int(sys.argv[3]))
    elif cmd == "table":
        table(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:])
    else:
        sys.exit(f"unknown command {cmd}")
