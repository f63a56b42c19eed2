"""Portability suite, graph level: every graph of every package flavour on every runtime, against
native ONNX Runtime (the Python wheel of the version blip-runtime loads) on the same seeded inputs.

  suite.py cases OUT PKG...        inputs for each graph + native outputs (and `check --target` verdicts)
  suite.py run RUNTIME OUT         outputs of one runtime: ort-mobile | openvino | tract
                                   (node and web: run_node.mjs)
  suite.py report OUT [--bless]    the matrix: OUT/portability.{json,md}; with --bless also
                                   docs/portability.{json,md} and the README's block (committed files
                                   are rewritten only when asked); exit 1 on a failed cell

Packages are folders named MODEL (the converted FP32 package) and MODEL--FLAVOUR.
Files under OUT: cases/<package>/<graph>/case.json with one raw little-endian .bin per input;
<runtime>/<package>/<graph>/result.json with one .bin per output.
Gates (one definition, in `gate`): an FP32 graph's outputs within FP32_TOL of native's; each output of
a quantized or FP16 graph at an RMS distance to native FP32 no more than QUANT_SLACK times native's own
distance for that output (+ QUANT_FLOOR), output by output: pooled over a decoder's outputs, its exact
KV cache hid logits at twice native's distance. `blip-onnx check --target` says for each graph and runtime whether it runs there (within
these gates) or declares why not; every cell where the measurement disagrees fails the suite, whether
or not the package is made for that runtime: a graph check passes that fails its gate, and a graph check
declares that passes it (a stale rule).
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import engine_worker  # how OpenVINO and tract run a graph, shared with the end-to-end suite

FP32_TOL = 1e-4
QUANT_SLACK = 1.5
QUANT_FLOOR = 1e-4
RUNTIMES = ["node", "web", "openvino", "tract", "ort-mobile"]
DTYPES = {"float32": np.float32, "int64": np.int64, "float16": np.float16}
# Symbolic dims: two rows, a four-token step after three cached tokens; the decoder's two rows
# are two beams sharing one image's cross K/V.
BATCH, SEQUENCE, PAST, IMAGES, GROUP = 2, 4, 3, 1, 2


def dims_of(spec, manifest):
    sizes = {"batch": BATCH, "sequence": SEQUENCE, "past_sequence": PAST, "total_sequence": PAST + SEQUENCE,
             "encoder_sequence": manifest["model"]["image_tokens"], "images": IMAGES, "group": GROUP}
    out = []
    for d in spec["dims"]:
        if isinstance(d, int):
            out.append(d)
        elif d in sizes:
            out.append(sizes[d])
        else:
            raise SystemExit(f"{spec['name']}: no size for the symbolic dim {d!r}")
    return out


def make_input(spec, manifest, rng):
    name, shape = spec["name"], dims_of(spec, manifest)
    if name == "input_ids":
        return rng.integers(0, manifest["model"]["vocab_size"], size=shape, dtype=np.int64)
    if name == "cross_groups":
        return np.arange(IMAGES * GROUP, dtype=np.int64).reshape(shape)
    if name == "cross_slots":
        return np.arange(BATCH, dtype=np.int64)
    if name == "position_ids":
        return np.broadcast_to(np.arange(PAST, PAST + shape[1], dtype=np.int64), shape).copy()
    if "attention_mask" in name:
        mask = np.ones(shape, dtype=np.int64)
        if name == "attention_mask" and shape[1] == SEQUENCE:
            mask[1, -1] = 0  # a padded token in the second row
        return mask
    if name == "pixel_values":
        return rng.standard_normal(shape).astype(np.float32)
    # Hidden states, cross K/V and the KV cache: unit-scale activations.
    return rng.standard_normal(shape).astype(DTYPES[spec["dtype"]])


def write_tensor(path, a):
    path.write_bytes(np.ascontiguousarray(a).tobytes())


def read_tensor(path, dtype, dims):
    return np.frombuffer(path.read_bytes(), dtype=DTYPES[dtype]).reshape(dims)


def native_session(path, **kw):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.log_severity_level = 4  # a failed run is the cell's result, not console noise
    # As blip-runtime: exact u8 x u8 products on x86 without VNNI.
    so.add_session_config_entry("session.x64quantprecision", "1")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"], **kw)


def check_verdicts(cli, pkg):
    """`check --target` for every runtime: {runtime: {graph: (runs, reason)}} and the claimed runtimes."""
    out = subprocess.run([cli, "check", str(pkg), "--no-ort", "--target", ",".join(RUNTIMES), "--format", "json"],
                         capture_output=True, text=True)
    items = json.loads(out.stdout)["items"]
    verdicts = {r: {} for r in RUNTIMES}
    for it in items:
        for r in RUNTIMES:
            suffix = f": runs on {r}"
            if it["item"].endswith(suffix):
                verdicts[r][it["item"][: -len(suffix)]] = [it["pass"], it["reason"]]
    return verdicts


def cases(args):
    out = Path(args.out) / "cases"
    for pkg in map(Path, args.packages):
        manifest = json.loads((pkg / "blip.json").read_text())
        verdicts = check_verdicts(args.cli, pkg)
        for graph, g in sorted(manifest["graphs"].items()):
            d = out / pkg.name / graph
            d.mkdir(parents=True, exist_ok=True)
            # The same inputs for every flavour of a model (MODEL--FLAVOUR): seeded by model and graph.
            rng = np.random.default_rng(list((pkg.name.split("--")[0] + "/" + graph).encode()))
            feeds = {}
            for spec in g["inputs"]:
                feeds[spec["name"]] = make_input(spec, manifest, rng)
                write_tensor(d / f"in.{spec['name']}.bin", feeds[spec["name"]])
            case = {"package": pkg.name, "package_dir": str(pkg.resolve()), "graph": graph,
                    "model": str((pkg / g["file"]).resolve()),
                    "external_data": g.get("external_data"),
                    "precision": g.get("precision", manifest["precision"]),
                    "runtimes": manifest.get("runtimes", ["ort"]),
                    "inputs": [{"name": s["name"], "dtype": s["dtype"], "dims": list(feeds[s["name"]].shape)}
                               for s in g["inputs"]],
                    "outputs": [o["name"] for o in g["outputs"]],
                    "check": {r: verdicts[r].get(graph) for r in RUNTIMES}}
            (d / "case.json").write_text(json.dumps(case, indent=1))
            run_case(d, Path(args.out) / "native" / pkg.name / graph, "native")


def load_case(d):
    case = json.loads((d / "case.json").read_text())
    feeds = {s["name"]: read_tensor(d / f"in.{s['name']}.bin", s["dtype"], s["dims"]) for s in case["inputs"]}
    return case, feeds


def runner(runtime, case, work):
    """A function feeds -> {name: array} running `case`'s graph on `runtime`."""
    model = case["model"]
    if runtime == "native":
        s = native_session(model)
        return lambda feeds: dict(zip(case["outputs"], s.run(case["outputs"], feeds)))
    if runtime == "ort-mobile":
        # ORT's mobile format, "Runtime" optimization style (standard ops kept), converted by
        # `run` and loaded by the same ORT build: the conversion and the .ort file's kernels are
        # what a mobile build runs (its CPU EP: NNAPI/CoreML take few of these dynamic-shape nodes).
        converted = work.parents[2] / "ort-mobile-models" / case["package"]
        path = converted / (Path(model).stem + ".with_runtime_opt.ort")
        if not path.exists():
            raise RuntimeError(f"convert_onnx_models_to_ort wrote no {path.name}")
        s = native_session(path)
        return lambda feeds: dict(zip(case["outputs"], s.run(case["outputs"], feeds)))
    if runtime in engine_worker.SESSIONS:
        _, _, run = engine_worker.SESSIONS[runtime](model)
        return lambda feeds: {n: v for n, v in run(feeds).items() if n in case["outputs"]}
    raise SystemExit(f"unknown runtime {runtime}")


