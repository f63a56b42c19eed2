//! The server's settings: one definition, used as `blip-onnx serve`'s flags (each with a `BLIP_`
//! environment variable) and by embedders and tests.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

#[derive(Args, Clone, Debug)]
pub struct ServeArgs {
    /// Model package to serve (repeatable: a caption, a retrieval and a VQA package at once).
    #[arg(
        long = "package",
        required = true,
        env = "BLIP_PACKAGE",
        value_delimiter = ','
    )]
    pub packages: Vec<PathBuf>,
    /// Search index served by /v1/search (the `blip-onnx index` format); /v1/index changes it.
    #[arg(long, env = "BLIP_INDEX")]
    pub index: Option<PathBuf>,
    /// What a new index (an --index path that does not exist yet) keeps per image for ITM
    /// rerank: f16 vision states, int8 (half the disk) or none (rerank encodes the candidates'
    /// stored images at query time). An existing index keeps the choice it was made with.
    #[arg(long, default_value = "f16", env = "BLIP_RERANK_STATES")]
    pub rerank_states: blip_index::RerankStates,
    #[arg(long, default_value = "127.0.0.1", env = "BLIP_HOST")]
    pub host: String,
    /// 0 picks a free port (printed at start).
    #[arg(long, default_value_t = 8080, env = "BLIP_PORT")]
    pub port: u16,
    /// Intra-op threads for ONNX Runtime (0: one per core).
    #[arg(long, default_value_t = 0, env = "BLIP_THREADS")]
    pub threads: usize,
    /// Images per vision-encoder run, from concurrent requests together.
    #[arg(long, default_value_t = 16, env = "BLIP_MAX_BATCH_IMAGES")]
    pub max_batch_images: usize,
    /// How long a batch waits for more images before it runs.
    #[arg(long, default_value_t = 5, env = "BLIP_MAX_BATCH_WAIT_MS")]
    pub max_batch_wait_ms: u64,
    /// Requests admitted at once (beyond: 429).
    #[arg(long, default_value_t = 512, env = "BLIP_MAX_CONCURRENT_REQUESTS")]
    pub max_concurrent_requests: usize,
    /// Work items (images, or one per text-only request) admitted and not yet answered (beyond: 429).
    #[arg(long, default_value_t = 256, env = "BLIP_MAX_QUEUE")]
    pub max_queue: usize,
    /// Request body limit in bytes (16 MB).
    #[arg(long, default_value_t = 16 * 1024 * 1024, env = "BLIP_PAYLOAD_LIMIT")]
    pub payload_limit: usize,
    /// Largest image (width × height) decoded; larger ones are refused before decoding (413).
    #[arg(long, default_value_t = blip_preprocess::DEFAULT_MAX_PIXELS, env = "BLIP_MAX_IMAGE_PIXELS")]
    pub max_image_pixels: u64,
    /// Seconds a request may take, queue included (then 504).
    #[arg(long, default_value_t = 30.0, env = "BLIP_REQUEST_TIMEOUT")]
    pub request_timeout: f64,
    /// Bytes of working memory the server plans for beyond its loaded packages: half for one
    /// engine batch (which caps the vision batch below --max-batch-images), half for the inputs that
    /// admitted requests hold (beyond it: 429). Default: half of this machine's memory.
    #[arg(long, env = "BLIP_MEMORY_BUDGET")]
    pub memory_budget: Option<u64>,
    /// Seconds a client has to send a request's headers, from the connection's first byte or, on
    /// a kept-alive connection, from its previous response (slow clients are cut off).
    #[arg(long, default_value_t = 10.0, env = "BLIP_HEADER_READ_TIMEOUT")]
    pub header_read_timeout: f64,
    /// Seconds a client has to send a request's whole body once its headers are in (then 408).
    #[arg(long, default_value_t = 30.0, env = "BLIP_BODY_READ_TIMEOUT")]
    pub body_read_timeout: f64,
    /// Seconds a connection may stay open with no request in flight and no bytes either way.
    #[arg(long, default_value_t = 60.0, env = "BLIP_IDLE_TIMEOUT")]
    pub idle_timeout: f64,
    /// Bearer token required on /v1/* (health, metrics, docs and the page stay open).
    #[arg(long, env = "BLIP_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Allowed CORS origin ("*" for any); CORS is off without it.
    #[arg(long, env = "BLIP_CORS_ORIGIN")]
    pub cors_origin: Option<String>,
    /// Seconds in-flight requests get to finish after SIGTERM / ctrl-c.
    #[arg(long, default_value_t = 10.0, env = "BLIP_SHUTDOWN_GRACE")]
    pub shutdown_grace: f64,
    /// How captions are batched: `request` (captions with identical settings decoded together,
    /// start to end) or `iteration` (continuous: requests join and leave a running decode batch at
    /// step boundaries, whatever their settings). Request-level is the default: it was faster in
    /// the side-by-side measurement (docs/bench/serve-schedulers-shapes.md).
    #[arg(long, value_enum, default_value_t = crate::engine::SchedulerKind::Request, env = "BLIP_SCHEDULER")]
    pub scheduler: crate::engine::SchedulerKind,
    /// The model id each package answers to on the OpenAI-compatible routes, in --package order
    /// (default: the package folder's name).
    #[arg(long = "served-model-name")]
    pub served_model_names: Vec<String>,
    /// Hosts `image_url`s may be fetched from (OpenAI-compatible routes): `photos.example.com`,
    /// or `*.example.com` for its subdomains. None: only data: URIs are taken.
    #[arg(
        long = "allow-image-url-host",
        env = "BLIP_ALLOW_IMAGE_URL_HOST",
        value_delimiter = ','
    )]
    pub allow_image_url_hosts: Vec<String>,
    /// Let allowed hosts resolve to private, loopback and link-local addresses (an intranet
    /// image store). Off: such addresses are refused at connect time, redirects included.
    #[arg(long, env = "BLIP_ALLOW_PRIVATE_IMAGE_URLS")]
    pub allow_private_image_urls: bool,
    /// Seconds an image URL may take to answer in full.
    #[arg(long, default_value_t = 10.0, env = "BLIP_IMAGE_URL_TIMEOUT")]
    pub image_url_timeout: f64,
}

