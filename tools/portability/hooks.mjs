// Module hooks for the end-to-end suite: `onnxruntime-web`, wherever blip-onnx's JS imports it
// (web/index.js and the wasm glue's engine.js), becomes the adapter of another runtime.
let adapter = null;

export async function initialize(data) {
  adapter = data?.adapter ?? null;
}

export async function resolve(specifier, context, next) {
  if (adapter && specifier === 'onnxruntime-web') return { url: adapter, shortCircuit: true };
  return next(specifier, context);
}
