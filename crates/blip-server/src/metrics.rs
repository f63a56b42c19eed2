//! Prometheus metrics (prefix `blip_`, durations in seconds, geometric buckets). One recorder per
//! process: a second server in the same process shares it.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

pub const REQUEST_COUNT: &str = "blip_request_count";
pub const REQUEST_DURATION: &str = "blip_request_duration_seconds";
pub const QUEUE_DURATION: &str = "blip_queue_duration_seconds";
pub const PREPROCESS_DURATION: &str = "blip_preprocess_duration_seconds";
pub const INFERENCE_DURATION: &str = "blip_inference_duration_seconds";
/// Seconds per graph run, by graph (vision_encoder, cross_kv, decoder, …): recorded by the engine.
pub use blip_runtime::GRAPH_DURATION;
/// Images per merged graph run.
pub const BATCH_SIZE: &str = "blip_batch_size";
/// Requests per merged graph run.
pub const BATCH_REQUESTS: &str = "blip_batch_requests";
pub const QUEUE_SIZE: &str = "blip_queue_size";
/// Images the batcher let the last batch take (from the measured cost per image of each size).
pub const BATCH_LIMIT: &str = "blip_batch_limit_images";
pub const IMAGES_IN_FLIGHT: &str = "blip_images_in_flight";
pub const GENERATED_TOKENS: &str = "blip_generated_tokens_total";
/// Queue entries dropped before inference, by reason (disconnected, deadline).
pub const DROPPED: &str = "blip_dropped_requests_total";
/// Requests refused at admission (429).
pub const REJECTED: &str = "blip_rejected_requests_total";
pub const READY: &str = "blip_ready";

/// 100 µs … ~105 s, ×2 per bucket.
fn duration_buckets() -> Vec<f64> {
    (0..21).map(|i| 1e-4 * 2f64.powi(i)).collect()
}

/// 1 … 512, ×2.
fn size_buckets() -> Vec<f64> {
    (0..10).map(|i| 2f64.powi(i)).collect()
}

static HANDLE: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();

/// Installs the process-wide recorder (once) and returns its handle for `/metrics`.
pub fn install() -> Result<PrometheusHandle, String> {
    HANDLE
        .get_or_init(|| {
            use metrics_exporter_prometheus::Matcher;
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &duration_buckets())
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(BATCH_SIZE.into()), &size_buckets())
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(BATCH_REQUESTS.into()), &size_buckets())
                })
                .map_err(|e| e.to_string())?
                .install_recorder()
                .map_err(|e| e.to_string())
                .inspect(|handle| {
                    // The recorder keeps every histogram sample until upkeep folds it in; without
                    // a scrape nothing did, and RSS grew with every request (~1.3 kB each in the
                    // hostile soak, scripts/soak-serve.sh).
                    let handle = handle.clone();
                    let _ = std::thread::Builder::new()
                        .name("blip-metrics-upkeep".into())
                        .spawn(move || {
                            loop {
                                std::thread::sleep(std::time::Duration::from_secs(5));
                                handle.run_upkeep();
                            }
                        });
                })
        })
        .clone()
}
