"""Load benchmark of `blip-onnx serve` (run by scripts/bench-serve.sh, which makes the packages, the
index and the environment): wrk (tools/bench_serve.lua) at each client count against

  caption:  blip-onnx serve with the caption package (request-level batching, the default, then
            continuous batching: --scheduler iteration), then the FastAPI + transformers server
            (tools/reference/blip_fastapi_server.py) on the same images, one after the other;
  search:   blip-onnx serve with the retrieval package and the index: text search, ITC top-k + ITM
            rerank, then a soak of --soak-requests cheap requests (search without rerank, text
            embeddings, one in 100 reranked) for the RSS growth;
  soak:     optionally (--soak-caption-package) the same server code with a small caption package for
            --soak-requests caption requests (the base caption package answers ~2 a second).

Throughput, p50/p90/p99 latency (wrk's, every answer), mean images per vision-encoder run (from the
server's /metrics), 429s, other errors, RSS (VmRSS of the server process) before and after.
Writes PREFIX.json, PREFIX.md and (--readme) the README's <!-- bench:serve-base --> block.

    python tools/bench_serve.py --cli BIN --caption-package P --caption-checkpoint C \
        --retrieval-package P --index IDX --images DIR [--clients 1,4,16,64] [--seconds 60] -o PREFIX
    python tools/bench_serve.py --render -o PREFIX [--readme README.md]
"""

from __future__ import annotations

import argparse
import atexit
import base64
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Dict, List, Optional

from readme_block import write_block

HERE = Path(__file__).resolve().parent
QUERIES = ["a red circle on a blue background", "two green squares", "a picture of a yellow ellipse",
           "a large purple rectangle", "small shapes on a white background", "an orange square and a circle",
           "a dark picture with one bright shape", "three circles", "a cyan rectangle at the top",
           "a pink ellipse next to a grey square"]


CONTINUOUS = "blip-onnx serve --scheduler iteration"


class Server:
    """A server process on a loopback port, ready when /health/ready answers 200."""

    def __init__(self, cmd: List[str], port: Optional[int], env: Dict[str, str], log: Path) -> None:
        self.log = log
        self.proc = subprocess.Popen(cmd, env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                                     stderr=open(log, "w"))
        atexit.register(lambda: self.proc.poll() is None and self.proc.kill())  # never left running
        self.base = f"http://127.0.0.1:{port}" if port else None
        deadline = time.time() + 600
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"{cmd[0]} exited: {log.read_text()[-2000:]}")
            if self.base is None:
                m = re.search(r"listening on (http://\S+)", log.read_text())
                self.base = m.group(1) if m else None
            if self.base and get(self.base + "/health/ready") == 200:
                return
            time.sleep(0.5)
        raise SystemExit(f"{cmd[0]} not ready after 600 s")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise SystemExit("no VmRSS")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def get(url: str) -> Optional[int]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status
    except Exception:
        return None


