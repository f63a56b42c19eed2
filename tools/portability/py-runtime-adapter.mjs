// OpenVINO or tract (BLIP_E2E_RUNTIME) behind the part of onnxruntime-web's API that blip-onnx's
// engine.js uses (InferenceSession.create from bytes, session.run, Tensor, env). Both runtimes are
// Python packages here, so each graph runs in engine_worker.py, one process spoken to over a pipe:
// the Rust task code (wasm) decides every step, the runtime computes every graph.
import { Tensor, env } from 'onnxruntime-common';
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export { Tensor, env };

const RUNTIME = process.env.BLIP_E2E_RUNTIME;
const PYTHON = process.env.BLIP_PYTHON;
if (!PYTHON) throw new Error('BLIP_PYTHON is not set: run scripts/test-portability.sh');

const ARRAYS = {
  float32: Float32Array, float16: Uint16Array, int64: BigInt64Array, int32: Int32Array,
  uint8: Uint8Array, int8: Int8Array, bool: Uint8Array,
};

const models = mkdtempSync(join(tmpdir(), `blip-${RUNTIME}-`));
process.on('exit', () => rmSync(models, { recursive: true, force: true }));

const worker = spawn(PYTHON, [new URL('./engine_worker.py', import.meta.url).pathname, RUNTIME], {
  stdio: ['pipe', 'pipe', 'inherit'],
});
let received = Buffer.alloc(0);
const waiting = []; // resolvers, in the order the requests were written (the worker answers in order)
let exited = null;

// The worker keeps Node alive only while an answer is awaited.
function hold(on) {
  for (const handle of [worker, worker.stdin, worker.stdout]) (on ? handle.ref : handle.unref).call(handle);
}
hold(false);

worker.on('exit', (code, signal) => {
  exited = new Error(`${RUNTIME} worker exited (${signal ?? code})`);
  while (waiting.length) waiting.shift().reject(exited);
});

// One whole message from `received`, or null when more bytes are needed.
function takeMessage() {
  if (received.length < 4) return null;
  const size = received.readUInt32LE(0);
  if (received.length < 4 + size) return null;
  const header = JSON.parse(received.subarray(4, 4 + size).toString('utf8'));
  let at = 4 + size;
  const tensors = {};
  for (const spec of header.tensors ?? []) {
    const Array_ = ARRAYS[spec.dtype];
    const bytes = spec.dims.reduce((a, b) => a * b, 1) * Array_.BYTES_PER_ELEMENT;
    if (received.length < at + bytes) return null;
    // A copy: aligned, and independent of the receive buffer.
    const data = new Array_(received.buffer.slice(received.byteOffset + at, received.byteOffset + at + bytes));
    tensors[spec.name] = new Tensor(spec.dtype, data, spec.dims);
    at += bytes;
  }
  received = received.subarray(at);
  return { header, tensors };
}

worker.stdout.on('data', (chunk) => {
  received = Buffer.concat([received, chunk]);
  for (let m = takeMessage(); m; m = takeMessage()) {
    const { resolve, reject } = waiting.shift();
    if (!waiting.length) hold(false);
    if (m.header.error) reject(new Error(`${RUNTIME}: ${m.header.error}`));
    else resolve(m);
  }
});

function request(header, tensors = []) {
  if (exited) return Promise.reject(exited);
  const specs = tensors.map(([name, t]) => ({ name, dtype: t.type, dims: Array.from(t.dims) }));
  const body = Buffer.from(JSON.stringify({ ...header, tensors: specs }), 'utf8');
  const length = Buffer.alloc(4);
  length.writeUInt32LE(body.length);
  const parts = [length, body, ...tensors.map(([, t]) => Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength))];
  return new Promise((resolve, reject) => {
    waiting.push({ resolve, reject });
    hold(true);
    worker.stdin.write(Buffer.concat(parts));
  });
}

let modelsWritten = 0;

export const InferenceSession = {
  async create(model, { externalData } = {}) {
    if (!(model instanceof Uint8Array)) throw new Error('the adapter loads graphs from bytes');
    const dir = join(models, String(modelsWritten++));
    const path = join(dir, 'model.onnx');
    mkdirSync(dir, { recursive: true });
    writeFileSync(path, model);
    // External data is found by the name the graph records, next to the graph.
    for (const { path: name, data } of externalData ?? []) writeFileSync(join(dir, name), data);
    const { header } = await request({ op: 'load', model: path });
    const id = header.session;
    return {
      inputNames: header.inputs,
      outputNames: header.outputs,
      async run(feeds) {
        const { tensors } = await request({ op: 'run', session: id }, Object.entries(feeds));
        return tensors;
      },
      async release() {
        await request({ op: 'release', session: id });
      },
    };
  },
};
