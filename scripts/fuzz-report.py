#!/usr/bin/env python3
"""The fuzzing record (docs/fuzz/runs.jsonl) and its summary (docs/fuzz/README.md); scripts/fuzz.sh calls it.

  fuzz-report.py record --log LOG --target T ...   prints one JSON line for a libFuzzer run
  fuzz-report.py render runs.jsonl                 prints the Markdown summary of every run
"""
import argparse, datetime, json, re, sys

STAT = re.compile(r"^stat::(\w+):\s+(\d+)", re.M)
STATUS = re.compile(r"^#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+)(?: corp: (\d+)/)?", re.M)


def record(a):
    text = open(a.log, errors="replace").read()
    stats = {k: int(v) for k, v in STAT.findall(text)}
    status = STATUS.findall(text)
    last = status[-1] if status else None
    kind = None
    if a.crash:
        kind = a.crash.rsplit("/", 1)[-1].split("-", 1)[0]  # crash | timeout | oom | leak
    row = {
        "time": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": a.commit,
        "target": a.target,
        "sanitizer": a.sanitizer,
        "seconds": round(float(a.end) - float(a.start), 1),
        "executions": stats.get("number_of_executed_units", int(last[0]) if last else 0),
        "exec_per_sec": stats.get("average_exec_per_sec"),
        "cov": int(last[1]) if last else None,
        "ft": int(last[2]) if last else None,
        "corpus_units": int(last[3]) if last and last[3] else None,
        "new_units": stats.get("new_units_added"),
        "peak_rss_mb": stats.get("peak_rss_mb"),
        "libfuzzer_rc": a.rc,
        "crash": a.crash or None,
        "crash_kind": kind,
        "minimized": a.minimized or None,
        "regressions_replayed": a.regressions,
        "regressions_failing": a.regressions_failing,
    }
    print(json.dumps(row, sort_keys=False))


def render(path):
    rows = [json.loads(l) for l in open(path) if l.strip()]
    targets = {}
    for r in rows:
        targets.setdefault(r["target"], []).append(r)
    total_s = sum(r["seconds"] for r in rows)
    total_x = sum(r["executions"] for r in rows)
    out = [
        "# Fuzzing record",
        "",
        "Rendered by `scripts/fuzz.sh` from [runs.jsonl](runs.jsonl) (one line per target per run: libFuzzer's",
        "final statistics). Do not edit by hand. A crash is *open* when the target's latest run crashed, or when",
        "a committed regression (`fixtures/fuzz-regressions/TARGET/`) crashes again on replay.",
        "",
        f"Cumulative: **{total_s / 3600:.2f} h** ({total_s:.0f} s), {total_x:,} executions, {len(rows)} target runs,",
        f"{sum(1 for r in rows if r['crash'])} crashes found, "
        f"{sum(1 for rs in targets.values() if rs[-1]['crash'] or rs[-1]['regressions_failing'])} targets with an open crash.",
        "",
        "| target | runs | cumulative s | executions | cov (latest) | ft (latest) | corpus (latest) | crashes found | open | last run |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for t, rs in sorted(targets.items()):
        last = rs[-1]
        found = len({r["crash"].rsplit("-", 1)[-1] for r in rs if r["crash"]})
        open_ = int(bool(last["crash"]) or bool(last["regressions_failing"]))
        out.append(
            f"| {t} | {len(rs)} | {sum(r['seconds'] for r in rs):.0f} | {sum(r['executions'] for r in rs):,} | "
            f"{last['cov'] if last['cov'] is not None else '-'} | {last['ft'] if last['ft'] is not None else '-'} | "
            f"{last['corpus_units'] if last['corpus_units'] is not None else '-'} | {found} | {open_} | "
            f"{last['time']} @ {last['commit']} ({last['sanitizer']}) |"
        )
    crashes = [r for r in rows if r["crash"]]
    if crashes:
        out += ["", "## Crashes found", "", "| time | target | kind | artifact (minimized) | commit |", "| --- | --- | --- | --- | --- |"]
        for r in crashes:
            out.append(f"| {r['time']} | {r['target']} | {r['crash_kind']} | {r['minimized'] or r['crash']} | {r['commit']} |")
    print("\n".join(out))


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record")
    for name in ("log", "target", "commit", "sanitizer", "start", "end"):
        r.add_argument("--" + name, required=True)
    r.add_argument("--rc", type=int, required=True)
    r.add_argument("--crash", default="")
    r.add_argument("--minimized", default="")
    r.add_argument("--regressions", type=int, default=0)
    r.add_argument("--regressions-failing", type=int, default=0)
    g = sub.add_parser("render")
    g.add_argument("path")
    a = p.parse_args()
    record(a) if a.cmd == "record" else render(a.path)


if __name__ == "__main__":
    sys.exit(main())
