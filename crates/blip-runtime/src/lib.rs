//! Running blip-onnx packages on ONNX Runtime: the native engine ([`OrtGraphs`], the only crate
//! that names `ort`) under the engine-free task layer (`blip-tasks`), and the blocking
//! [`BlipModel`] the CLI, validation, evaluation and the server use.
//!
//! ONNX Runtime is not linked: the shared library from the PyPI `onnxruntime` wheel is loaded at run
//! time (`scripts/fetch-onnxruntime.sh` fetches it, pinned by version and sha256). [`OrtLibrary::init`]
//! finds it through `ORT_DYLIB_PATH` or the fetch script's cache folder and refuses a missing or too old
//! library with one line that says how to fix it.

mod engine;
mod graph_cache;
mod model;
pub mod smoke;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

pub use blip_package::DecoderShape;
pub use blip_package::{Package, PackageError};
pub use blip_preprocess::PreprocessError;
pub use blip_tasks::{
    Answer, Blip, CandidateStates, Caption, CaptionOptions, DecodeBatch, Generated, Generation,
    GenerationConfig, Graphs, Hit, ImageInput, ItmScore, RankedAnswers, Strategy, TaskError,
    VisionOutput, VqaOptions, caption_text, itc_similarities, itc_similarity, match_probability,
    one_vector_per_image, ready, unique_inputs,
};
pub use blip_tasks::{defaults, generate, request, tag};
pub use engine::{GRAPH_DURATION, OrtBackend, OrtCache, OrtCross, OrtGraphs};
pub use model::{BlipModel, CachedDecoder};
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;

/// The ONNX Runtime release the fetch script pins: `ORT_VERSION` of the repository's
/// versions.env, the one file of pinned versions.
pub const ORT_VERSION: &str = pinned(include_str!("../../../versions.env"), "ORT_VERSION");

