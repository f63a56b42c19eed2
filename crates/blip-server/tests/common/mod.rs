//! Shared by the server tests: the shapes packages converted once per test binary, a started server
//! on a loopback port, and small HTTP helpers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use base64::Engine as _;
use blip_server::{Running, ServeArgs};

pub fn fixture(rel: &str) -> PathBuf {
    blip_testkit::fixture(rel)
}

/// The shapes package of `head` (caption, retrieval, vqa), converted once per test binary.
pub fn package(head: &str) -> PathBuf {
    static DIRS: OnceLock<PathBuf> = OnceLock::new();
    let root = DIRS.get_or_init(|| {
        let exe = std::env::current_exe().expect("test binary path");
        let name = exe
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("server")
            .to_string();
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("shapes-{name}"));
        for h in ["caption", "retrieval", "vqa"] {
            let opts = blip_convert::ConvertOptions {
                force: true,
                ..Default::default()
            };
            blip_convert::convert(
                &fixture(&format!("shapes/models/shapes-{h}")),
                &root.join(h),
                &opts,
            )
            .unwrap_or_else(|e| panic!("convert shapes-{h}: {e}"));
        }
        root
    });
    root.join(head)
}

/// The library's model of a shapes package (one thread), to compute what the server must answer.
pub fn library_model(head: &str) -> blip_runtime::BlipModel {
    blip_runtime::BlipModel::open(
        &package(head),
        &blip_runtime::SessionOptions {
            intra_threads: 1,
            ..Default::default()
        },
    )
    .expect("the shapes package opens")
}

pub fn test_image(i: usize) -> PathBuf {
    fixture(&format!("shapes/test/images/test_{i:05}.png"))
}

pub fn b64(path: &Path) -> String {
    base64::engine::general_purpose::STANDARD.encode(std::fs::read(path).expect("image"))
}

/// Settings for a test server: the given packages, an ephemeral port, 2 threads.
pub fn args(heads: &[&str]) -> ServeArgs {
    let mut a = ServeArgs::new(heads.iter().map(|h| package(h)).collect()).expect("defaults");
    a.port = 0;
    a.host = "127.0.0.1".into();
    a.threads = 2;
    a
}

pub struct TestServer {
    pub running: Option<Running>,
    pub base: String,
    pub client: reqwest::Client,
}

impl TestServer {
    pub async fn start(args: ServeArgs) -> TestServer {
        let running = blip_server::start(args).await.expect("server starts");
        let base = format!("http://{}", running.addr);
        let client = reqwest::Client::new();
        let s = TestServer {
            running: Some(running),
            base,
            client,
        };
        s.wait_ready().await;
        s
    }

    pub async fn wait_ready(&self) {
        for _ in 0..600 {
            let r = self.client.get(self.url("/health/ready")).send().await;
            if r.is_ok_and(|r| r.status() == 200) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("server never became ready");
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn post(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        let r = self
            .client
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        let text = r.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
        )
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        let r = self
            .client
            .get(self.url(path))
            .send()
            .await
            .expect("request");
        (r.status().as_u16(), r.text().await.expect("body"))
    }

    pub async fn metrics(&self) -> String {
        self.get("/metrics").await.1
    }
}

/// The value of one sample line in Prometheus text, `None` when the series is absent.
pub fn sample(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (k, v) = l.rsplit_once(' ')?;
        (k == name_and_labels).then(|| v.parse().ok()).flatten()
    })
}

/// The value of one sample line in Prometheus text (0 when absent: a counter not yet counted).
pub fn metric(text: &str, name_and_labels: &str) -> f64 {
    sample(text, name_and_labels).unwrap_or(0.0)
}

/// The value of a series that must be there (a renamed metric or label fails, rather than
/// reading 0 on both sides of a comparison).
#[track_caller]
pub fn series(text: &str, name_and_labels: &str) -> f64 {
    sample(text, name_and_labels)
        .unwrap_or_else(|| panic!("{name_and_labels} missing from /metrics:\n{text}"))
}

/// Runs of the vision encoder in this process; the start-up probe creates the series.
pub const VISION_RUNS: &str = "blip_graph_duration_seconds_count{graph=\"vision_encoder\"}";

/// Asserts an error body `{"error", "error_type"}` with the given status and class.
#[track_caller]
pub fn assert_error(got: &(u16, serde_json::Value), status: u16, error_type: &str) {
    assert_eq!(got.0, status, "{}", got.1);
    assert_eq!(got.1["error_type"], error_type, "{}", got.1);
    assert!(
        got.1["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{}",
        got.1
    );
}

/// As [`assert_error`], and the message names `what` (the field, the item or the limit).
#[track_caller]
pub fn assert_error_naming(
    got: &(u16, serde_json::Value),
    status: u16,
    error_type: &str,
    what: &str,
) {
    assert_error(got, status, error_type);
    let message = got.1["error"].as_str().unwrap_or("");
    assert!(message.contains(what), "{what:?} not named in {message:?}");
}

/// The vision states of test image `i` as the library computes them (to compare stored states).
pub fn library_states(model: &mut blip_runtime::BlipModel, i: usize) -> Vec<f32> {
    let input = blip_runtime::ImageInput::Path(test_image(i));
    let (_, hidden) = model.embed_images(&[input]).expect("embed");
    hidden.iter().copied().collect()
}

/// The largest absolute difference between two equally long slices.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}
