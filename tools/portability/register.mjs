// `node --import ./register.mjs`: runs blip-onnx's browser module (web/index.js, the same Rust task
// code compiled to wasm) over BLIP_E2E_RUNTIME: web (onnxruntime-web itself, in Node), node
// (onnxruntime-node), ort-mobile (onnxruntime-node loading the ORT-format conversions), openvino or
// tract (their Python packages, in a worker process: py-runtime-adapter.mjs).
import { register } from 'node:module';

const runtime = process.env.BLIP_E2E_RUNTIME;
const adapters = { node: 'ort-node-adapter.mjs', 'ort-mobile': 'ort-node-adapter.mjs', openvino: 'py-runtime-adapter.mjs', tract: 'py-runtime-adapter.mjs' };
if (runtime !== 'web' && !adapters[runtime]) throw new Error(`BLIP_E2E_RUNTIME=${runtime}: expected web, ${Object.keys(adapters).join(', ')}`);
const adapter = runtime === 'web' ? null : new URL(`./${adapters[runtime]}`, import.meta.url).href;
register('./hooks.mjs', import.meta.url, { data: { adapter } });