impl ServeArgs {
    /// The settings `blip-onnx serve --package P…` starts with (defaults, and `BLIP_*` variables).
    pub fn new(packages: Vec<PathBuf>) -> Result<ServeArgs, clap::Error> {
        use clap::{FromArgMatches, Parser};
        #[derive(Parser)]
        struct Probe {
            #[command(flatten)]
            args: ServeArgs,
        }
        let mut argv = vec!["serve".to_string()];
        for p in &packages {
            argv.push("--package".into());
            argv.push(p.display().to_string());
        }
        let matches = <Probe as clap::CommandFactory>::command().try_get_matches_from(argv)?;
        let mut args = Probe::from_arg_matches(&matches)?.args;
        args.packages = packages;
        Ok(args)
    }

    pub fn request_timeout(&self) -> Duration {
        secs(self.request_timeout)
    }

    pub fn shutdown_grace(&self) -> Duration {
        secs(self.shutdown_grace)
    }

    pub fn memory_budget(&self) -> u64 {
        self.memory_budget
            .unwrap_or_else(crate::admission::default_memory_budget)
    }

    pub fn header_read_timeout(&self) -> Duration {
        secs(self.header_read_timeout)
    }

    pub fn body_read_timeout(&self) -> Duration {
        secs(self.body_read_timeout)
    }

    pub fn idle_timeout(&self) -> Duration {
        secs(self.idle_timeout)
    }

    pub fn max_batch_wait(&self) -> Duration {
        Duration::from_millis(self.max_batch_wait_ms)
    }
}

fn secs(s: f64) -> Duration {
    Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(Duration::MAX)
}