/// The value of `NAME=value` in a versions.env text, at compile time (a missing name fails the
/// build).
const fn pinned(file: &'static str, name: &str) -> &'static str {
    let (bytes, key) = (file.as_bytes(), name.as_bytes());
    let mut line = 0;
    while line < bytes.len() {
        let mut end = line;
        while end < bytes.len() && bytes[end] != b'\n' {
            end += 1;
        }
        let mut k = 0;
        while k < key.len() && line + k < end && bytes[line + k] == key[k] {
            k += 1;
        }
        if k == key.len() && line + k < end && bytes[line + k] == b'=' {
            let (_, rest) = bytes.split_at(line + k + 1);
            let (value, _) = rest.split_at(end - (line + k + 1));
            match std::str::from_utf8(value) {
                Ok(v) => return v,
                Err(_) => panic!("versions.env is not UTF-8"),
            }
        }
        line = end + 1;
    }
    panic!("versions.env has no such name")
}
/// Oldest minor version this build's C API (`api-31`) accepts.
pub const ORT_MIN_MINOR: u32 = 31;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "ONNX Runtime library not found (looked at {looked}); run `eval \"$(scripts/fetch-onnxruntime.sh)\"` or set ORT_DYLIB_PATH to libonnxruntime.so.{ORT_VERSION}"
    )]
    LibraryNotFound { looked: String },
    #[error(
        "{path} is not a usable ONNX Runtime library (version {found}; need 1.{ORT_MIN_MINOR} or newer); run `eval \"$(scripts/fetch-onnxruntime.sh)\"` to get {ORT_VERSION}"
    )]
    LibraryVersion { path: PathBuf, found: String },
    #[error("loading ONNX Runtime from {path}: {message}")]
    LibraryLoad { path: PathBuf, message: String },
    #[error("loading graph {path}: {message}")]
    Session { path: PathBuf, message: String },
    #[error("graph {path} does not match the package manifest: {message}")]
    GraphMismatch { path: PathBuf, message: String },
    #[error("execution provider: {0}")]
    ExecutionProvider(String),
    #[error("running {graph}: {message}")]
    Inference { graph: String, message: String },
    #[error(transparent)]
    Package(#[from] PackageError),
    #[error(transparent)]
    Preprocess(#[from] PreprocessError),
    #[error("{0}")]
    Input(String),
}

pub type Result<T> = std::result::Result<T, RuntimeError>;

/// Task-layer errors keep their kind: engine failures are inference errors.
impl From<TaskError> for RuntimeError {
    fn from(e: TaskError) -> Self {
        match e {
            TaskError::Package(e) => RuntimeError::Package(e),
            TaskError::Preprocess(e) => RuntimeError::Preprocess(e),
            TaskError::Engine { graph, message } => RuntimeError::Inference { graph, message },
            TaskError::Input(m) => RuntimeError::Input(m),
        }
    }
}

#[cfg(feature = "cuda")]
fn with_cuda(
    builder: ort::session::builder::SessionBuilder,
    device_id: i32,
) -> Result<ort::session::builder::SessionBuilder> {
    let ep = ort::ep::CUDA::default()
        .with_device_id(device_id)
        .build()
        .error_on_failure();
    builder.with_execution_providers([ep]).map_err(|e| {
        RuntimeError::ExecutionProvider(format!(
            "CUDA device {device_id} could not be registered ({e}); the library must be ONNX Runtime GPU (onnxruntime-gpu) with CUDA available"
        ))
    })
}

#[cfg(not(feature = "cuda"))]
fn with_cuda(
    _builder: ort::session::builder::SessionBuilder,
    _device_id: i32,
) -> Result<ort::session::builder::SessionBuilder> {
    Err(RuntimeError::ExecutionProvider(
        "CUDA was requested but this build has no CUDA support; rebuild with `--features cuda` and load an onnxruntime-gpu library".into(),
    ))
}

/// blip-onnx's cache folder: `BLIP_ONNX_CACHE`, else `$XDG_CACHE_HOME/blip-onnx`, else
/// `~/.cache/blip-onnx` (scripts/lib.sh's `blip_cache`).
pub fn cache_root() -> Option<PathBuf> {
    std::env::var_os("BLIP_ONNX_CACHE")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("XDG_CACHE_HOME")
                .map(|x| PathBuf::from(x).join("blip-onnx"))
                .or_else(|| {
                    std::env::var_os("HOME")
                        .map(|h| PathBuf::from(h).join(".cache").join("blip-onnx"))
                })
        })
}

/// Where the fetch script caches the library (keep in sync with scripts/fetch-onnxruntime.sh).
pub fn cached_library_path() -> Option<PathBuf> {
    Some(
        cache_root()?
            .join(format!("onnxruntime-{ORT_VERSION}"))
            .join(format!("libonnxruntime.so.{ORT_VERSION}")),
    )
}

/// Resolves the library: `ORT_DYLIB_PATH` first (as ort itself does), then the fetch script's cache.
pub fn find_library() -> Result<PathBuf> {
    let mut looked = Vec::new();
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        looked.push(format!("ORT_DYLIB_PATH={}", p.display()));
    }
    if let Some(p) = cached_library_path() {
        if p.is_file() {
            return Ok(p);
        }
        looked.push(p.display().to_string());
    }
    Err(RuntimeError::LibraryNotFound {
        looked: looked.join(", "),
    })
}

/// The kernel ONNX Runtime's dynamic INT8 matrix products (`MatMulInteger`, `DynamicQuantizeMatMul`)
/// take on this CPU with the session settings of [`OrtLibrary::session`], for `inspect` and `/info`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Int8Path {
    /// x86 with VNNI (AVX-512 VNNI or AVX-VNNI): u8 x s8 products summed in int32, exact and fast.
    U8S8Vnni,
    /// x86 without VNNI: u8 x u8, exact; the faster u8 x s8 kernel would sum pairs of products in
    /// saturating int16 and lose accuracy on full-range int8 weights.
    U8U8,
    /// Not x86 (Arm's int8 dot products have no saturating step): u8 x s8.
    U8S8,
}