def post(url: str, body: str) -> Dict[str, Any]:
    req = urllib.request.Request(url, body.encode(), {"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metric_sums(base: str) -> Dict[str, float]:
    """From /metrics: blip_batch_size's _sum and _count over every label set (images per
    vision-encoder run), and blip_graph_duration_seconds' per graph ("GRAPH.sum", "GRAPH.count")."""
    with urllib.request.urlopen(base + "/metrics", timeout=10) as r:
        text = r.read().decode()
    sums: Dict[str, float] = {"sum": 0.0, "count": 0.0}
    for line in text.splitlines():
        m = re.match(r"blip_batch_size_(sum|count)(\{[^}]*\})? (\S+)", line)
        if m:
            sums[m.group(1)] += float(m.group(3))
        m = re.match(r'blip_graph_duration_seconds_(sum|count)\{graph="([^"]+)"\} (\S+)', line)
        if m:
            sums[f"{m.group(2)}.{m.group(1)}"] = float(m.group(3))
    return sums


def graph_times(before: Dict[str, float], after: Dict[str, float], answers: int) -> Dict[str, Dict[str, float]]:
    """Per graph over a window: runs, mean ms per run, and graph seconds per answered request."""
    out = {}
    for key in after:
        if not key.endswith(".count"):
            continue
        g = key[: -len(".count")]
        runs = after[key] - before.get(key, 0.0)
        secs = after[f"{g}.sum"] - before.get(f"{g}.sum", 0.0)
        if runs > 0:
            out[g] = {"runs": runs, "ms_per_run": secs / runs * 1e3,
                      "s_per_answer": secs / answers if answers else None}
    return out


def wrk(base: str, requests: Path, clients: int, seconds: int) -> Dict[str, Any]:
    env = {**os.environ, "BENCH_REQUESTS": str(requests)}
    out = subprocess.run(["wrk", "-t1", f"-c{clients}", f"-d{seconds}s", "--timeout", "600s",
                          "-s", str(HERE / "bench_serve.lua"), base], env=env, check=True,
                         capture_output=True, text=True).stdout
    row = json.loads([l for l in out.splitlines() if l.startswith("{")][-1])
    row["per_s"] = row["ok"] / row["seconds"]
    return row


def soak(server: Server, requests: Path, clients: int, count: int) -> Dict[str, Any]:
    """One 30 s wrk run to warm up (not counted), then wrk in 30 s runs until `count` requests are
    answered (wrk stops on time, not on a count): the totals, the worst p99 of the runs, and the
    server's RSS after the warm-up and after each run."""
    wrk(server.base, requests, clients, 30)
    total = {"seconds": 0.0, "requests": 0, "ok": 0, "status_429": 0, "status_other": 0, "socket_errors": 0,
             "timeouts": 0, "p99_ms": 0.0, "runs": 0, "clients": clients, "rss_mb": [server.rss_mb()]}
    while total["requests"] < count:
        row = wrk(server.base, requests, clients, 30)
        for k in ("seconds", "requests", "ok", "status_429", "status_other", "socket_errors", "timeouts"):
            total[k] += row[k]
        total["p99_ms"] = max(total["p99_ms"], row["p99_ms"])
        total["runs"] += 1
        total["rss_mb"].append(server.rss_mb())
    total["per_s"] = total["ok"] / total["seconds"]
    total["rss_growth"] = total["rss_mb"][-1] / total["rss_mb"][0] - 1
    print(json.dumps(total), flush=True)
    return total


def load_levels(server: Server, requests: Path, clients: List[int], seconds: int, batched: bool) -> List[Dict]:
    rows = []
    for c in clients:
        before = metric_sums(server.base) if batched else None
        row = wrk(server.base, requests, c, seconds)
        if before:
            after = metric_sums(server.base)
            runs = after["count"] - before["count"]
            row["mean_batch"] = (after["sum"] - before["sum"]) / runs if runs else None
            row["graphs"] = graph_times(before, after, row["ok"])
        else:
            row["mean_batch"] = 1.0  # no batching across requests: one request's images per run
        row["clients"] = c
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def requests_file(work: Path, name: str, lines: List[str]) -> Path:
    path = work / f"{name}.tsv"
    path.write_text("".join(l + "\n" for l in lines))
    return path


def machine() -> str:
    """CPU model, core count and whether it has VNNI: INT8 speed (and, for QInt8 weights without
    VNNI, int16 saturation) depends on it."""
    model, flags = platform.machine(), set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            model = value.strip()
        elif key.strip() == "flags":
            flags = set(value.split())
    vnni = "VNNI" if flags & {"avx512_vnni", "avx_vnni"} else "no VNNI"
    return f"{model}, {os.cpu_count()} CPUs, {vnni}"


def measure(args: argparse.Namespace) -> Dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    clients = [int(c) for c in args.clients.split(",")]
    images = sorted(Path(args.images).glob("*.jpg"))[:args.distinct_images]
    caption_lines = [f"/v1/caption\t{json.dumps({'images': [base64.b64encode(p.read_bytes()).decode()]})}"
                     for p in images]
    caption_req = requests_file(work, "caption", caption_lines)
    serve = [args.cli, "serve", "--port", "0", "--threads", str(args.threads), "--request-timeout", "300"]
    report: Dict[str, Any] = {"threads": args.threads, "seconds": args.seconds, "clients": clients,
                              "machine": machine(),
                              "caption_package": args.caption_package, "caption_checkpoint": args.caption_checkpoint,
                              "retrieval_package": args.retrieval_package, "index": args.index,
                              "distinct_images": len(images), "command": " ".join(sys.argv), "scenarios": []}

    def scenario(name: str, engine: str, server: Server, req: Path, batched: bool,
                 soak_req_path: Optional[Path] = None) -> Dict[str, Any]:
        warm = caption_lines[0].split("\t", 1)[1] if req == caption_req else None
        if warm:
            post(server.base + "/v1/caption", warm)
        rss_before = server.rss_mb()
        rows = load_levels(server, req, clients, args.seconds, batched)
        s = {"scenario": name, "engine": engine, "rows": rows, "rss_before_mb": rss_before,
             "rss_after_mb": server.rss_mb(), "requests_between_rss": sum(r["requests"] for r in rows)}
        s["rss_growth"] = s["rss_after_mb"] / rss_before - 1
        if soak_req_path:
            s["soak"] = soak(server, soak_req_path, 2, args.soak_requests)
        server.stop()
        report["scenarios"].append(s)
        return s

    # Captions: blip-onnx, then the FastAPI + PyTorch server, each with the machine to itself.
    if "caption" in args.scenarios:
        captions(args, serve, work, caption_req, scenario)
    if "search" in args.scenarios:
        search(args, serve, work, scenario)
    if "soak" in args.scenarios and args.soak_caption_package:
        small = Server(serve + ["--package", args.soak_caption_package], None, {}, work / "small.log")
        post(small.base + "/v1/caption", caption_lines[0].split("\t", 1)[1])
        report["scenarios"].append({"scenario": "caption", "engine": "blip-onnx serve",
                                    "package": args.soak_caption_package, "rows": [],
                                    "soak": soak(small, caption_req, 4, args.soak_requests)})
        small.stop()
    return report


def captions(args: argparse.Namespace, serve: List[str], work: Path, caption_req: Path, scenario: Any) -> None:
    onnx = Server(serve + ["--package", args.caption_package], None, {}, work / "caption.log")
    scenario("caption", "blip-onnx serve", onnx, caption_req, batched=True)
    # Continuous batching, side by side: requests join one running decode batch at step boundaries.
    iteration = Server(serve + ["--package", args.caption_package, "--scheduler", "iteration"], None, {},
                       work / "caption-iteration.log")
    scenario("caption", CONTINUOUS, iteration, caption_req, batched=True)
    port = free_port()
    fastapi = Server([args.python, str(HERE / "reference" / "blip_fastapi_server.py"), args.caption_checkpoint,
                      "--port", str(port), "--threads", str(args.threads)], port, {}, work / "fastapi.log")
    scenario("caption", "FastAPI + PyTorch", fastapi, caption_req, batched=False)


def search(args: argparse.Namespace, serve: List[str], work: Path, scenario: Any) -> None:
    """Search over the index: ITC top-k 10, ITM rerank of 16; then the soak."""
    search_req = requests_file(work, "search", [
        f"/v1/search\t{json.dumps({'text': q, 'k': 10, 'rerank': 16})}" for q in QUERIES])
    soak_lines = []
    for i in range(100):
        q = QUERIES[i % len(QUERIES)] + f" {i}"
        if i == 0:
            soak_lines.append(f"/v1/search\t{json.dumps({'text': q, 'k': 10, 'rerank': 16})}")
        elif i % 2:
            soak_lines.append(f"/v1/search\t{json.dumps({'text': q, 'k': 10, 'rerank': 0})}")
        else:
            soak_lines.append(f"/v1/embed\t{json.dumps({'texts': [q, q + ' again']})}")
    soak_req = requests_file(work, "soak", soak_lines)
    retrieval = Server(serve + ["--package", args.retrieval_package, "--index", args.index], None, {},
                       work / "search.log")
    post(retrieval.base + "/v1/search", json.dumps({"text": QUERIES[0], "k": 10, "rerank": 16}))
    scenario("search", "blip-onnx serve", retrieval, search_req, batched=True, soak_req_path=soak_req)


def merge(old: Dict[str, Any], new: Dict[str, Any]) -> Dict[str, Any]:
    """A partial run (--scenarios) replaces its scenarios in an earlier report and keeps the rest."""
    key = lambda s: (s["scenario"], s["engine"], s.get("package"))  # noqa: E731
    ran = {key(s) for s in new["scenarios"]}
    kept = [s for s in old["scenarios"] if key(s) not in ran]
    return {**new, "scenarios": kept + new["scenarios"],
            "command": old["command"] if ran == {key(s) for s in old["scenarios"]} else
            f"{old['command']}; then {new['command']}"}


def find(report: Dict[str, Any], scenario: str, engine: str, clients: int) -> Optional[Dict[str, Any]]:
    # The caption soak is a "caption" scenario of the same server too, with no client-count rows.
    rows = (row for s in report["scenarios"] if s["scenario"] == scenario and s["engine"] == engine
            for row in s["rows"] if row["clients"] == clients)
    return next(rows, None)


def markdown(r: Dict[str, Any]) -> str:
    lines = [
        f"`blip-onnx serve --threads {r['threads']} --request-timeout 300` (other limits at their defaults) on {r['machine']}, wrk closed loop (`tools/bench_serve.lua`), "
        f"{r['seconds']} s per client count, one image per caption request ({r['distinct_images']} distinct "
        "640×480 JPEGs in turn). Produced by `scripts/bench-serve.sh`.",
        "",
        f"Packages: `{r['caption_package']}` (the default quantized caption package: INT8 encoders, INT4 decoder; "
        f"BLIP's COCO settings, beam 3)"
        + (f", `{r['retrieval_package']}` with the index `{r['index']}`. "
           if any(s["scenario"] == "search" for s in r["scenarios"]) else ". ") +
        f"FastAPI + PyTorch: `tools/reference/blip_fastapi_server.py`, transformers' BlipForConditionalGeneration "
        f"(FP32 eager) from the checkpoint the package was converted from, {r['threads']} threads, the same settings.",
        "",
        "| scenario | server | clients | answers/s | p50 ms | p90 ms | p99 ms | mean batch | 200 | 429 | other errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in r["scenarios"]:
        for row in s["rows"]:
            mb = "—" if row.get("mean_batch") is None else f"{row['mean_batch']:.1f}"
            errors = row["status_other"] + row["socket_errors"] + row["timeouts"]
            lines.append(f"| {s['scenario']} | {s['engine']} | {row['clients']} | {row['per_s']:.2f} | "
                         f"{row['p50_ms']:.0f} | {row['p90_ms']:.0f} | {row['p99_ms']:.0f} | {mb} | {row['ok']} | "
                         f"{row['status_429']} | {errors} |")
    graph_rows = [(s, row) for s in r["scenarios"] for row in s["rows"] if row.get("graphs")]
    if graph_rows:
        lines += ["", "Where the time goes, from the server's `/metrics` (`blip_graph_duration_seconds`, per graph run): "
                  "mean ms per run (steps: decoder runs in the window, each one step of the whole running batch), and graph "
                  "seconds per answered request. The engine runs one graph at a time on all the threads, so over a long "
                  "window the rate is at most 1 / that sum; over a 60 s window with batches of 10 s and more, runs "
                  "of requests still unanswered at its end inflate it.", "",
                  "| scenario | server | clients | vision_encoder ms/run (mean batch) | cross_kv ms/run | decoder ms/step (steps) | other graphs ms/run | graph s per answer |",
                  "|---|---|---:|---:|---:|---:|---|---:|"]
        for s, row in graph_rows:
            g = row["graphs"]
            cell = lambda name: f"{g[name]['ms_per_run']:.0f}" if name in g else "—"  # noqa: E731
            vision = f"{cell('vision_encoder')} ({row['mean_batch']:.1f})" if "vision_encoder" in g and row.get("mean_batch") else cell("vision_encoder")
            dec = f"{g['decoder']['ms_per_run']:.1f} ({g['decoder']['runs']:.0f})" if "decoder" in g else "—"
            others = ", ".join(f"{n} {v['ms_per_run']:.0f}" for n, v in sorted(g.items())
                               if n not in ("vision_encoder", "cross_kv", "decoder")) or "—"
            total = sum(v["s_per_answer"] or 0.0 for v in g.values())
            lines.append(f"| {s['scenario']} | {s['engine']} | {row['clients']} | {vision} | {cell('cross_kv')} | {dec} | "
                         f"{others} | {total:.2f} |")
    lines += ["", "| scenario | server | requests between the readings | RSS before MB | RSS after MB | growth |",
              "|---|---|---:|---:|---:|---:|"]
    for s in r["scenarios"]:
        what = s["scenario"] + (f" (`{s['package']}`)" if s.get("package") else "")
        if s["rows"]:
            lines.append(f"| {what}, the client counts above | {s['engine']} | {s['requests_between_rss']} | "
                         f"{s['rss_before_mb']:.0f} | {s['rss_after_mb']:.0f} | {s['rss_growth'] * 100:+.1f} % |")
        if s.get("soak"):
            k = s["soak"]
            errors = k["status_other"] + k["socket_errors"] + k["timeouts"]
            lines.append(f"| {what}, soak at {k['clients']} clients ({k['per_s']:.1f}/s, {k['status_429']} × 429, "
                         f"{errors} other errors) | {s['engine']} | {k['requests']} | {k['rss_mb'][0]:.0f} | "
                         f"{k['rss_mb'][-1]:.0f} | {k['rss_growth'] * 100:+.1f} % |")
    top = max(r["clients"])
    one = find(r, "caption", "blip-onnx serve", 1)
    mid = 16 if 16 in r["clients"] else top
    ours, theirs = find(r, "caption", "blip-onnx serve", mid), find(r, "caption", "FastAPI + PyTorch", mid)
    search1 = find(r, "search", "blip-onnx serve", 1)
    lines.append("")
    if one and ours and theirs and one["per_s"] and theirs["per_s"]:
        lines.append(f"Captions/s at {mid} clients: {ours['per_s'] / one['per_s']:.2f}× blip-onnx's own single-client "
                     f"rate, {ours['per_s'] / theirs['per_s']:.2f}× the FastAPI + PyTorch server's at {mid} clients "
                     "(targets: ≥ 1.5× and ≥ 5×).")
    cont, cont1 = find(r, "caption", CONTINUOUS, mid), find(r, "caption", CONTINUOUS, 1)
    if ours and cont and ours["per_s"] and cont1 and cont1["per_s"]:
        lines.append(f"Continuous batching (`--scheduler iteration`) at {mid} clients: {cont['per_s']:.2f} captions/s, "
                     f"{cont['per_s'] / ours['per_s']:.2f}× request-level batching's {ours['per_s']:.2f} "
                     f"and {cont['per_s'] / cont1['per_s']:.2f}× its own single-client rate.")
    if search1:
        lines.append(f"Search with rerank 16 over the index, one client: p50 {search1['p50_ms']:.0f} ms (target ≤ 1 s). "
                     "The index holds 10 000 entries made from 1 000 distinct synthetic images, each under ten file "
                     "names: `index` encodes a content once and gives every entry its own embedding row and its own "
                     "rerank states (0.87 MB of f16 each, 8.3 GB in all); a query's work does not depend on the "
                     "images' content (scripts/bench-serve.sh says why: 10 000 distinct encodings take close to 3 h "
                     "on this CPU).")
    elif not any(s["scenario"] == "search" for s in r["scenarios"]):
        lines.append("Search over the 10 000-image index: not in this run (`scripts/bench-serve.sh SECONDS "
                     "CLIENTS search` adds it to this report; the index is built first).")
    lines += ["", "Latency is wrk's over every answer in the window; a closed loop of N clients queues N requests, "
              "so latency grows with N once the server is saturated. A request still running when the window "
              "closes is not counted. Mean batch: images per vision-encoder run (a search runs no vision encoder: "
              "the rerank reads the candidates' stored states). RSS is the server process's VmRSS; "
              "over the client counts it is read after one warm-up request, so it includes the working set that "
              "larger batches need. A soak warms up for 30 s at its client count first, then runs until the "
              "requests are answered (wrk in 30 s runs; RSS read after each). The search soak: a hundred requests "
              "in turn (half searches without rerank, half text embeddings of two texts, one search reranked); "
              "the caption soak runs the same server with the small shapes caption package (the base package "
              "answers one or two captions a second: 10 000 would take hours)."]
    return "\n".join(lines) + "\n"


def write(report: Dict[str, Any], prefix: str, readme: Optional[str]) -> None:
    table = markdown(report)
    Path(prefix + ".md").write_text(table)
    if readme:
        write_block(readme, "serve-base", table)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--render", action="store_true", help="only re-render PREFIX.md (and --readme) from PREFIX.json")
    p.add_argument("--readme")
    p.add_argument("--cli")
    p.add_argument("--caption-package")
    p.add_argument("--caption-checkpoint")
    p.add_argument("--retrieval-package")
    p.add_argument("--index")
    p.add_argument("--images")
    p.add_argument("--distinct-images", type=int, default=32)
    p.add_argument("--soak-caption-package", help="a small caption package for a --soak-requests caption soak")
    p.add_argument("--soak-requests", type=int, default=10000)
    p.add_argument("--python", default=sys.executable, help="the Python that runs the FastAPI server")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--clients", default="1,4,16,64")
    p.add_argument("--seconds", type=int, default=60)
    p.add_argument("--scenarios", default="caption,search,soak",
                   help="which to run (caption: blip-onnx and FastAPI; search; soak: the small caption "
                        "package); a partial run replaces its scenarios in an existing PREFIX.json")
    p.add_argument("-o", "--output", required=True, help="PREFIX of PREFIX.json and PREFIX.md")
    args = p.parse_args()
    args.scenarios = set(args.scenarios.split(","))
    if args.render:
        report = json.loads(Path(args.output + ".json").read_text())
    else:
        report = measure(args)
        previous = Path(args.output + ".json")
        if previous.exists() and args.scenarios != {"caption", "search", "soak"}:
            report = merge(json.loads(previous.read_text()), report)
        tmp = Path(args.output + ".json.tmp")
        tmp.write_text(json.dumps(report, indent=1) + "\n")
        tmp.replace(args.output + ".json")
    write(report, args.output, args.readme)
    print(markdown(report))


if __name__ == "__main__":
    main()
