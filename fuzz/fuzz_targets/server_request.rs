//! Request bodies → the server's router (every /v1 task route, JSON and multipart), over packages
//! converted from the tiny fixtures and no engine: whatever the body, the answer is a JSON error
//! with a 4xx status, the 503 that a request with a valid item gets when no engine runs, or a 200
//! whose every item carries its own error — never a panic or a 500. Input: byte 0 picks the
//! route, byte 1 the content type, the rest is the body.
#![no_main]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use blip_server::ServeArgs;
use blip_server::state::AppState;
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

const ROUTES: [&str; 6] = [
    "/v1/caption",
    "/v1/embed",
    "/v1/itm",
    "/v1/vqa",
    "/v1/search",
    "/v1/index",
];
const BOUNDARY: &str = "fuzzboundary";

struct Server {
    runtime: tokio::runtime::Runtime,
    router: Router,
}

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/models");
        let out = blip_onnx_fuzz::scratch_dir("packages");
        let packages: Vec<PathBuf> = ["caption", "retrieval", "vqa"]
            .iter()
            .map(|head| {
                let dir = out.join(head);
                if !dir.join(blip_package::MANIFEST_FILE).is_file() {
                    blip_convert::convert(
                        &root.join(format!("tiny-{head}")),
                        &dir,
                        &blip_convert::ConvertOptions::default(),
                    )
                    .expect("converting a fixture model");
                }
                dir
            })
            .collect();
        let args = ServeArgs::new(packages).expect("serve arguments");
        let metrics = blip_server::metrics::install().expect("metrics recorder");
        let state = Arc::new(AppState::new(&args, metrics).expect("server state"));
        // Ready without an engine: requests get as far as the engine, which answers 503.
        state.set_ready(true);
        let router = blip_server::routes::router(state, &args);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        Server { runtime, router }
    })
}

fuzz_target!(
    // The one-time set-up (converting three packages, under ASan) runs before the first input, so
    // it does not count against that input's -timeout: on a busy machine it once took over 60 s and
    // was reported as a timeout of the first request.
    init: {
        server();
    },
    |data: &[u8]| {
    let [route, kind, body @ ..] = data else {
        return;
    };
    let route = ROUTES[*route as usize % ROUTES.len()];
    let content_type = match kind % 4 {
        0 => "application/json".to_string(),
        1 => format!("multipart/form-data; boundary={BOUNDARY}"),
        2 => "text/plain".to_string(),
        _ => String::new(),
    };
    let mut req = Request::post(route);
    if !content_type.is_empty() {
        req = req.header("content-type", content_type);
    }
    let req = req
        .body(Body::from(body.to_vec()))
        .expect("a request from fixed parts");
    let s = server();
    let response = s
        .runtime
        .block_on(s.router.clone().oneshot(req))
        .expect("the router is infallible");
    let status = response.status();
    let bytes = s
        .runtime
        .block_on(axum::body::to_bytes(response.into_body(), usize::MAX))
        .expect("the response body");
    let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!("{route}: status {status}: the body is not JSON ({e}): {bytes:?}")
    });
    let names_the_error = |v: &serde_json::Value| {
        v.get("error")
            .and_then(|e| e.as_str())
            .is_some_and(|e| !e.is_empty())
    };
    if status.as_u16() == 200 {
        // Nothing reached an engine, so a 200 is a batch whose items all failed on their own.
        // (The item lists are `results`, or `images` and `texts` for /v1/embed.)
        let items: Vec<&serde_json::Value> = json
            .as_object()
            .into_iter()
            .flat_map(|o| o.values())
            .filter_map(|v| v.as_array())
            .flatten()
            .collect();
        assert!(
            !items.is_empty() && items.iter().all(|v| names_the_error(v)),
            "{route}: 200 without an engine: {json}"
        );
    } else {
        assert!(
            status.is_client_error() || status.as_u16() == 503,
            "{route}: status {status}: {json}"
        );
        assert!(names_the_error(&json), "{route}: {json}");
    }
});
