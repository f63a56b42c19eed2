#!/usr/bin/env python3
"""INT8 forms of a base vision encoder side by side in one process, on ONNX Runtime's Python API.

    cpu_quant_graphs.py FP32_PKG FULL_RANGE_PKG REDUCE_RANGE_PKG --rounds N --threads T --profile-dir D

Times the vision encoder (batch 1) of: the FP32 package; full-range INT8 weights with and without
`session.x64quantprecision`; 7-bit INT8 weights; and every weight MatMul as `MatMulNBits` (8 and
4 bits, blocks of 32, accuracy level 4: int8 compute), made here from the FP32 graph. Rounds are
interleaved (each round runs every form once). Prints one JSON object: per form the median ms, the
ratio to FP32, the lowest per-token cosine to FP32's output, and, from ORT's own profile of one run,
the op types of the integer MatMuls and the element types of their weight inputs (u8 weights under
`session.x64quantprecision` mean ORT converted them for its u8 x u8 kernel).
"""
import argparse
import glob
import json
import os
import statistics
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper


def graph(pkg: str) -> str:
    return glob.glob(os.path.join(pkg, "vision_encoder*.onnx"))[0]


def matmul_nbits(fp32_path: str, bits: int, block: int) -> bytes:
    """Every MatMul with a constant 2-D weight [K, N] as com.microsoft MatMulNBits (symmetric blocks)."""
    model = onnx.load(fp32_path)
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    nodes, used = [], set()
    for n in g.node:
        w = inits.get(n.input[1]) if n.op_type == "MatMul" and len(n.input) == 2 else None
        if w is None or len(w.dims) != 2 or w.dims[0] % block:
            nodes.append(n)
            continue
        W = numpy_helper.to_array(w).astype(np.float32)
        k, nn = W.shape
        blocks = W.T.reshape(nn, k // block, block)
        qmax = 2 ** (bits - 1) - 1
        scale = np.abs(blocks).max(2) / qmax
        scale[scale == 0] = 1.0
        q = np.clip(np.round(blocks / scale[..., None]), -qmax - 1, qmax) + 2 ** (bits - 1)
        q = q.astype(np.uint8)
        if bits == 4:
            q = (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)
        bname, sname = n.input[1] + "_nbits", n.input[1] + "_nbits_scale"
        g.initializer.extend([numpy_helper.from_array(q, bname),
                              numpy_helper.from_array(scale.astype(np.float32).reshape(-1), sname)])
        used.add(n.input[1])
        nodes.append(helper.make_node("MatMulNBits", [n.input[0], bname, sname], list(n.output), name=n.name,
                                      domain="com.microsoft", K=k, N=nn, bits=bits, block_size=block,
                                      accuracy_level=4))
    del g.node[:]
    g.node.extend(nodes)
    keep = [t for t in g.initializer if t.name not in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return model.SerializeToString()


def session(model, threads: int, config: dict, profile: str | None = None):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    for k, v in config.items():
        so.add_session_config_entry(k, v)
    if profile:
        so.enable_profiling = True
        so.profile_file_prefix = profile
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def profiled_kernels(model, threads: int, config: dict, x, prefix: str) -> dict:
    """Op types of the integer / n-bit MatMul nodes in ORT's profile, with their weight input types."""
    s = session(model, threads, config, prefix)
    s.run(None, {"pixel_values": x})
    path = s.end_profiling()
    with open(path) as f:
        events = json.load(f)
    kernels = {}
    for e in events:
        a = e.get("args", {})
        op = a.get("op_name", "")
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        if "Integer" in op or "Quant" in op or "NBits" in op:
            types = [next(iter(t)) for t in a.get("input_type_shape", [])]
            key = f"{op}({', '.join(types[:2])})"
            kernels[key] = kernels.get(key, 0) + 1
    return {"profile": os.path.basename(path), "kernels": kernels}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("fp32")
    ap.add_argument("full")
    ap.add_argument("reduced")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--profile-dir", default=None)
    args = ap.parse_args()
    fp32 = graph(args.fp32)
    precise = {"session.x64quantprecision": "1"}
    forms = [
        ("FP32", fp32, {}),
        ("INT8 full-range, x64quantprecision (u8×u8)", graph(args.full), precise),
        ("INT8 full-range, u8×s8 (saturates without VNNI)", graph(args.full), {}),
        ("INT8 7-bit, u8×s8", graph(args.reduced), {}),
        ("MatMulNBits 8-bit b32, accuracy 4", matmul_nbits(fp32, 8, 32), {}),
        ("MatMulNBits 4-bit b32, accuracy 4", matmul_nbits(fp32, 4, 32), {}),
    ]
    x = np.random.default_rng(0).normal(0, 1, (1, 3, 384, 384)).astype(np.float32)
    sessions = [(name, session(m, args.threads, cfg)) for name, m, cfg in forms]
    outs = {name: s.run(None, {"pixel_values": x})[0] for name, s in sessions}
    times = {name: [] for name, _ in sessions}
    for _ in range(args.rounds):
        for name, s in sessions:
            t = time.perf_counter()
            s.run(None, {"pixel_values": x})
            times[name].append(time.perf_counter() - t)
    ref = outs["FP32"].reshape(-1, outs["FP32"].shape[-1])
    base = statistics.median(times["FP32"])
    rows = []
    for (name, model, cfg), _ in zip(forms, sessions):
        y = outs[name].reshape(ref.shape)
        cos = (y * ref).sum(1) / np.linalg.norm(y, axis=1) / np.linalg.norm(ref, axis=1)
        med = statistics.median(times[name])
        row = {"form": name, "median_ms": med * 1e3, "x_fp32": med / base, "min_token_cosine": float(cos.min())}
        if args.profile_dir and name != "FP32":
            os.makedirs(args.profile_dir, exist_ok=True)
            slug = "".join(c if c.isalnum() else "-" for c in name)[:40]
            row.update(profiled_kernels(model, args.threads, cfg, x, os.path.join(args.profile_dir, slug)))
        rows.append(row)
    print(json.dumps({"threads": args.threads, "rounds": args.rounds, "ort": ort.__version__, "rows": rows}))


if __name__ == "__main__":
    main()
