//! Inputs that `scripts/fuzz.sh` kept as server_request regressions (fixtures/fuzz-regressions/),
//! replayed as the fuzz target runs them: byte 0 picks the /v1 route, byte 1 the content type, the
//! rest is the body, sent to the server's router with no engine behind it (ready, so requests get
//! as far as the engine). Whatever the body, the answer is JSON: a 4xx or 503 naming its error, or
//! a 200 whose every item carries its own error; never a panic or a 500. And every regression
//! folder has a `cargo test` that replays it.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use blip_server::ServeArgs;
use blip_server::state::AppState;
use common::package;

const ROUTES: [&str; 6] = [
    "/v1/caption",
    "/v1/embed",
    "/v1/itm",
    "/v1/vqa",
    "/v1/search",
    "/v1/index",
];
const BOUNDARY: &str = "fuzzboundary";

fn regressions(target: &str) -> PathBuf {
    blip_testkit::fixture("fuzz-regressions").join(target)
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

/// The fuzz target's router on a loopback port: the shapes packages, no engine, ready.
async fn engineless_router() -> String {
    let args = ServeArgs::new(["caption", "retrieval", "vqa"].map(package).to_vec())
        .expect("serve arguments");
    let metrics = blip_server::metrics::install().expect("metrics recorder");
    let state = Arc::new(AppState::new(&args, metrics).expect("server state"));
    state.set_ready(true);
    let router = blip_server::routes::router(state, &args);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    base
}

/// Sends one fuzz input as the target does; returns the status and the JSON body.
async fn replay(
    client: &reqwest::Client,
    base: &str,
    input: &[u8],
) -> (&'static str, u16, serde_json::Value) {
    let [route, kind, body @ ..] = input else {
        panic!("a server_request input has at least 2 bytes");
    };
    let route = ROUTES[*route as usize % ROUTES.len()];
    let mut req = client.post(format!("{base}{route}"));
    match kind % 4 {
        0 => req = req.header("content-type", "application/json"),
        1 => {
            req = req.header(
                "content-type",
                format!("multipart/form-data; boundary={BOUNDARY}"),
            )
        }
        2 => req = req.header("content-type", "text/plain"),
        _ => {}
    }
    let r = req.body(body.to_vec()).send().await.expect("an answer");
    let status = r.status().as_u16();
    let bytes = r.bytes().await.expect("the body");
    let json = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!("{route}: status {status}: the body is not JSON ({e}): {bytes:?}")
    });
    (route, status, json)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_committed_server_request_regression_is_answered_in_json() {
    let base = engineless_router().await;
    let client = reqwest::Client::new();
    let names_the_error = |v: &serde_json::Value| {
        v.get("error")
            .and_then(|e| e.as_str())
            .is_some_and(|e| !e.is_empty())
    };
    let inputs = files(&regressions("server_request"));
    assert!(!inputs.is_empty(), "no regression inputs found");
    for file in inputs {
        let (route, status, json) = replay(&client, &base, &std::fs::read(&file).unwrap()).await;
        let name = file.file_name().unwrap().to_string_lossy();
        if status == 200 {
            // Nothing reaches an engine, so a 200 is a batch whose items all failed on their own.
            let items: Vec<&serde_json::Value> = json
                .as_object()
                .into_iter()
                .flat_map(|o| o.values())
                .filter_map(|v| v.as_array())
                .flatten()
                .collect();
            assert!(
                !items.is_empty() && items.iter().all(|v| names_the_error(v)),
                "{name}: {route}: 200 without an engine: {json}"
            );
        } else {
            assert!(
                (400..500).contains(&status) || status == 503,
                "{name}: {route}: status {status}: {json}"
            );
            assert!(names_the_error(&json), "{name}: {route}: {json}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_search_sent_while_no_index_is_served_is_a_404_naming_the_index() {
    // The input the fuzzer reported while the target's set-up ran (a plain /v1/search body).
    let base = engineless_router().await;
    let input =
        std::fs::read(regressions("server_request").join("search-first-input-during-setup.bin"))
            .unwrap();
    let (route, status, json) = replay(&reqwest::Client::new(), &base, &input).await;
    assert_eq!((route, status), ("/v1/search", 404), "{json}");
    assert_eq!(json["error_type"], "not_found", "{json}");
    assert!(
        json["error"]
            .as_str()
            .unwrap()
            .contains("no index is served"),
        "{json}"
    );
}

/// Every folder of fixtures/fuzz-regressions/ (one per fuzz target) is replayed by a crate's
/// `tests/fuzz_regressions.rs`, not only by `scripts/fuzz.sh`.
#[test]
fn every_regression_folder_is_replayed_by_cargo_test() {
    let crates = blip_testkit::repo().join("crates");
    let replays: Vec<(PathBuf, String)> = files(&crates)
        .into_iter()
        .map(|c| c.join("tests/fuzz_regressions.rs"))
        .filter(|f| f.is_file())
        .map(|f| {
            let text = std::fs::read_to_string(&f).unwrap();
            (f, text)
        })
        .collect();
    let folders = files(&blip_testkit::fixture("fuzz-regressions"));
    assert!(!folders.is_empty());
    for folder in folders {
        let target = folder.file_name().unwrap().to_string_lossy().into_owned();
        let call = format!("regressions(\"{target}\")");
        assert!(
            replays.iter().any(|(_, text)| text.contains(&call)),
            "fixtures/fuzz-regressions/{target} is replayed by no crates/*/tests/fuzz_regressions.rs \
             (none calls {call}); found: {:?}",
            replays.iter().map(|(f, _)| f).collect::<Vec<_>>()
        );
    }
}
