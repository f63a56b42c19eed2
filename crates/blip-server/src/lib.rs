//! `blip-onnx serve`: one HTTP server for every BLIP task (caption, ITC embeddings, ITM, VQA,
//! indexed search), with dynamic batching on an engine thread, admission control, deadlines,
//! Prometheus metrics, an OpenAPI document and the retrieval demo page.
//!
//! Layout: [`config`] (flags), [`conn`] (the accept loop and its connection timeouts), [`engine`] (the thread that owns the models, its batcher and the
//! swappable scheduler), [`routes`] (axum handlers and the OpenAPI document), [`input`] (bodies,
//! images, preprocessing off the runtime), [`error`] (`{"error", "error_type"}`), [`state`]
//! (admission, readiness, the served index), [`openai`] (the OpenAI-compatible routes) and
//! [`image_url`] (fetching their image URLs under the operator's rules).

pub mod admission;
pub mod api;
pub mod config;
pub mod conn;
pub mod engine;
pub mod error;
pub mod image_url;
pub mod input;
pub mod metrics;
pub mod openai;
pub mod routes;
pub mod state;
pub mod tag;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;

pub use config::ServeArgs;
pub use routes::openapi_json;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Package(#[from] blip_package::PackageError),
    #[error(transparent)]
    Index(#[from] blip_index::IndexError),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Engine(String),
    #[error("serving: {0}")]
    Serve(#[source] std::io::Error),
}

/// A started server: its address, and a way to stop it.
pub struct Running {
    pub addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), ServerError>>,
    pub state: Arc<state::AppState>,
}

impl Running {
    /// Stops accepting connections; in-flight requests get `--shutdown-grace` to finish.
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
    }

    /// Waits until the server has stopped, then for the engine thread to finish.
    pub async fn wait(self) -> Result<(), ServerError> {
        let served = match self.task.await {
            Ok(r) => r,
            Err(e) => Err(ServerError::Engine(format!("server task failed: {e}"))),
        };
        // Requests past the grace may still hold a handle; their deadlines bound the wait.
        let bound = self.state.args.shutdown_grace() + std::time::Duration::from_secs(30);
        let engine = self.state.stop_engine(bound).await;
        served.and(engine)
    }
}

/// Binds the port (so `/health/live` answers at once), then loads the packages on the engine thread;
/// `/health/ready` turns 200 after their warm-up pass.
pub async fn start(args: ServeArgs) -> Result<Running, ServerError> {
    let metrics = metrics::install().map_err(ServerError::Config)?;
    let state = Arc::new(state::AppState::new(&args, metrics)?);
    let addr = format!("{}:{}", args.host, args.port);
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|source| ServerError::Bind {
            addr: addr.clone(),
            source,
        })?;
    let local = listener.local_addr().map_err(|source| ServerError::Bind {
        addr: addr.clone(),
        source,
    })?;
    state::AppState::start_engine(&state, &args)?;
    let app = routes::router(state.clone(), &args);
    let (tx, rx) = watch::channel(false);
    let grace = args.shutdown_grace();
    let timeouts = conn::Timeouts {
        header_read: args.header_read_timeout(),
        idle: args.idle_timeout(),
    };
    let task = tokio::spawn(async move {
        conn::serve(listener, app, timeouts, rx, grace)
            .await
            .map_err(ServerError::Serve)
    });
    Ok(Running {
        addr: local,
        shutdown: tx,
        task,
        state,
    })
}

/// The server without a socket: its router (every route, admission, the engine) for requests
/// made in this process — `blip-onnx batch` answers Batch API lines through it, so a line gets
/// exactly the answer `POST` to a running server would. Call [`InProcess::stop`] when done.
pub struct InProcess {
    pub router: axum::Router,
    pub state: Arc<state::AppState>,
}

impl InProcess {
    /// Loads the packages and waits until they have answered their warm-up pass.
    pub async fn start(args: ServeArgs) -> Result<InProcess, ServerError> {
        let metrics = metrics::install().map_err(ServerError::Config)?;
        let state = Arc::new(state::AppState::new(&args, metrics)?);
        state::AppState::start_engine(&state, &args)?;
        let router = routes::router(state.clone(), &args);
        while !state.is_ready() {
            if let Some(e) = state.load_error.read().ok().and_then(|g| g.clone()) {
                return Err(ServerError::Engine(e));
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        Ok(InProcess { router, state })
    }

    pub async fn stop(self) -> Result<(), ServerError> {
        let bound = self.state.args.shutdown_grace() + std::time::Duration::from_secs(30);
        self.state.stop_engine(bound).await
    }
}

/// Runs the server until SIGTERM or ctrl-c, then drains within the grace period.
pub async fn serve(args: ServeArgs) -> Result<(), ServerError> {
    // Signal handlers first: a SIGTERM right after "listening" must drain, not kill.
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(ServerError::Serve)?;
    let running = start(args).await?;
    eprintln!("blip-onnx serve: listening on http://{}", running.addr);
    #[cfg(unix)]
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
    eprintln!("blip-onnx serve: shutting down");
    running.shutdown();
    running.wait().await
}
