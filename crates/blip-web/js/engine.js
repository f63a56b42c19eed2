// The only code that names onnxruntime-web: sessions from bytes, tensors, runs, and the row
// gathers beam search needs (done here so the KV cache never travels to wasm and back), plus
// fetch with progress and Cache Storage. Imported by the wasm-bindgen glue (see src/shim.rs).
import * as ort from 'onnxruntime-web';

const CACHE_NAME = 'blip-onnx-v1';

let adapter;

async function webgpuAdapter() {
  if (adapter === undefined) {
    try {
      adapter = (await globalThis.navigator?.gpu?.requestAdapter()) ?? null;
    } catch {
      adapter = null;
    }
  }
  return adapter;
}

// Which execution provider runs a package: `preference` is auto | webgpu | wasm. Auto takes WebGPU
// when the package is made for it and the browser has an adapter (with shader-f16 for FP16 graphs),
// else wasm; an explicit webgpu that cannot be had is an error, not a silent fallback.
// Returns [executionProvider, reason].
export async function chooseExecutionProvider(preference, madeForWebgpu, needsF16) {
  if (preference === 'wasm') return ['wasm', 'asked for wasm'];
  if (preference !== 'auto' && preference !== 'webgpu') {
    throw new Error(`executionProvider ${JSON.stringify(preference)}: expected auto, webgpu or wasm`);
  }
  let why = null;
  const gpu = await webgpuAdapter();
  if (!madeForWebgpu) why = 'the package is not made for webgpu (its manifest\'s runtimes)';
  else if (!gpu) why = 'this browser offers no WebGPU adapter';
  else if (needsF16 && !gpu.features.has('shader-f16')) why = 'the WebGPU adapter lacks shader-f16, which the FP16 graphs need';
  if (why && preference === 'webgpu') throw new Error(`WebGPU was asked for, but ${why}`);
  if (why) return ['wasm', why];
  const name = [gpu.info?.vendor, gpu.info?.architecture].filter(Boolean).join(' ') || 'unnamed';
  return ['webgpu', `the package is made for webgpu and the browser has a WebGPU adapter (${name})`];
}

export async function createSession(model, dataPath, data, executionProvider) {
  const options = { executionProviders: [executionProvider], graphOptimizationLevel: 'all' };
  // onnxruntime-web does not find external data by itself: it must be handed over by name.
  if (dataPath) options.externalData = [{ path: dataPath, data }];
  return ort.InferenceSession.create(model, options);
}

export function tensor(type, data, dims) {
  return new ort.Tensor(type, data, Array.from(dims));
}

export async function run(session, feeds) {
  return session.run(feeds);
}

export function output(results, name) {
  const t = results[name];
  if (t === undefined) throw new Error(`no output ${name}`);
  return t;
}

export function hasOutput(results, name) {
  return results[name] !== undefined;
}

// Outputs are on the CPU with every execution provider (onnxruntime-web's default output location).
export function tensorData(t) {
  if (t.type !== 'float32') throw new Error(`output is ${t.type}, expected float32`);
  return t.data;
}

export function tensorDims(t) {
  return Uint32Array.from(t.dims);
}

function rowSize(t) {
  return t.dims.slice(1).reduce((a, b) => a * b, 1);
}

// Row r of the result is row rows[r] of `t` (beam reorder of the KV cache).
export function gatherRows(t, rows) {
  const row = rowSize(t);
  const out = new Float32Array(row * rows.length);
  rows.forEach((src, r) => {
    if (src >= t.dims[0]) throw new Error(`reorder names row ${src} of ${t.dims[0]}`);
    out.set(t.data.subarray(src * row, (src + 1) * row), r * row);
  });
  return new ort.Tensor('float32', out, [rows.length, ...t.dims.slice(1)]);
}

function report(onProgress, file, loaded, total, cached) {
  if (typeof onProgress === 'function') onProgress({ file, loaded, total, cached });
}

// Downloads `url` (never from the HTTP cache: Cache Storage is the cache), reporting progress.
export async function download(url, file, total, onProgress) {
  const response = await fetch(url, { cache: 'no-store' });
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status} ${response.statusText}`);
  const size = Number(response.headers.get('content-length')) || total || 0;
  if (!response.body) {
    const bytes = new Uint8Array(await response.arrayBuffer());
    report(onProgress, file, bytes.length, size, false);
    return bytes;
  }
  const reader = response.body.getReader();
  const chunks = [];
  let loaded = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    loaded += value.length;
    report(onProgress, file, loaded, size, false);
  }
  const bytes = new Uint8Array(loaded);
  let at = 0;
  for (const c of chunks) {
    bytes.set(c, at);
    at += c.length;
  }
  return bytes;
}

function cacheStorage() {
  return typeof caches === 'undefined' ? null : caches;
}

export async function cacheGet(key, file, onProgress) {
  const storage = cacheStorage();
  if (!storage) return null;
  const hit = await (await storage.open(CACHE_NAME)).match(key);
  if (!hit) return null;
  const bytes = new Uint8Array(await hit.arrayBuffer());
  report(onProgress, file, bytes.length, bytes.length, true);
  return bytes;
}

// A full quota or a private window must not fail the load: the cache is an optimisation.
export async function cachePut(key, bytes) {
  const storage = cacheStorage();
  if (!storage) return;
  try {
    await (await storage.open(CACHE_NAME)).put(key, new Response(bytes));
  } catch (e) {
    console.warn(`blip-onnx: not cached (${key}): ${e}`);
  }
}

export async function cacheDelete(key) {
  const storage = cacheStorage();
  if (storage) await (await storage.open(CACHE_NAME)).delete(key);
}
