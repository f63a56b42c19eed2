//! Imports from `js/engine.js`, the only code that names onnxruntime-web.

use js_sys::{Float32Array, Object, Uint8Array, Uint32Array};
use wasm_bindgen::prelude::*;

#[wasm_bindgen(module = "/js/engine.js")]
extern "C" {
    /// `[executionProvider, reason]` for a package: see engine.js.
    #[wasm_bindgen(catch, js_name = chooseExecutionProvider)]
    pub async fn choose_execution_provider(
        preference: &str,
        made_for_webgpu: bool,
        needs_f16: bool,
    ) -> Result<JsValue, JsValue>;

    #[wasm_bindgen(catch, js_name = createSession)]
    pub async fn create_session(
        model: &Uint8Array,
        data_path: Option<String>,
        data: Option<Uint8Array>,
        execution_provider: &str,
    ) -> Result<JsValue, JsValue>;

    /// `new ort.Tensor(kind, data, dims)`.
    pub fn tensor(kind: &str, data: &JsValue, dims: &[u32]) -> JsValue;

    #[wasm_bindgen(catch)]
    pub async fn run(session: &JsValue, feeds: &Object) -> Result<JsValue, JsValue>;

    #[wasm_bindgen(catch)]
    pub fn output(results: &JsValue, name: &str) -> Result<JsValue, JsValue>;

    #[wasm_bindgen(js_name = hasOutput)]
    pub fn has_output(results: &JsValue, name: &str) -> bool;

    #[wasm_bindgen(catch, js_name = tensorData)]
    pub fn tensor_data(t: &JsValue) -> Result<Float32Array, JsValue>;

    #[wasm_bindgen(js_name = tensorDims)]
    pub fn tensor_dims(t: &JsValue) -> Uint32Array;

    #[wasm_bindgen(catch, js_name = gatherRows)]
    pub fn gather_rows(t: &JsValue, rows: &[u32]) -> Result<JsValue, JsValue>;

    #[wasm_bindgen(catch)]
    pub async fn download(
        url: &str,
        file: &str,
        total: f64,
        on_progress: &JsValue,
    ) -> Result<JsValue, JsValue>;

    #[wasm_bindgen(catch, js_name = cacheGet)]
    pub async fn cache_get(
        key: &str,
        file: &str,
        on_progress: &JsValue,
    ) -> Result<JsValue, JsValue>;

    #[wasm_bindgen(catch, js_name = cachePut)]
    pub async fn cache_put(key: &str, bytes: &Uint8Array) -> Result<JsValue, JsValue>;

    #[wasm_bindgen(catch, js_name = cacheDelete)]
    pub async fn cache_delete(key: &str) -> Result<JsValue, JsValue>;
}

/// The message of a JS exception (an `Error`'s `message`, else its string form).
pub fn message(e: &JsValue) -> String {
    if let Some(err) = e.dyn_ref::<js_sys::Error>() {
        return String::from(err.message());
    }
    e.as_string().unwrap_or_else(|| format!("{e:?}"))
}