impl Int8Path {
    /// The path on the CPU this process runs on.
    pub fn detect() -> Int8Path {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512vnni")
                || std::arch::is_x86_feature_detected!("avxvnni")
            {
                Int8Path::U8S8Vnni
            } else {
                Int8Path::U8U8
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            Int8Path::U8S8
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Int8Path::U8S8Vnni => "u8s8-vnni",
            Int8Path::U8U8 => "u8u8",
            Int8Path::U8S8 => "u8s8",
        }
    }

    /// Why this path runs, in a sentence.
    pub fn reason(self) -> &'static str {
        match self {
            Int8Path::U8S8Vnni => {
                "the CPU has VNNI: u8 x s8 products are summed in int32 (exact, fastest)"
            }
            Int8Path::U8U8 => {
                "the CPU has no VNNI: ONNX Runtime's u8 x s8 kernel would sum pairs of products in saturating int16, so sessions ask for the exact u8 x u8 kernel (session.x64quantprecision)"
            }
            Int8Path::U8S8 => "not x86: u8 x s8 without a saturating step",
        }
    }
}

/// Graph optimisation level for sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OptLevel {
    Disable,
    Basic,
    Extended,
    #[default]
    All,
}

impl From<OptLevel> for GraphOptimizationLevel {
    fn from(level: OptLevel) -> Self {
        match level {
            OptLevel::Disable => GraphOptimizationLevel::Disable,
            OptLevel::Basic => GraphOptimizationLevel::Level1,
            OptLevel::Extended => GraphOptimizationLevel::Level2,
            OptLevel::All => GraphOptimizationLevel::All,
        }
    }
}

/// Where sessions run. A requested GPU that cannot be used is an error, never a silent CPU fallback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    #[default]
    Cpu,
    Cuda {
        device_id: i32,
    },
}

impl std::str::FromStr for Device {
    type Err = String;
    /// `cpu`, `cuda` (device 0) or `cuda:N`: the one spelling of `--device` in every door.
    fn from_str(s: &str) -> std::result::Result<Device, String> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda { device_id: 0 }),
            other => match other.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
                Some(device_id) => Ok(Device::Cuda { device_id }),
                None => Err(format!("--device {other:?}: expected cpu, cuda or cuda:N")),
            },
        }
    }
}

/// Session settings.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// Intra-op threads; 0: one per core. Sessions asking for the runtime's pool size share its
    /// pool (see [`OrtLibrary::init_with_threads`]); any other count gets a pool of its own.
    pub intra_threads: usize,
    pub inter_threads: usize,
    pub opt_level: OptLevel,
    pub device: Device,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            intra_threads: 0,
            inter_threads: 1,
            opt_level: OptLevel::All,
            device: Device::Cpu,
        }
    }
}

/// The loaded ONNX Runtime library (loaded once per process), which opens sessions. Not
/// [`blip_package::Runtime`], the runtimes a package is made for.
#[derive(Clone)]
pub struct OrtLibrary {
    env: Arc<ort::environment::Environment>,
    pub library: PathBuf,
    pub minor_version: u32,
    /// Which build of ONNX Runtime this is: its minor version and the git commit of its build info
    /// (`1.32-fab30a4`; a patch release is another commit), or `1.MINOR` when the info names no
    /// commit. Graphs optimized by one build are reused only by the same build (the
    /// optimized-graph cache's key).
    pub build: String,
    /// Size of the intra-op thread pool its CPU sessions share.
    pub pool_threads: usize,
}

static ORT_LIBRARY: OnceLock<std::result::Result<OrtLibrary, String>> = OnceLock::new();