def run_case(case_dir, dest, runtime):
    case, feeds = load_case(case_dir)
    dest.mkdir(parents=True, exist_ok=True)
    result = {"ok": False}
    try:
        t0 = time.perf_counter()
        run = runner(runtime, case, dest)
        t1 = time.perf_counter()
        outs = run(feeds)
        t2 = time.perf_counter()
        result = {"ok": True, "load_ms": (t1 - t0) * 1e3, "run_ms": (t2 - t1) * 1e3, "outputs": {}}
        for name in case["outputs"]:
            a = np.asarray(outs[name], dtype=np.float32)
            write_tensor(dest / f"out.{name}.bin", a)
            result["outputs"][name] = list(a.shape)
    except Exception as e:  # noqa: BLE001 -- any runtime failure is this cell's result
        msg = getattr(e, "stderr", None) or str(e)
        result = {"ok": False, "error": " ".join(str(msg).split())[:400]}
    (dest / "result.json").write_text(json.dumps(result))


def run(args):
    root = Path(args.out)
    if args.runtime == "ort-mobile":
        # One conversion of every package (the packages share a folder); failures are cells.
        first = json.loads(next((root / "cases").glob("*/*/case.json")).read_text())
        subprocess.run([sys.executable, "-m", "onnxruntime.tools.convert_onnx_models_to_ort",
                        str(Path(first["package_dir"]).parent), "--output_dir", str(root / "ort-mobile-models"),
                        "--optimization_style", "Runtime", "--allow_conversion_failures"],
                       check=True, capture_output=True, text=True)
    for case_dir in sorted((root / "cases").glob("*/*")):
        run_case(case_dir, root / args.runtime / case_dir.parent.name / case_dir.name, args.runtime)


