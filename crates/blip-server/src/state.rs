//! What the handlers share: the engine handle, admission, readiness and the served index.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use blip_index::{AnnStorage, Index, StateShape, Store, StoreOptions};
use blip_package::{Head, Package};
use blip_preprocess::ImagePreprocessor;
use blip_runtime::SessionOptions;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use crate::ServerError;
use crate::admission;
use crate::config::ServeArgs;
use crate::engine::{self, Done, EngineError, EngineHandle, Reply, Work};
use crate::error::ApiError;
use crate::metrics as m;

/// A package as the HTTP side sees it (the engine thread holds the model).
pub struct Served {
    pub head: Head,
    pub package: Package,
    pub preprocessor: Arc<ImagePreprocessor>,
    /// For validating text lengths before they reach the engine.
    pub tokenizer: blip_preprocess::BlipTokenizer,
}

/// The index served by /v1/search and changed by /v1/index: a format-3 store (SQLite + ANN
/// graph). Changes are transactions of their own; searches run beside them on snapshots, so
/// nothing is copied per change.
pub struct IndexStore {
    pub path: PathBuf,
    pub store: Arc<Store>,
}

pub struct AppState {
    pub served: Vec<Served>,
    pub index: Option<IndexStore>,
    pub engine: RwLock<Option<EngineHandle>>,
    /// Joined at shutdown (see [`engine::EngineThread`]).
    engine_thread: std::sync::Mutex<Option<engine::EngineThread>>,
    pub ready: Arc<AtomicBool>,
    /// The packages loaded and warmed up once (readiness is re-checked only after that).
    pub loaded: AtomicBool,
    /// Set when the engine failed to load (the server stays up and says why in /health/ready).
    pub load_error: RwLock<Option<String>>,
    requests: Arc<Semaphore>,
    units: Arc<Semaphore>,
    pub max_units: usize,
    /// Seconds per unit of work, learned by the engine.
    pub rates: Arc<admission::Rates>,
    /// Estimated work and input bytes of the admitted requests.
    pub ledger: Arc<admission::Ledger>,
    /// Images per vision batch: --max-batch-images, lowered so one batch's working set fits half
    /// of --memory-budget.
    pub batch_images: usize,
    /// The engine's estimated working set per batched image (largest package).
    pub working_bytes_per_image: u64,
    pub metrics: PrometheusHandle,
    /// Fetches `image_url`s under --allow-image-url-host's rules (OpenAI-compatible routes).
    pub image_urls: crate::image_url::UrlFetcher,
    pub args: ServeArgs,
}

/// Admission for one request: released (and the gauge updated) when dropped.
pub struct Permit {
    _request: OwnedSemaphorePermit,
    _units: OwnedSemaphorePermit,
    _ticket: admission::Ticket,
    units: Arc<Semaphore>,
    max: usize,
    held: usize,
}

impl Drop for Permit {
    fn drop(&mut self) {
        // This permit's units are released right after this; count them out already.
        let in_flight = self.max - self.units.available_permits();
        metrics::gauge!(m::IMAGES_IN_FLIGHT).set(in_flight.saturating_sub(self.held) as f64);
    }
}

