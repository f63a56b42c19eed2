"""One runtime (OpenVINO or tract) behind a pipe, for the end-to-end suite.

py-runtime-adapter.mjs starts `python engine_worker.py openvino|tract` and speaks to it over
stdin/stdout. Each message is a 4-byte little-endian length, a JSON header of that length, then the
raw bytes of the tensors the header lists, in order:
  -> {"op": "load", "model": path}                      <- {"session": id, "inputs": [...], "outputs": [...]}
  -> {"op": "run", "session": id, "tensors": [specs]}   <- {"tensors": [specs]}  (+ their bytes)
  -> {"op": "release", "session": id}                   <- {}
A spec is {"name", "dtype", "dims"}. A failure answers {"error": "..."}; the worker keeps serving.
OpenVINO is told f32: without the hint it computes in bf16 on CPUs that have it (suite.py has the same).
"""

import json
import struct
import sys

import numpy as np

DTYPES = {"float32": np.float32, "float16": np.float16, "int64": np.int64, "int32": np.int32,
          "uint8": np.uint8, "int8": np.int8, "bool": np.bool_}
NAMES = {np.dtype(v): k for k, v in DTYPES.items()}


def graph_outputs(path):
    """The graph's output names, in order (what the task code asks for)."""
    import onnx
    return [o.name for o in onnx.load(path, load_external_data=False).graph.output]


def openvino_session(path):
    import openvino as ov
    compiled = ov.Core().compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                     "INFERENCE_NUM_THREADS": 2})
    request = compiled.create_infer_request()
    inputs = [p.get_any_name() for p in compiled.inputs]
    outputs = graph_outputs(path)

    def run(feeds):
        result = request.infer(feeds)
        by_name = {}
        for port, value in result.items():
            for n in port.get_names():
                by_name[n] = np.array(value)
        return {n: by_name[n] for n in outputs}
    return inputs, outputs, run


def tract_session(path):
    import tract
    model = tract.onnx().load(path).into_model()
    inputs = [model.input_name(i) for i in range(model.input_count())]
    # tract names its outputs after the nodes that make them, in the graph's order.
    outputs = graph_outputs(path)
    if len(outputs) != model.output_count():
        raise ValueError(f"tract has {model.output_count()} outputs, the graph {len(outputs)}")
    runnable = model.into_runnable()

    def run(feeds):
        missing = [n for n in inputs if n not in feeds]
        if missing:
            raise ValueError(f"missing inputs {missing}")
        values = runnable.run([feeds[n] for n in inputs])
        return dict(zip(outputs, (v.to_numpy() for v in values)))
    return inputs, outputs, run


SESSIONS = {"openvino": openvino_session, "tract": tract_session}


def read_exact(stream, n):
    data = stream.read(n)
    if len(data) != n:
        raise EOFError
    return data


def read_message(stream):
    (size,) = struct.unpack("<I", read_exact(stream, 4))
    header = json.loads(read_exact(stream, size))
    tensors = {}
    for spec in header.get("tensors", []):
        dtype = np.dtype(DTYPES[spec["dtype"]])
        count = int(np.prod(spec["dims"], dtype=np.int64))
        raw = read_exact(stream, count * dtype.itemsize)
        tensors[spec["name"]] = np.frombuffer(raw, dtype=dtype).reshape(spec["dims"])
    return header, tensors


def write_message(stream, header, arrays=()):
    body = json.dumps(header).encode()
    stream.write(struct.pack("<I", len(body)) + body)
    for a in arrays:
        stream.write(np.ascontiguousarray(a).tobytes())
    stream.flush()


def main():
    make = SESSIONS[sys.argv[1]]
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sessions = {}
    next_id = 0
    while True:
        try:
            header, tensors = read_message(stdin)
        except EOFError:
            return
        try:
            op = header["op"]
            if op == "load":
                inputs, outputs, run = make(header["model"])
                next_id += 1
                sessions[next_id] = run
                write_message(stdout, {"session": next_id, "inputs": inputs, "outputs": outputs})
            elif op == "run":
                results = sessions[header["session"]](tensors)
                arrays, specs = [], []
                for name, value in results.items():
                    a = np.asarray(value)
                    if a.dtype not in NAMES:
                        raise TypeError(f"output {name} is {a.dtype}")
                    arrays.append(a)
                    specs.append({"name": name, "dtype": NAMES[a.dtype], "dims": list(a.shape)})
                write_message(stdout, {"tensors": specs}, arrays)
            elif op == "release":
                sessions.pop(header["session"], None)
                write_message(stdout, {})
            else:
                raise ValueError(f"unknown op {op}")
        except Exception as e:  # noqa: BLE001 -- the error goes back to the caller, the worker serves on
            write_message(stdout, {"error": f"{type(e).__name__}: {' '.join(str(e).split())[:600]}"})


if __name__ == "__main__":
    main()