def outputs_of(root, runtime, case):
    d = root / runtime / case["package"] / case["graph"]
    res = json.loads((d / "result.json").read_text()) if (d / "result.json").exists() else {
        "ok": False, "error": "not run"}
    if not res["ok"]:
        return res, None
    return res, {n: read_tensor(d / f"out.{n}.bin", "float32", res["outputs"][n]) for n in case["outputs"]}


def rms(a, b):
    return float(np.sqrt(np.mean((a - b) ** 2)))


def max_abs(a, b):
    return float(max(np.max(np.abs(a[n] - b[n])) for n in a))


def verdict(case, runtime, res, outs, native, fp32_native):
    """One cell: {state, detail, max_diff, declared, stale}. state: pass | fail | declared
    (`check --target` said the runtime cannot run the graph, or not accurately, and it did not).
    stale: check declares the graph but it passes, a failure anywhere, so check's rules stay
    measured."""
    check = case["check"].get(runtime)
    declared = check[1] if check and not check[0] else None
    cell = {"detail": "native ONNX Runtime did not run it", "max_diff": None, "declared": declared, "stale": False}
    if native is None:
        return dict(cell, state="fail")
    ok, cell["detail"], cell["max_diff"] = gate(case, res, outs, native, fp32_native)
    if declared is None:
        return dict(cell, state="pass" if ok else "fail")
    if not ok:
        return dict(cell, state="declared")
    if "without VNNI" in declared and host_has_vnni():
        return dict(cell, state="declared", detail=cell["detail"] + "; passes on this CPU, which has VNNI")
    return dict(cell, state="fail", stale=True,
                detail=f"passes ({cell['detail']}), but check --target declares it cannot: {declared}")


def host_has_vnni():
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


def gate(case, res, outs, native, fp32_native):
    """(passes, detail, max |diff| from native or None)."""
    if outs is None:
        return False, f"did not run: {res.get('error', '')}", None
    if any(outs[n].shape != native[n].shape for n in outs):
        return False, "output shapes differ from native", None
    diff = max_abs(outs, native)
    if case["precision"] == "fp32":
        return diff <= FP32_TOL, f"max |diff| {diff:.1e} vs native", diff
    if fp32_native is None:
        return False, "no FP32 flavour of this model to measure against", diff
    # Output by output; the detail names the one nearest its bound (or furthest past it).
    dists = {n: (rms(outs[n], fp32_native[n]), rms(native[n], fp32_native[n])) for n in outs}
    name, (d_rt, d_nat) = max(dists.items(), key=lambda kv: kv[1][0] - QUANT_SLACK * kv[1][1] - QUANT_FLOOR)
    return (all(d <= QUANT_SLACK * nat + QUANT_FLOOR for d, nat in dists.values()),
            f"RMS to FP32 {d_rt:.1e} (native {d_nat:.1e}) on {name}; max |diff| {diff:.1e} vs native", diff)


def counts(cell):
    """Every failed cell fails the suite: it disagrees with `check --target`, made for its runtime
    or not."""
    return cell["state"] == "fail"


def report(args):
    root = Path(args.out)
    case_files = sorted((root / "cases").glob("*/*/case.json"))
    cases_ = [json.loads(p.read_text()) for p in case_files]
    cells, failed = [], 0
    for case in cases_:
        _, native = outputs_of(root, "native", case)
        # MODEL--FLAVOUR is measured against MODEL, the converted FP32 package.
        _, fp32_native = outputs_of(root, "native", dict(case, package=case["package"].split("--")[0]))
        for rt in RUNTIMES:
            res, outs = outputs_of(root, rt, case)
            cell = {"package": case["package"], "graph": case["graph"], "runtime": rt,
                    "fp32": case["precision"] == "fp32", "claimed": rt in case["runtimes"],
                    **verdict(case, rt, res, outs, native, fp32_native)}
            failed += counts(cell)
            cells.append(cell)
    report_ = {"gates": {"fp32_max_abs": FP32_TOL, "quantized_rms_slack": QUANT_SLACK, "quantized_per_output": True,
                         "quantized_rms_floor": QUANT_FLOOR},
               "versions": versions(root), "cells": cells, "failed": failed}
    md = markdown(report_)
    repo = Path(__file__).resolve().parents[2]
    prefixes = [root / "portability"] + ([repo / "docs" / "portability"] if args.bless else [])
    for prefix in prefixes:
        prefix.with_suffix(".json").write_text(json.dumps(report_, indent=1) + "\n")
        prefix.with_suffix(".md").write_text(md)
    if args.bless:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from readme_block import write_block
        write_block(str(repo / "docs" / "portability-suite.md"), "portability", md)
    for c in [c for c in cells if counts(c)][:20]:
        print(f"FAIL {c['package']} {c['graph']} on {c['runtime']}: {c['detail'][:200]}", file=sys.stderr)
    print(f"portability: {len(cells)} cells, {failed} failed (the measurement disagrees with check --target); "
          f"matrix in {prefixes[-1]}.md")
    return 1 if failed else 0