impl AppState {
    pub fn new(args: &ServeArgs, metrics: PrometheusHandle) -> Result<AppState, ServerError> {
        let mut served: Vec<Served> = Vec::new();
        for dir in &args.packages {
            let package = Package::open(dir)?;
            let head = package.manifest.head;
            if let Some(other) = served.iter().find(|s| s.head == head) {
                return Err(ServerError::Config(format!(
                    "packages {} and {} both have the {} head; serve one per head",
                    other.package.dir.display(),
                    dir.display(),
                    head.name()
                )));
            }
            let mut pre = ImagePreprocessor::new(&package.manifest.preprocess);
            pre.max_pixels = args.max_image_pixels;
            let tokenizer = blip_preprocess::BlipTokenizer::from_file(
                &package.tokenizer_path(),
                package.manifest.tokens.clone(),
            )
            .map_err(|e| ServerError::Config(format!("package {}: {e}", dir.display())))?;
            served.push(Served {
                head,
                package,
                preprocessor: Arc::new(pre),
                tokenizer,
            });
        }
        let index = match &args.index {
            None => None,
            Some(path) => {
                let retrieval = served
                    .iter()
                    .find(|s| s.head == Head::Retrieval)
                    .ok_or_else(|| {
                        ServerError::Config(
                            "--index needs a retrieval package (--package with the retrieval head)"
                                .into(),
                        )
                    })?;
                let pkg = &retrieval.package;
                let path = std::path::absolute(path).unwrap_or_else(|_| path.clone());
                // An existing index is opened (a format-2 file is migrated to format 3 first);
                // a new one keeps f16 rerank states.
                let store = if path.exists() {
                    let store = Store::open(&path)?;
                    store.check_package(pkg)?;
                    store
                } else {
                    let m = &pkg.manifest.model;
                    Store::create(
                        &path,
                        &StoreOptions {
                            package: Index::fingerprint(pkg),
                            dim: blip_index::image_embedding_width(pkg)?,
                            states: Some(StateShape {
                                tokens: m.image_tokens,
                                width: m.vision_hidden_size,
                            }),
                            rerank: args.rerank_states,
                            ann: AnnStorage::default(),
                        },
                    )?
                };
                Some(IndexStore {
                    path,
                    store: Arc::new(store),
                })
            }
        };
        // Semaphores take at most u32::MAX permits at once (and refuse more than usize::MAX >> 3).
        let cap = |n: usize| n.clamp(1, u32::MAX as usize);
        let max_units = cap(args.max_queue);
        let budget = args.memory_budget();
        // BLIP's default decoding (3 beams, 20 tokens) sizes a caption image's working set.
        let working_bytes_per_image = served
            .iter()
            .map(|s| admission::working_bytes_per_image(&s.package.manifest.model, 3, 20))
            .max()
            .unwrap_or(1)
            .max(1);
        let by_memory = usize::try_from(budget / 2 / working_bytes_per_image).unwrap_or(usize::MAX);
        let batch_images = args.max_batch_images.clamp(1, by_memory.max(1));
        Ok(AppState {
            image_urls: crate::image_url::UrlFetcher::new(args).map_err(ServerError::Config)?,
            served,
            index,
            engine: RwLock::new(None),
            engine_thread: std::sync::Mutex::new(None),
            ready: Arc::new(AtomicBool::new(false)),
            loaded: AtomicBool::new(false),
            load_error: RwLock::new(None),
            requests: Arc::new(Semaphore::new(cap(args.max_concurrent_requests))),
            units: Arc::new(Semaphore::new(max_units)),
            max_units,
            rates: Arc::new(admission::Rates::default()),
            ledger: Arc::new(admission::Ledger::new(budget / 2)),
            batch_images,
            working_bytes_per_image,
            metrics,
            args: args.clone(),
        })
    }

    /// Starts the engine thread; readiness flips when its packages are loaded and warmed up.
    pub fn start_engine(state: &Arc<AppState>, args: &ServeArgs) -> Result<(), ServerError> {
        let (loaded_tx, loaded_rx) = oneshot::channel();
        let packages = state
            .served
            .iter()
            .map(|s| (s.head, s.package.dir.clone()))
            .collect();
        let opts = SessionOptions {
            intra_threads: args.threads,
            ..Default::default()
        };
        let batcher = engine::Batcher {
            max_images: state.batch_images,
            max_wait: args.max_batch_wait(),
            costs: Arc::new(engine::BatchCosts::default()),
        };
        let (handle, thread) = engine::start(
            packages,
            opts,
            batcher,
            args.scheduler.build(),
            state.rates.clone(),
            loaded_tx,
        )
        .map_err(|e| ServerError::Engine(format!("starting the engine thread: {e}")))?;
        if let Ok(mut g) = state.engine.write() {
            *g = Some(handle);
        }
        if let Ok(mut g) = state.engine_thread.lock() {
            *g = Some(thread);
        }
        let st = state.clone();
        tokio::spawn(async move {
            match loaded_rx.await {
                Ok(Ok(())) => {
                    st.loaded.store(true, Ordering::SeqCst);
                    st.set_ready(true);
                }
                Ok(Err(e)) => {
                    tracing::error!("{e}");
                    if let Ok(mut g) = st.load_error.write() {
                        *g = Some(e);
                    }
                }
                Err(_) => {
                    if let Ok(mut g) = st.load_error.write() {
                        *g = Some("the engine thread stopped while loading".into());
                    }
                }
            }
        });
        Ok(())
    }

    /// Drops the engine handle and waits (at most `bound`) for the engine thread to finish what
    /// it is running, so that the process never exits under a running ORT session.
    pub async fn stop_engine(&self, bound: std::time::Duration) -> Result<(), ServerError> {
        self.set_ready(false);
        if let Ok(mut g) = self.engine.write() {
            g.take();
        }
        let thread = self.engine_thread.lock().ok().and_then(|mut g| g.take());
        let Some(thread) = thread else {
            return Ok(());
        };
        let join = tokio::task::spawn_blocking(move || thread.stop_and_join());
        match tokio::time::timeout(bound, join).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(ServerError::Engine(e)),
            Ok(Err(e)) => Err(ServerError::Engine(format!(
                "joining the engine thread: {e}"
            ))),
            Err(_) => {
                tracing::warn!("the engine thread was still running {bound:?} after shutdown");
                Ok(())
            }
        }
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
        metrics::gauge!(m::READY).set(if ready { 1.0 } else { 0.0 });
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// The package with `head`, or 404 naming it.
    pub fn served(&self, head: Head) -> Result<&Served, ApiError> {
        self.served.iter().find(|s| s.head == head).ok_or_else(|| {
            ApiError::not_found(format!(
                "no {} package is loaded (start the server with --package pointing at one)",
                head.name()
            ))
        })
    }

