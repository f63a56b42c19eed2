//! The browser engine: one package's graphs as onnxruntime-web sessions, the tensor backend of
//! the task layer's one graph driver ([`GraphDriver`], as native ONNX Runtime is). Cross K/V and
//! the KV cache stay `ort.Tensor`s on the JS side (a step's `present.*` outputs are the next
//! step's `past_key_values.*` inputs); gathering rows happens there too.

use std::collections::HashMap;

use blip_package::Package;
use blip_tasks::TaskError;
use blip_tasks::driver::{GraphDriver, TensorBackend};
use js_sys::{BigInt64Array, Float32Array, Object, Reflect};
use wasm_bindgen::JsValue;

use crate::shim;

type Result<T> = blip_tasks::Result<T>;

/// One package's graphs on onnxruntime-web.
pub type WebGraphs = GraphDriver<WebBackend>;

/// `sessions`: one `ort.InferenceSession` per role the package lists.
pub fn web_graphs(package: &Package, sessions: HashMap<String, JsValue>) -> WebGraphs {
    let backend = WebBackend {
        package: package.clone(),
        sessions,
    };
    GraphDriver::new(backend, package)
}

fn engine_err(graph: &str) -> impl Fn(JsValue) -> TaskError + '_ {
    move |e| TaskError::Engine {
        graph: graph.to_string(),
        message: shim::message(&e),
    }
}

fn shape_err(graph: &str, message: String) -> TaskError {
    TaskError::Engine {
        graph: graph.to_string(),
        message,
    }
}

fn dims_u32(dims: &[usize]) -> Vec<u32> {
    dims.iter().map(|&d| d as u32).collect()
}

/// onnxruntime-web sessions, one per graph of a package, as a [`TensorBackend`].
pub struct WebBackend {
    package: Package,
    sessions: HashMap<String, JsValue>,
}

impl WebBackend {
    fn session(&self, role: &str) -> Result<&JsValue> {
        self.sessions.get(role).ok_or_else(|| {
            TaskError::Package(blip_package::PackageError::NoSuchGraph {
                path: self.package.dir.clone(),
                graph: role.to_string(),
                head: self.package.manifest.head,
            })
        })
    }
}

impl TensorBackend for WebBackend {
    type Value = JsValue;
    /// The results object of `InferenceSession.run`.
    type Outputs = JsValue;

    fn f32(&self, _graph: &str, data: &[f32], dims: &[usize]) -> Result<JsValue> {
        Ok(shim::tensor(
            "float32",
            &Float32Array::from(data).into(),
            &dims_u32(dims),
        ))
    }

    fn i64(&self, _graph: &str, data: &[i64], dims: &[usize]) -> Result<JsValue> {
        Ok(shim::tensor(
            "int64",
            &BigInt64Array::from(data).into(),
            &dims_u32(dims),
        ))
    }

    async fn run(&mut self, graph: &str, inputs: &[(&str, &JsValue)]) -> Result<JsValue> {
        let feeds = Object::new();
        for (name, v) in inputs {
            Reflect::set(&feeds, &JsValue::from_str(name), v).map_err(engine_err(graph))?;
        }
        let session = self.session(graph)?;
        shim::run(session, &feeds).await.map_err(engine_err(graph))
    }

    fn take(&self, outputs: &mut JsValue, name: &str) -> Option<JsValue> {
        if !shim::has_output(outputs, name) {
            return None;
        }
        shim::output(outputs, name).ok()
    }

    fn dims(&self, value: &JsValue) -> Vec<usize> {
        shim::tensor_dims(value)
            .to_vec()
            .into_iter()
            .map(|d| d as usize)
            .collect()
    }

    fn with_f32<R>(
        &self,
        graph: &str,
        value: &JsValue,
        read: impl FnOnce(&[f32]) -> Result<R>,
    ) -> Result<R> {
        read(&self.read_f32(graph, value)?)
    }

    /// One copy into wasm memory.
    fn read_f32(&self, graph: &str, value: &JsValue) -> Result<Vec<f32>> {
        Ok(shim::tensor_data(value)
            .map_err(engine_err(graph))?
            .to_vec())
    }

    /// Only the last position of each row crosses into wasm.
    fn read_last_positions(&self, graph: &str, value: &JsValue) -> Result<Vec<f32>> {
        let dims = self.dims(value);
        let [rows, t, width] = dims[..] else {
            return Err(shape_err(
                graph,
                format!("{dims:?} is not [rows, t, width]"),
            ));
        };
        let data = shim::tensor_data(value).map_err(engine_err(graph))?;
        let mut last = Vec::with_capacity(rows * width);
        for r in 0..rows {
            let at = ((r * t + t - 1) * width) as u32;
            last.extend(data.subarray(at, at + width as u32).to_vec());
        }
        Ok(last)
    }

    fn gather_rows(&self, graph: &str, value: &JsValue, rows: &[usize]) -> Result<JsValue> {
        let rows: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        shim::gather_rows(value, &rows).map_err(engine_err(graph))
    }
}