def versions(root):
    v = {}
    try:
        import onnxruntime
        v["onnxruntime (native, ort-mobile)"] = onnxruntime.__version__
        import openvino
        v["openvino"] = openvino.__version__.split("-")[0]
        import tract
        v["tract"] = tract.version()
    except ImportError:
        pass
    node = root / "node-versions.json"
    if node.exists():
        v.update(json.loads(node.read_text()))
    return v


def markdown(r):
    rows = {}
    for c in r["cells"]:
        key = (c["package"], c["runtime"])
        rows.setdefault(key, []).append(c)
    packages = sorted({c["package"] for c in r["cells"]})
    lines = ["Every graph of every flavour, on every runtime, against native ONNX Runtime on the same seeded "
             f"inputs (`scripts/test-portability.sh`). FP32: max |diff| ≤ {r['gates']['fp32_max_abs']:g}; "
             f"quantized and FP16: each output's RMS distance to native FP32 ≤ {r['gates']['quantized_rms_slack']:g}× "
             f"native's own (+{r['gates']['quantized_rms_floor']:g}). A cell counts graphs passed / graphs; "
             "*declared*: `check --target` says the runtime cannot run the graph, or not within the gate; ( ): "
             "the package is not made for that runtime (its cells count all the same).", "",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in r["versions"].items()), "",
             "| package | " + " | ".join(RUNTIMES) + " |", "|---|" + "---|" * len(RUNTIMES)]
    for p in packages:
        cols = []
        for rt in RUNTIMES:
            cs = rows.get((p, rt), [])
            ok = sum(c["state"] == "pass" for c in cs)
            dec = sum(c["state"] == "declared" for c in cs)
            cell = f"{ok}/{len(cs)}" + (f", {dec} declared" if dec else "")
            if any(c["state"] == "fail" for c in cs):
                cell += " **FAIL**"
            cols.append(cell if cs and cs[0]["claimed"] else f"({cell})")
        lines.append(f"| {p} | " + " | ".join(cols) + " |")
    lines += ["", f"{len(r['cells'])} cells; {r['failed']} failed (the measurement disagrees with "
              "`check --target`: a graph it passes fails the gate, or a graph it declares passes).", ""]
    worst = {}
    for c in r["cells"]:
        if c["state"] == "pass":
            k = (c["runtime"], "fp32" if c["fp32"] else "quantized")
            worst[k] = max(worst.get(k, 0.0), c["max_diff"])
    lines.append("Largest difference from native among passing cells: " + "; ".join(
        f"{rt} {kind} {v:.1e}" for (rt, kind), v in sorted(worst.items())) + ".")
    fails = [c for c in r["cells"] if c["state"] == "fail"]
    if fails:
        lines += ["", "Failed cells:", "", "| package | graph | runtime | why |", "|---|---|---|---|"]
        for c in fails:
            lines.append(f"| {c['package']} | {c['graph']} | {c['runtime']}{'' if c['claimed'] else ' (not made for it)'} "
                         f"| {c['detail'][:200]} |")
    declared = {}
    for c in r["cells"]:
        if c["state"] == "declared":
            declared.setdefault((c["runtime"], c["declared"]), []).append(c)
    if declared:
        lines += ["", "Declared by `check --target` (and confirmed):", "", "| runtime | graphs | reason |", "|---|---|---|"]
        for (rt, why), cs in sorted(declared.items()):
            lines.append(f"| {rt} | {len(cs)} | {why} |")
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("cases")
    c.add_argument("out")
    c.add_argument("packages", nargs="+")
    c.add_argument("--cli", required=True)
    r = sub.add_parser("run")
    r.add_argument("runtime", choices=["native", "ort-mobile", "openvino", "tract"])
    r.add_argument("out")
    rep = sub.add_parser("report")
    rep.add_argument("out")
    rep.add_argument("--bless", action="store_true",
                     help="also write docs/portability.{json,md} and the README's portability block")
    args = p.parse_args()
    sys.exit({"cases": cases, "run": run, "report": report}[args.cmd](args) or 0)


if __name__ == "__main__":
    main()
