// `node --import ./register.mjs`: runs blip-onnx's browser module (web/index.js, the same Rust task
// code compiled to wasm) over BLIP_E2E_RUNTIME: web (onnxruntime-web itself, in Node), node
// (onnxruntime-node) or ort-mobile (onnxruntime-node loading the ORT-format conversions).
import { register } from 'node:module';

const runtime = process.env.BLIP_E2E_RUNTIME;
const adapter = runtime === 'web' ? null : new URL('./ort-node-adapter.mjs', import.meta.url).href;
register('./hooks.mjs', import.meta.url, { data: { adapter } });
