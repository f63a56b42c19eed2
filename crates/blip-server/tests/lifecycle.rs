//! Admission, deadlines, disconnects, the API key, readiness and graceful shutdown, on the real
//! server. The tests here share the process's metrics recorder, so they run one at a time.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use tokio::io::AsyncWriteExt;

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Polls /metrics until `line` reaches `value` (the server's own state, not a timing).
async fn until_metric(server: &TestServer, line: &str, value: f64) {
    for _ in 0..400 {
        if metric(&server.metrics().await, line) == value {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{line} never reached {value}:\n{}", server.metrics().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overload_answers_429_with_retry_after_at_once() {
    let _g = ONE_AT_A_TIME.lock().await;
    let mut a = args(&["caption"]);
    a.max_queue = 1;
    // The admitted request waits in the batcher for company, so the others find the queue full.
    a.max_batch_wait_ms = 1000;
    let server = TestServer::start(a).await;
    let body = json!({"images": [b64(&test_image(0))], "beams": 1});
    let calls: Vec<_> = (0..20)
        .map(|_| {
            let client = server.client.clone();
            let url = server.url("/v1/caption");
            let body = body.clone();
            tokio::spawn(async move {
                let r = client.post(url).json(&body).send().await.unwrap();
                let retry = r
                    .headers()
                    .get("retry-after")
                    .map(|v| v.to_str().unwrap().to_string());
                let status = r.status().as_u16();
                let v: serde_json::Value = r.json().await.unwrap();
                (status, retry, v)
            })
        })
        .collect();
    let mut ok = 0;
    let mut rejected = 0;
    for c in calls {
        let (status, retry, v) = c.await.unwrap();
        match status {
            200 => ok += 1,
            429 => {
                rejected += 1;
                assert_eq!(v["error_type"], "overloaded");
                assert_eq!(retry.as_deref(), Some("1"));
            }
            other => panic!("status {other}: {v}"),
        }
    }
    assert!(
        ok >= 1 && rejected >= 1,
        "{ok} answered, {rejected} refused"
    );
    assert_eq!(ok + rejected, 20);
    let m = server.metrics().await;
    assert!(
        metric(
            &m,
            "blip_request_count{route=\"/v1/caption\",status=\"429\"}"
        ) >= rejected as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_past_its_deadline_is_answered_504() {
    let _g = ONE_AT_A_TIME.lock().await;
    let mut a = args(&["caption"]);
    a.request_timeout = 0.05;
    a.max_batch_wait_ms = 1000;
    let server = TestServer::start(a).await;
    // The vision encoder's runs: a series the start-up probe created, so a renamed metric or
    // label fails here instead of comparing 0 with 0.
    let before = series(&server.metrics().await, VISION_RUNS);
    let got = server
        .post("/v1/caption", json!({"images": [b64(&test_image(0))]}))
        .await;
    assert_error(&got, 504, "deadline");
    // The expired entry is dropped from the queue, not run.
    until_metric(
        &server,
        "blip_dropped_requests_total{reason=\"deadline\"}",
        1.0,
    )
    .await;
    let after = series(&server.metrics().await, VISION_RUNS);
    assert_eq!(before, after, "the expired request ran the vision encoder");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_disconnected_request_is_dropped_before_inference_and_counted() {
    let _g = ONE_AT_A_TIME.lock().await;
    let mut a = args(&["caption"]);
    a.max_batch_wait_ms = 3000;
    let server = TestServer::start(a).await;
    let before = series(&server.metrics().await, VISION_RUNS);
    let dropped = "blip_dropped_requests_total{reason=\"disconnected\"}";
    let dropped_before = metric(&server.metrics().await, dropped);
    let body = serde_json::to_vec(&json!({"images": [b64(&test_image(0))]})).unwrap();
    let addr = server.running.as_ref().unwrap().addr;
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/caption HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(&body).await.unwrap();
    until_metric(&server, "blip_queue_size", 1.0).await;
    drop(conn);
    until_metric(&server, dropped, dropped_before + 1.0).await;
    assert_eq!(
        series(&server.metrics().await, VISION_RUNS),
        before,
        "the dropped request ran the vision encoder"
    );
    // The server still answers.
    let got = server
        .post(
            "/v1/caption",
            json!({"images": [b64(&test_image(0))], "beams": 1}),
        )
        .await;
    assert_eq!(got.0, 200, "{}", got.1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_api_key_guards_v1_only() {
    let _g = ONE_AT_A_TIME.lock().await;
    let mut a = args(&["caption"]);
    a.api_key = Some("s3cret".into());
    let server = TestServer::start(a).await;
    let body = json!({"images": [b64(&test_image(0))], "beams": 1});
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("s3cret"),
        Some("Bearer s3cret0"),
    ] {
        let mut req = server.client.post(server.url("/v1/caption")).json(&body);
        if let Some(h) = auth {
            req = req.header("authorization", h);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 401, "{auth:?}");
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["error_type"], "unauthorized");
    }
    let r = server
        .client
        .post(server.url("/v1/caption"))
        .header("authorization", "Bearer s3cret")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for open in [
        "/health/live",
        "/health/ready",
        "/metrics",
        "/info",
        "/openapi.json",
        "/",
    ] {
        assert_eq!(server.get(open).await.0, 200, "{open}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_package_that_fails_to_load_keeps_the_server_up_and_not_ready() {
    let _g = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("caption");
    let src = package("caption");
    std::fs::create_dir(&broken).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, broken.join(p.file_name().unwrap())).unwrap();
    }
    std::fs::write(broken.join("decoder.onnx"), b"not a graph").unwrap();
    // The manifest vouches for the broken file (its checksum matches), so the package opens and
    // the failure comes from loading the graph.
    let manifest_path = broken.join("blip.json");
    let mut manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest_path).unwrap()).unwrap();
    let decoder = broken.join("decoder.onnx");
    manifest["graphs"]["decoder"]["sha256"] =
        blip_package::sha256_files(std::slice::from_ref(&decoder))
            .unwrap()
            .into();
    manifest["graphs"]["decoder"]["bytes"] = 11.into();
    std::fs::write(&manifest_path, manifest.to_string()).unwrap();
    let mut a = args(&["caption"]);
    a.packages = vec![broken];
    let running = blip_server::start(a).await.unwrap();
    let base = format!("http://{}", running.addr);
    let client = reqwest::Client::new();
    assert_eq!(
        client
            .get(format!("{base}/health/live"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let mut last = None;
    for _ in 0..400 {
        let r = client
            .get(format!("{base}/health/ready"))
            .send()
            .await
            .unwrap();
        let v: serde_json::Value = r.json().await.unwrap();
        if v["error"].as_str().is_some_and(|e| e.contains("decoder")) {
            last = Some(v);
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let v = last.expect("readiness names the failed graph");
    assert_eq!(v["error_type"], "not_ready");
    let r = client
        .post(format!("{base}/v1/caption"))
        .json(&json!({"images": [b64(&test_image(0))]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    running.shutdown();
    running.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_finishes_in_flight_requests_and_stops_accepting() {
    let _g = ONE_AT_A_TIME.lock().await;
    let mut a = args(&["caption"]);
    a.max_batch_wait_ms = 1500;
    a.shutdown_grace = 60.0;
    let mut server = TestServer::start(a).await;
    let addr = server.running.as_ref().unwrap().addr;
    let client = server.client.clone();
    let url = server.url("/v1/caption");
    let body = json!({"images": [b64(&test_image(0))], "beams": 1});
    let in_flight = tokio::spawn(async move {
        let r = client.post(url).json(&body).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json::<serde_json::Value>().await.unwrap())
    });
    until_metric(&server, "blip_queue_size", 1.0).await;
    let running = server.running.take().unwrap();
    running.shutdown();
    let (status, v) = in_flight.await.unwrap();
    assert_eq!(status, 200, "{v}");
    assert!(v["results"][0]["caption"].is_string());
    running.wait().await.unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_captions_share_a_batch_and_settings_are_never_mixed() {
    let _g = ONE_AT_A_TIME.lock().await;
    let mut a = args(&["caption"]);
    a.scheduler = blip_server::engine::SchedulerKind::Request;
    // The batch runs when it holds 3 images (long before the wait is over).
    a.max_batch_images = 3;
    a.max_batch_wait_ms = 60_000;
    let server = TestServer::start(a).await;
    let sum = "blip_batch_requests_sum{head=\"caption\",task=\"caption\"}";
    let count = "blip_batch_requests_count{head=\"caption\",task=\"caption\"}";
    let two = "blip_batch_requests_bucket{head=\"caption\",task=\"caption\",le=\"2\"}";
    let one = "blip_batch_requests_bucket{head=\"caption\",task=\"caption\",le=\"1\"}";
    let m = server.metrics().await;
    let (sum0, count0) = (metric(&m, sum), metric(&m, count));
    let pairs0 = metric(&m, two) - metric(&m, one);
    let mut model = blip_runtime::BlipModel::open(
        &package("caption"),
        &blip_runtime::SessionOptions {
            intra_threads: 2,
            ..Default::default()
        },
    )
    .unwrap();
    // Two beam-search requests and one greedy one, at once.
    let settings = [json!({}), json!({}), json!({"beams": 1})];
    let calls: Vec<_> = settings
        .iter()
        .enumerate()
        .map(|(i, extra)| {
            let client = server.client.clone();
            let url = server.url("/v1/caption");
            let mut body = extra.clone();
            body["images"] = json!([b64(&test_image(i + 10))]);
            tokio::spawn(async move {
                let r = client.post(url).json(&body).send().await.unwrap();
                (
                    r.status().as_u16(),
                    r.json::<serde_json::Value>().await.unwrap(),
                )
            })
        })
        .collect();
    for (i, c) in calls.into_iter().enumerate() {
        let (status, body) = c.await.unwrap();
        assert_eq!(status, 200, "{body}");
        let opts = if i == 2 {
            blip_runtime::CaptionOptions {
                strategy: blip_runtime::Strategy::Greedy,
                ..Default::default()
            }
        } else {
            blip_runtime::CaptionOptions::default()
        };
        let input = blip_runtime::ImageInput::Path(test_image(i + 10));
        let want = model.caption(&[input], &opts).unwrap().remove(0).unwrap();
        assert_eq!(body["results"][0]["tokens"], json!(want.ids), "request {i}");
    }
    // One batch of three requests, split into two decode runs: the two beam requests together,
    // the greedy one alone.
    let m = server.metrics().await;
    assert_eq!(metric(&m, count) - count0, 2.0, "{m}");
    assert_eq!(metric(&m, sum) - sum0, 3.0, "{m}");
    assert_eq!(
        metric(&m, two) - metric(&m, one) - pairs0,
        1.0,
        "one decode run of two requests: {m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn continuous_batching_decodes_different_settings_in_one_running_batch() {
    let _g = ONE_AT_A_TIME.lock().await;
    let mut a = args(&["caption"]);
    a.scheduler = blip_server::engine::SchedulerKind::Iteration;
    a.max_batch_images = 1;
    a.max_batch_wait_ms = 0;
    let server = TestServer::start(a).await;
    let steps = "blip_batch_requests_count{head=\"caption\",task=\"decode_step\"}";
    let lone = "blip_batch_requests_bucket{head=\"caption\",task=\"decode_step\",le=\"1\"}";
    let m = server.metrics().await;
    let (steps0, lone0) = (metric(&m, steps), metric(&m, lone));
    let mut model = blip_runtime::BlipModel::open(
        &package("caption"),
        &blip_runtime::SessionOptions {
            intra_threads: 2,
            ..Default::default()
        },
    )
    .unwrap();
    // Beam 3, greedy, seeded sampling and beam 2 with a repetition penalty, all at once: each
    // joins the running batch as it arrives.
    let settings = [
        json!({}),
        json!({"beams": 1}),
        json!({"sample": true, "top_p": 0.9, "top_k": 20, "temperature": 0.9, "seed": 7}),
        json!({"beams": 2, "repetition_penalty": 1.3}),
    ];
    let calls: Vec<_> = settings
        .iter()
        .enumerate()
        .map(|(i, extra)| {
            let client = server.client.clone();
            let url = server.url("/v1/caption");
            let mut body = extra.clone();
            body["images"] = json!([b64(&test_image(i + 20))]);
            tokio::spawn(async move {
                let r = client.post(url).json(&body).send().await.unwrap();
                (
                    r.status().as_u16(),
                    r.json::<serde_json::Value>().await.unwrap(),
                )
            })
        })
        .collect();
    let strategies = [
        blip_runtime::CaptionOptions::default().strategy,
        blip_runtime::Strategy::Greedy,
        blip_runtime::Strategy::Sample {
            temperature: 0.9,
            top_k: 20,
            top_p: 0.9,
            seed: 7,
        },
        blip_runtime::Strategy::Beam {
            num_beams: 2,
            length_penalty: 1.0,
            early_stopping: false,
        },
    ];
    for (i, c) in calls.into_iter().enumerate() {
        let (status, body) = c.await.unwrap();
        assert_eq!(status, 200, "{body}");
        let opts = blip_runtime::CaptionOptions {
            strategy: strategies[i].clone(),
            repetition_penalty: if i == 3 { 1.3 } else { 1.0 },
            ..Default::default()
        };
        let input = blip_runtime::ImageInput::Path(test_image(i + 20));
        let want = model.caption(&[input], &opts).unwrap().remove(0).unwrap();
        assert_eq!(body["results"][0]["tokens"], json!(want.ids), "request {i}");
    }
    // Decode steps ran, and some of them carried more than one request.
    let m = server.metrics().await;
    let ran = metric(&m, steps) - steps0;
    let alone = metric(&m, lone) - lone0;
    assert!(ran > 0.0, "no decode step was counted: {m}");
    assert!(alone < ran, "every decode step held a single request: {m}");
}
