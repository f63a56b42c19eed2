// blip-onnx in the browser: BLIP's tasks (the same Rust code as native, compiled to wasm) over
// onnxruntime-web. onnxruntime-web's wasm files are served with the page (dist/ort/, or
// `wasmPaths`), never fetched from a CDN; onnxruntime-web itself sends no telemetry.
import * as ort from 'onnxruntime-web';
import initWasm, { Blip as WasmBlip } from './dist/pkg/blip_web.js';

let ready = null;

function defaultThreads() {
  // Threads need SharedArrayBuffer, which only a cross-origin-isolated page (COOP/COEP) has.
  if (!globalThis.crossOriginIsolated) return 1;
  return Math.max(1, Math.min(4, globalThis.navigator?.hardwareConcurrency ?? 1));
}

/** Sets up onnxruntime-web and the wasm module once; later calls return the first setup.
 *  `wasm`: blip-onnx's wasm module (bytes, a `WebAssembly.Module` or a URL) where it cannot be
 *  fetched from next to this file (Node, whose fetch takes no file: URLs; some bundlers). */
export function init({ wasmPaths, numThreads, wasm } = {}) {
  if (!ready) {
    ort.env.wasm.wasmPaths = wasmPaths ?? new URL('./dist/ort/', import.meta.url).href;
    ort.env.wasm.numThreads = numThreads ?? defaultThreads();
    ort.env.wasm.proxy = false;
    ready = initWasm({ module_or_path: wasm ?? new URL('./dist/pkg/blip_web_bg.wasm', import.meta.url) }).then(() => ({
      numThreads: ort.env.wasm.numThreads,
      crossOriginIsolated: Boolean(globalThis.crossOriginIsolated),
    }));
  }
  return ready;
}

async function bytesOf(image) {
  if (image instanceof Uint8Array) return image;
  if (image instanceof ArrayBuffer) return new Uint8Array(image);
  if (ArrayBuffer.isView(image)) return new Uint8Array(image.buffer, image.byteOffset, image.byteLength);
  if (typeof Blob !== 'undefined' && image instanceof Blob) return new Uint8Array(await image.arrayBuffer());
  throw new TypeError('an image is encoded bytes: Uint8Array, ArrayBuffer or Blob');
}

const list = (images) => Promise.all((Array.isArray(images) ? images : [images]).map(bytesOf));
const strings = (texts) => JSON.stringify(Array.isArray(texts) ? texts : [texts]);

export class Blip {
  #inner;
  #queue = Promise.resolve();

  constructor(inner) {
    this.#inner = inner;
  }

  /** Loads the package at `url` (a folder with blip.json): checks each graph's sha256, caches them.
   *  `executionProvider`: 'auto' (WebGPU when the package is made for it and the browser has it,
   *  else wasm), 'webgpu' (an error when it cannot be had) or 'wasm'. */
  static async load(url, { onProgress, wasmPaths, numThreads, wasm, executionProvider } = {}) {
    await init({ wasmPaths, numThreads, wasm });
    const absolute = new URL(url, globalThis.location?.href).href;
    return new Blip(await WasmBlip.load(absolute, onProgress ?? null, executionProvider ?? null));
  }

  /** caption | retrieval | vqa */
  get head() {
    return this.#inner.head;
  }

  /** The onnxruntime-web execution provider running this package: 'webgpu' | 'wasm'. */
  get executionProvider() {
    return this.#inner.executionProvider;
  }

  /** Why that provider, in words (e.g. "this browser offers no WebGPU adapter"). */
  get executionProviderReason() {
    return this.#inner.executionProviderReason;
  }

  get manifest() {
    return JSON.parse(this.#inner.manifest());
  }

  // One call at a time on the model; callers may still fire several without awaiting.
  #call(f) {
    const run = this.#queue.then(f).then((json) => JSON.parse(json));
    this.#queue = run.catch(() => {});
    return run;
  }

  async caption(images, options = {}) {
    const bytes = await list(images);
    return this.#call(() => this.#inner.caption(bytes, JSON.stringify(options)));
  }

  async embedImages(images) {
    const bytes = await list(images);
    return this.#call(() => this.#inner.embedImages(bytes));
  }

  embedTexts(texts) {
    return this.#call(() => this.#inner.embedTexts(strings(texts)));
  }

  async itm(image, texts) {
    const bytes = await bytesOf(image);
    return this.#call(() => this.#inner.itm(bytes, strings(texts)));
  }

  async rankImages(text, images, options = {}) {
    const bytes = await list(images);
    return this.#call(() => this.#inner.rankImages(text, bytes, JSON.stringify(options)));
  }

  async answer(image, questions, options = {}) {
    const bytes = await bytesOf(image);
    return this.#call(() => this.#inner.answer(bytes, strings(questions), JSON.stringify(options)));
  }

  async rankAnswers(image, questions, answers, options = {}) {
    const bytes = await bytesOf(image);
    return this.#call(() =>
      this.#inner.rankAnswers(bytes, strings(questions), JSON.stringify(answers), JSON.stringify(options)),
    );
  }
}
