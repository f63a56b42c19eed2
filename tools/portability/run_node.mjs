// Portability suite, the JavaScript runtimes: runs every case that tools/portability/suite.py wrote
// on onnxruntime-node or onnxruntime-web (its wasm backend, in Node) and writes the outputs beside
// the others, in the same layout (OUT/<runtime>/<package>/<graph>/result.json + out.<name>.bin).
//   node tools/portability/run_node.mjs node|web OUT
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';

const [runtime, out] = process.argv.slice(2);
if (!['node', 'web'].includes(runtime) || !out) {
  console.error('usage: run_node.mjs node|web OUT');
  process.exit(2);
}
const ort = await import(runtime === 'node' ? 'onnxruntime-node' : 'onnxruntime-web');
if (runtime === 'web') ort.env.wasm.numThreads = 1;
const here = dirname(new URL(import.meta.url).pathname);
const version = (pkg) => JSON.parse(readFileSync(join(here, 'node_modules', pkg, 'package.json'), 'utf8')).version;

const ARRAYS = { float32: Float32Array, int64: BigInt64Array, float16: Uint16Array };

function readTensor(path, dtype, dims) {
  const bytes = readFileSync(path);
  const Kind = ARRAYS[dtype];
  const data = new Kind(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength));
  return new ort.Tensor(dtype, data, dims);
}

async function session(c) {
  if (runtime === 'node') {
    // onnxruntime-node finds external data next to the model file; the options are the end-to-end
    // adapter's (blip-runtime's settings).
    const { sessionOptions } = await import('./ort-node-adapter.mjs');
    return ort.InferenceSession.create(c.model, sessionOptions);
  }
  // onnxruntime-web does not find external data by itself: it is handed over by name.
  const options = { executionProviders: ['wasm'] };
  if (c.external_data) {
    options.externalData = [{ path: c.external_data, data: readFileSync(join(dirname(c.model), c.external_data)) }];
  }
  return ort.InferenceSession.create(readFileSync(c.model), options);
}

async function runCase(caseDir, dest) {
  const c = JSON.parse(readFileSync(join(caseDir, 'case.json'), 'utf8'));
  mkdirSync(dest, { recursive: true });
  let result;
  try {
    const t0 = performance.now();
    const s = await session(c);
    const t1 = performance.now();
    const feeds = {};
    for (const i of c.inputs) feeds[i.name] = readTensor(join(caseDir, `in.${i.name}.bin`), i.dtype, i.dims);
    const outs = await s.run(feeds);
    const t2 = performance.now();
    result = { ok: true, load_ms: t1 - t0, run_ms: t2 - t1, outputs: {} };
    for (const name of c.outputs) {
      const t = outs[name];
      if (!t) throw new Error(`no output ${name}`);
      if (t.type !== 'float32') throw new Error(`${name} is ${t.type}, expected float32`);
      writeFileSync(join(dest, `out.${name}.bin`), Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength));
      result.outputs[name] = t.dims.map(Number);
    }
    await s.release?.();
  } catch (e) {
    result = { ok: false, error: String(e?.message ?? e).split(/\s+/).join(' ').slice(0, 400) };
  }
  writeFileSync(join(dest, 'result.json'), JSON.stringify(result));
}

const cases = join(out, 'cases');
for (const pkg of readdirSync(cases).sort()) {
  for (const graph of readdirSync(join(cases, pkg)).sort()) {
    await runCase(join(cases, pkg, graph), join(out, runtime, pkg, graph));
  }
}
const versions = join(out, 'node-versions.json');
const known = existsSync(versions) ? JSON.parse(readFileSync(versions, 'utf8')) : {};
known[`onnxruntime-${runtime}`] = version(`onnxruntime-${runtime}`);
writeFileSync(versions, JSON.stringify(known));
