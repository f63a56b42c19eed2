//! The native engine: one package's graphs as ONNX Runtime sessions, the tensor backend of the
//! task layer's one graph driver ([`GraphDriver`]). The cross K/V and the KV cache stay ORT values
//! between steps (a step's `present.*` outputs are the next step's `past_key_values.*` inputs,
//! without copying).

use std::borrow::Cow;
use std::collections::HashMap;

use blip_package::Package;
use blip_tasks::TaskError;
use blip_tasks::driver::{self, CrossKv, GraphDriver, KvCache, TensorBackend};
use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, Tensor};

use crate::{OrtLibrary, Result, SessionOptions};

type TaskResult<T> = blip_tasks::Result<T>;

/// One package's graphs on native ONNX Runtime.
pub type OrtGraphs = GraphDriver<OrtBackend>;
/// Cross-attention K/V held as ORT values.
pub type OrtCross = CrossKv<DynValue>;
/// The self-attention KV cache held as ORT values.
pub type OrtCache = KvCache<DynValue>;

pub(crate) fn infer_err(graph: &str) -> impl Fn(ort::Error) -> TaskError + '_ {
    move |e| TaskError::Engine {
        graph: graph.to_string(),
        message: e.to_string(),
    }
}

/// Seconds per graph run, labelled `graph` (the package role). Recorded through the `metrics`
/// facade: nothing unless the process installs a recorder, as `blip-onnx serve` does for `/metrics`.
pub const GRAPH_DURATION: &str = "blip_graph_duration_seconds";

/// Runs one graph, recording its duration under [`GRAPH_DURATION`].
fn timed<T>(graph: &str, run: impl FnOnce() -> T) -> T {
    let start = std::time::Instant::now();
    let out = run();
    metrics::histogram!(GRAPH_DURATION, "graph" => graph.to_owned())
        .record(start.elapsed().as_secs_f64());
    out
}

/// Opens every graph the package lists (side by side: creating a session — parsing, optimizing,
/// pre-packing weights — is single-threaded work).
pub fn open_graphs(
    library: &OrtLibrary,
    package: &Package,
    opts: &SessionOptions,
) -> Result<OrtGraphs> {
    let opened: Vec<(String, Result<Session>)> = std::thread::scope(|scope| {
        let opening: Vec<_> = package
            .manifest
            .graphs
            .keys()
            .map(|role| {
                let job = scope.spawn(move || library.package_session(package, role, opts));
                (role, job)
            })
            .collect();
        opening
            .into_iter()
            .map(|(role, job)| {
                let session = job
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                (role.clone(), session)
            })
            .collect()
    });
    let mut sessions = HashMap::new();
    for (role, session) in opened {
        sessions.insert(role, session?);
    }
    let backend = OrtBackend {
        package: package.clone(),
        sessions,
    };
    Ok(GraphDriver::new(backend, package))
}

/// ONNX Runtime sessions, one per graph of a package, as a [`TensorBackend`].
pub struct OrtBackend {
    package: Package,
    sessions: HashMap<String, Session>,
}

impl OrtBackend {
    fn session(&mut self, role: &str) -> TaskResult<&mut Session> {
        let package = &self.package;
        self.sessions.get_mut(role).ok_or_else(|| {
            TaskError::Package(blip_package::PackageError::NoSuchGraph {
                path: package.dir.clone(),
                graph: role.to_string(),
                head: package.manifest.head,
            })
        })
    }
}

impl TensorBackend for OrtBackend {
    type Value = DynValue;
    type Outputs = driver::NamedValues<DynValue>;

    fn f32(&self, graph: &str, data: &[f32], dims: &[usize]) -> TaskResult<DynValue> {
        self.f32_owned(graph, data.to_vec(), dims)
    }

    fn f32_owned(&self, graph: &str, data: Vec<f32>, dims: &[usize]) -> TaskResult<DynValue> {
        Ok(Tensor::from_array((dims.to_vec(), data))
            .map_err(infer_err(graph))?
            .into_dyn())
    }

    fn i64(&self, graph: &str, data: &[i64], dims: &[usize]) -> TaskResult<DynValue> {
        Ok(Tensor::from_array((dims.to_vec(), data.to_vec()))
            .map_err(infer_err(graph))?
            .into_dyn())
    }

    async fn run(
        &mut self,
        graph: &str,
        inputs: &[(&str, &DynValue)],
    ) -> TaskResult<Self::Outputs> {
        let inputs: Vec<(Cow<'_, str>, SessionInputValue<'_>)> = inputs
            .iter()
            .map(|&(name, v)| (Cow::Borrowed(name), SessionInputValue::from(v)))
            .collect();
        let session = self.session(graph)?;
        let out = timed(graph, || session.run(inputs)).map_err(infer_err(graph))?;
        Ok(out
            .into_iter()
            .map(|(name, v)| (name.to_string(), v))
            .collect())
    }

    fn take(&self, outputs: &mut Self::Outputs, name: &str) -> Option<DynValue> {
        driver::take_named(outputs, name)
    }

    fn dims(&self, value: &DynValue) -> Vec<usize> {
        value.shape().iter().map(|&d| d as usize).collect()
    }

    fn with_f32<R>(
        &self,
        graph: &str,
        value: &DynValue,
        read: impl FnOnce(&[f32]) -> TaskResult<R>,
    ) -> TaskResult<R> {
        let (_, data) = value
            .try_extract_tensor::<f32>()
            .map_err(infer_err(graph))?;
        read(data)
    }
}