    pub fn check_ready(&self) -> Result<(), ApiError> {
        if self.is_ready() {
            return Ok(());
        }
        let why = self
            .load_error
            .read()
            .ok()
            .and_then(|g| g.clone())
            .unwrap_or_else(|| "the packages are still loading".into());
        Err(ApiError::not_ready(format!("not ready: {why}")))
    }

    /// Admits a request of `units` work items (images, or one per text-only request) on `head`,
    /// costing `work` and holding `bytes` of inputs until answered, or answers 429 at once
    /// (queue or concurrency at its limit, its estimated finish past its deadline, or its inputs
    /// past the memory budget).
    pub fn admit(
        &self,
        units: usize,
        head: Head,
        work: admission::Units,
        bytes: u64,
    ) -> Result<Permit, ApiError> {
        let units = units.max(1);
        if units > self.max_units {
            return Err(ApiError::too_large(format!(
                "{units} images in one request; at most {} (--max-queue)",
                self.max_units
            )));
        }
        let overloaded = |what: &str| {
            metrics::counter!(m::REJECTED, "reason" => what.to_string()).increment(1);
            ApiError::overloaded(format!("overloaded: {what} at its limit; retry shortly"))
        };
        let request = self
            .requests
            .clone()
            .try_acquire_owned()
            .map_err(|_| overloaded("--max-concurrent-requests"))?;
        let u = self
            .units
            .clone()
            .try_acquire_many_owned(units as u32)
            .map_err(|_| overloaded("--max-queue (images in flight)"))?;
        let ticket = admission::Ledger::admit(
            &self.ledger,
            self.rates.estimate(head, work),
            bytes,
            self.args.request_timeout(),
        )?;
        metrics::gauge!(m::IMAGES_IN_FLIGHT)
            .set((self.max_units - self.units.available_permits()) as f64);
        Ok(Permit {
            _request: request,
            _units: u,
            _ticket: ticket,
            units: self.units.clone(),
            max: self.max_units,
            held: units,
        })
    }

    pub fn deadline(&self) -> Instant {
        let now = Instant::now();
        now.checked_add(self.args.request_timeout())
            .unwrap_or(now + std::time::Duration::from_secs(86400 * 365))
    }

    /// Sends work to the engine and waits for the answer, at most until `deadline` (then 504).
    pub async fn run(&self, head: Head, work: Work, deadline: Instant) -> Result<Done, ApiError> {
        let handle = self
            .engine
            .read()
            .ok()
            .and_then(|g| g.clone())
            .ok_or_else(|| ApiError::not_ready("the engine is not running"))?;
        let rx = handle
            .submit(head, work, deadline)
            .map_err(|e| engine_error(&e))?;
        let reply: Reply = match tokio::time::timeout_at(deadline.into(), rx).await {
            Err(_) => return Err(ApiError::deadline()),
            Ok(Err(_)) => return Err(ApiError::not_ready("the engine stopped")),
            Ok(Ok(r)) => r,
        };
        if let Err(EngineError::Runtime(blip_runtime::RuntimeError::Inference { .. })) = &reply {
            // A graph run failed. The input may be to blame, so readiness only drops when a
            // forward pass on the probe image fails too; /health/ready then re-checks.
            if let Ok(probe) = handle.submit(head, Work::Probe, self.deadline()) {
                let ready = self.ready.clone();
                tokio::spawn(async move {
                    if !matches!(probe.await, Ok(Ok(_))) {
                        ready.store(false, Ordering::SeqCst);
                        metrics::gauge!(m::READY).set(0.0);
                    }
                });
            }
        }
        reply.map_err(|e| engine_error(&e))
    }

    pub fn index(&self) -> Result<&IndexStore, ApiError> {
        self.index.as_ref().ok_or_else(|| {
            ApiError::not_found("no index is served (start the server with --index FILE)")
        })
    }
}

pub fn engine_error(e: &EngineError) -> ApiError {
    match e {
        EngineError::NoHead(h) => ApiError::not_found(format!("no {} package is loaded", h.name())),
        EngineError::Deadline => ApiError::deadline(),
        EngineError::Runtime(r) => ApiError::from_runtime(r),
        EngineError::Index(i) => ApiError::validation(i.to_string()),
        EngineError::Stopped => ApiError::not_ready("the engine stopped"),
    }
}