/// `1.32-fab30a4`: the minor version and the git commit from ONNX Runtime's build info (`ORT
/// Build Info: git-branch=HEAD, git-commit-id=fab30a4, build type=Release`, as the PyPI wheel's
/// says); `1.MINOR` alone when the info names no commit.
fn build_id(info: &str, minor: u32) -> String {
    let commit = info
        .split([',', ':'])
        .find_map(|part| part.trim().strip_prefix("git-commit-id="))
        .map(str::trim)
        .filter(|c| !c.is_empty() && c.chars().all(|c| c.is_ascii_alphanumeric()));
    match commit {
        Some(commit) => format!("1.{minor}-{commit}"),
        None => format!("1.{minor}"),
    }
}

/// A thread count as the runtime applies it: `0` → one thread per core.
pub fn resolve_threads(threads: usize) -> usize {
    if threads > 0 {
        threads
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

impl OrtLibrary {
    /// Loads ONNX Runtime (once; later calls return the same library) with a shared pool of one
    /// thread per core.
    pub fn init() -> Result<OrtLibrary> {
        Self::init_with_threads(0)
    }

    /// Loads ONNX Runtime (once per process) with one intra-op thread pool of `threads` threads (0:
    /// one per core) that all its CPU sessions share; the first call in a process sizes it.
    ///
    /// One pool instead of one per session because a package runs several graphs in turn (vision,
    /// cross K/V, decoder steps): with a pool each, the idle pools' threads keep spinning for a while
    /// after their graph finishes and take the cores from the next graph.
    ///
    /// A library already loaded in this process (by [`OrtLibrary::init_from_library`]) is returned as is.
    pub fn init_with_threads(threads: usize) -> Result<OrtLibrary> {
        if let Some(Ok(loaded)) = ORT_LIBRARY.get() {
            return Ok(loaded.clone());
        }
        Self::init_from_library(&find_library()?, threads)
    }

    /// Loads ONNX Runtime from `lib` (once per process, as [`OrtLibrary::init_with_threads`]): for hosts
    /// that know where their library is (the Python wheel uses the `onnxruntime` package's). An
    /// error when the process already loaded another library.
    pub fn init_from_library(lib: &Path, threads: usize) -> Result<OrtLibrary> {
        let result = ORT_LIBRARY
            .get_or_init(|| Self::load(lib, resolve_threads(threads)).map_err(|e| e.to_string()));
        let same = |other: &Path| {
            other == lib
                || std::fs::canonicalize(other)
                    .is_ok_and(|o| std::fs::canonicalize(lib).is_ok_and(|l| o == l))
        };
        match result {
            Ok(loaded) if same(&loaded.library) => Ok(loaded.clone()),
            Ok(loaded) => Err(RuntimeError::LibraryLoad {
                path: lib.to_path_buf(),
                message: format!(
                    "this process already loaded ONNX Runtime from {}",
                    loaded.library.display()
                ),
            }),
            Err(message) => Err(RuntimeError::LibraryLoad {
                path: lib.to_path_buf(),
                message: message.clone(),
            }),
        }
    }

    fn load(lib: &Path, pool_threads: usize) -> Result<OrtLibrary> {
        let minor = ort::util::probe(lib).ok_or_else(|| RuntimeError::LibraryVersion {
            path: lib.to_path_buf(),
            found: "unknown: the file does not load as ONNX Runtime".into(),
        })?;
        if minor < ORT_MIN_MINOR {
            return Err(RuntimeError::LibraryVersion {
                path: lib.to_path_buf(),
                found: format!("1.{minor}"),
            });
        }
        let load = |message: String| RuntimeError::LibraryLoad {
            path: lib.to_path_buf(),
            message,
        };
        let builder = ort::init_from(lib).map_err(|e| load(e.to_string()))?;
        // After `init_from`: creating the options already calls into the library.
        let pool = ort::environment::GlobalThreadPoolOptions::default()
            .with_intra_threads(pool_threads)
            .and_then(|p| p.with_inter_threads(1))
            .map_err(|e| load(e.to_string()))?;
        let env = builder
            .with_name("blip-onnx")
            .with_global_thread_pool(pool)
            .build()
            .map_err(|e| load(e.to_string()))?;
        Ok(OrtLibrary {
            env: Arc::new(env),
            library: lib.to_path_buf(),
            minor_version: minor,
            build: build_id(ort::info(), minor),
            pool_threads,
        })
    }

    /// Opens one graph file as a session.
    pub fn session(&self, path: &Path, opts: &SessionOptions) -> Result<Session> {
        self.builder(path, opts, opts.opt_level)?
            .commit_from_file(path)
            .map_err(|e| RuntimeError::Session {
                path: path.to_path_buf(),
                message: e.to_string(),
            })
    }

    /// A session builder with `opts` (threads, device) at optimization `level`; `path` names the
    /// graph in errors.
    fn builder(
        &self,
        path: &Path,
        opts: &SessionOptions,
        level: OptLevel,
    ) -> Result<ort::session::builder::SessionBuilder> {
        let err = |message: String| RuntimeError::Session {
            path: path.to_path_buf(),
            message,
        };
        let level = GraphOptimizationLevel::from(level);
        let mut builder = Session::builder(&self.env)
            .map_err(|e| err(e.to_string()))?
            .with_optimization_level(level)
            .map_err(|e| err(e.to_string()))?
            // On x86 without VNNI (AVX2-only EPYCs, for one) the u8 x s8 kernel sums pairs of
            // products in saturating int16: QInt8 packages lost accuracy there (ITC cosine 0.98
            // against FP32; the int8 tests' 0.99 bound held on VNNI machines). This has ORT use
            // u8 x u8 on those CPUs only; with VNNI it changes nothing. Not for `write_optimized`, whose graph must stay portable.
            .with_config_entry("session.x64quantprecision", "1")
            .map_err(|e| err(e.to_string()))?;
        let threads = resolve_threads(opts.intra_threads);
        if threads != self.pool_threads {
            tracing::debug!(
                threads,
                shared = self.pool_threads,
                path = %path.display(),
                "session gets its own thread pool"
            );
            builder = builder
                .with_independent_thread_pool()
                .map_err(|e| err(e.to_string()))?
                .with_intra_threads(threads)
                .map_err(|e| err(e.to_string()))?
                .with_inter_threads(opts.inter_threads.max(1))
                .map_err(|e| err(e.to_string()))?;
        }
        if let Device::Cuda { device_id } = opts.device {
            builder = with_cuda(builder, device_id)?;
        }
        Ok(builder)
    }

    /// Lets ONNX Runtime optimize the graph at `src` (on the CPU provider) and save the result to
    /// `dst`; initializers go to `external_data` (a file name next to `dst`) when given.
    pub fn write_optimized(
        &self,
        src: &Path,
        dst: &Path,
        level: OptLevel,
        external_data: Option<&str>,
    ) -> Result<()> {
        let err = |message: String| RuntimeError::Session {
            path: src.to_path_buf(),
            message,
        };
        let level = GraphOptimizationLevel::from(level);
        let mut builder = Session::builder(&self.env)
            .map_err(|e| err(e.to_string()))?
            .with_optimization_level(level)
            .map_err(|e| err(e.to_string()))?
            .with_optimized_model_path(dst)
            .map_err(|e| err(e.to_string()))?;
        if let Some(file) = external_data {
            builder = builder
                .with_config_entry(
                    "session.optimized_model_external_initializers_file_name",
                    file,
                )
                .map_err(|e| err(e.to_string()))?
                .with_config_entry(
                    "session.optimized_model_external_initializers_min_size_in_bytes",
                    "1024",
                )
                .map_err(|e| err(e.to_string()))?;
        }
        builder
            .commit_from_file(src)
            .map(drop)
            .map_err(|e| err(e.to_string()))
    }

    /// Opens the graph of `role` in a package.
    ///
    /// The graph's inputs and outputs are checked against the manifest's (names, element types,
    /// fixed sizes), so a graph file swapped for another one is refused when it opens, naming the
    /// file, instead of failing or answering wrongly at the first run.
    pub fn package_session(
        &self,
        package: &Package,
        role: &str,
        opts: &SessionOptions,
    ) -> Result<Session> {
        let path = package.graph_path(role)?;
        let entry = package.graph(role)?;
        let session = match graph_cache::OptimizedGraph::for_graph(self, entry, opts) {
            Some(cached) => cached.session(self, &path, opts)?,
            None => self.session(&path, opts)?,
        };
        check_io(&session, entry).map_err(|message| RuntimeError::GraphMismatch {
            path: path.clone(),
            message,
        })?;
        Ok(session)
    }
}

/// The manifest's element type name of an ORT tensor type.
fn dtype_name(ty: ort::value::TensorElementType) -> &'static str {
    use ort::value::TensorElementType as T;
    match ty {
        T::Float32 => "float32",
        T::Float16 => "float16",
        T::Int64 => "int64",
        T::Int32 => "int32",
        T::Int8 => "int8",
        T::Uint8 => "uint8",
        T::Bool => "bool",
        _ => "other",
    }
}

/// Compares a session's inputs and outputs with the manifest entry of its graph.
fn check_io(
    session: &Session,
    entry: &blip_package::GraphEntry,
) -> std::result::Result<(), String> {
    let compare = |kind: &str,
                   outlets: &[ort::value::Outlet],
                   specs: &[blip_package::TensorSpec]|
     -> std::result::Result<(), String> {
        let names: Vec<&str> = outlets.iter().map(|o| o.name()).collect();
        for spec in specs {
            let outlet = outlets
                .iter()
                .find(|o| o.name() == spec.name)
                .ok_or_else(|| {
                    format!(
                        "the manifest lists {kind} {} but the graph has {}",
                        spec.name,
                        names.join(", ")
                    )
                })?;
            let ort::value::ValueType::Tensor { ty, shape, .. } = outlet.dtype() else {
                return Err(format!("{kind} {} is not a tensor", spec.name));
            };
            if dtype_name(*ty) != spec.dtype {
                return Err(format!(
                    "{kind} {} is {} in the graph, {} in the manifest",
                    spec.name,
                    dtype_name(*ty),
                    spec.dtype
                ));
            }
            let dims: &[i64] = shape;
            let fixed_differs = dims.len() != spec.dims.len()
                || dims
                    .iter()
                    .zip(&spec.dims)
                    .any(|(&d, want)| want.as_i64().is_some_and(|w| d >= 0 && d != w));
            if fixed_differs {
                return Err(format!(
                    "{kind} {} has shape {dims:?} in the graph, {:?} in the manifest",
                    spec.name, spec.dims
                ));
            }
        }
        if kind == "input"
            && let Some(extra) = outlets
                .iter()
                .find(|o| !specs.iter().any(|s| s.name == o.name()))
        {
            return Err(format!(
                "the graph needs input {}, which the manifest does not list",
                extra.name()
            ));
        }
        Ok(())
    };
    compare("input", session.inputs(), &entry.inputs)?;
    compare("output", session.outputs(), &entry.outputs)
}

#[cfg(test)]
mod build_id_tests {
    #[test]
    fn build_ids_name_the_minor_version_and_commit_or_the_minor_version_alone() {
        let info = "ORT Build Info: git-branch=HEAD, git-commit-id=fab30a4, fp8-kv-cache=1, build type=Release";
        assert_eq!(super::build_id(info, 32), "1.32-fab30a4");
        assert_eq!(
            super::build_id("ORT Build Info: build type=Release", 32),
            "1.32"
        );
        // Never a path: a commit that is not alphanumeric is left out.
        assert_eq!(super::build_id("git-commit-id=../x", 32), "1.32");
    }
}
