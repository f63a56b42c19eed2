//! blip-onnx in the browser: [`blip_tasks::Blip`] over onnxruntime-web.
//!
//! The task, decoding and graph-wiring code is blip-tasks', the same as native; this crate adds
//! the tensor backend (`WebBackend`: sessions, and tensors held as onnxruntime-web tensors on the
//! JS side, so a decoder step copies only token ids in and logits out), package loading (fetch,
//! sha256 check, Cache Storage) and the `Blip` class JS sees. Only `js/engine.js` names
//! onnxruntime-web. Options and results cross the boundary as JSON (`options`).

pub mod options;
pub mod verify;

#[cfg(target_arch = "wasm32")]
mod api;
#[cfg(target_arch = "wasm32")]
mod engine;
#[cfg(target_arch = "wasm32")]
mod shim;
