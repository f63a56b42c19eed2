//! The real server on a loopback port against hostile and broken clients: connections that send
//! nothing or too slowly, bodies that never arrive or declare too much, encodings, auth spelling,
//! fields of the wrong type, requests that ask for unbounded work, and concurrent index changes.
//! Each case was answered wrongly before (a hang, a 503, a plain-text error, a mixed-up entry).

mod common;

use std::time::{Duration, Instant};

use blip_runtime::request::limits;
use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The tests share the process's metrics recorder and compare graph run counts: one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Reads until the server closes the connection (or `bound` passes): what it sent, and whether it
/// closed.
async fn read_until_closed(stream: &mut TcpStream, bound: Duration) -> (String, bool) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let end = Instant::now() + bound;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => return (String::from_utf8_lossy(&got).into(), false),
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&got).into(), true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// The JSON body of a raw HTTP/1.1 response.
fn json_body(raw: &str) -> serde_json::Value {
    let body = raw.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {raw:?}"))
}

fn status_of(raw: &str) -> u16 {
    raw.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {raw:?}"))
}

fn addr(server: &TestServer) -> String {
    server.base.trim_start_matches("http://").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_and_silent_clients_are_cut_off() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut a = args(&["caption"]);
    a.header_read_timeout = 1.0;
    a.idle_timeout = 1.0;
    a.body_read_timeout = 1.0;
    let server = TestServer::start(a).await;
    // The bound only keeps a broken build from hanging the run; the server must close well before.
    let bound = Duration::from_secs(20);

    // A connection that never sends a byte.
    let mut silent = TcpStream::connect(addr(&server)).await.unwrap();
    let (got, closed) = read_until_closed(&mut silent, bound).await;
    assert!(closed, "a silent connection was kept open");
    assert!(got.is_empty(), "{got:?}");

    // Headers that never complete (slowloris).
    let mut slow = TcpStream::connect(addr(&server)).await.unwrap();
    slow.write_all(b"POST /v1/caption HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n")
        .await
        .unwrap();
    let (_, closed) = read_until_closed(&mut slow, bound).await;
    assert!(closed, "a connection with half its headers was kept open");

    // A body shorter than its Content-Length: 408 in the JSON shape, not a hang.
    let mut short = TcpStream::connect(addr(&server)).await.unwrap();
    short
        .write_all(
            b"POST /v1/caption HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Content-Length: 1000\r\n\r\n{\"images\": [",
        )
        .await
        .unwrap();
    let (got, _) = read_until_closed(&mut short, bound).await;
    assert_eq!(status_of(&got), 408, "{got:?}");
    let body = json_body(&got);
    assert_eq!(body["error_type"], "request_timeout", "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("--body-read-timeout")
    );

    // A kept-alive connection idle after its answer is closed.
    let mut idle = TcpStream::connect(addr(&server)).await.unwrap();
    idle.write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (got, closed) = read_until_closed(&mut idle, bound).await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got:?}");
    assert!(closed, "an idle kept-alive connection was kept open");

    // The server still answers everyone else (a new client: the test client's pooled connection
    // was idle past the timeout too).
    let r = reqwest::Client::new()
        .get(server.url("/health/live"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn declared_lengths_encodings_and_auth_spelling() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut a = args(&["caption"]);
    a.payload_limit = 100_000;
    a.api_key = Some("s3cret".into());
    let server = TestServer::start(a).await;

    // A declared Content-Length over the limit is refused before any of the body is sent.
    let mut big = TcpStream::connect(addr(&server)).await.unwrap();
    big.write_all(
        b"POST /v1/caption HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\n\
          Content-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n",
    )
    .await
    .unwrap();
    let (got, _) = read_until_closed(&mut big, Duration::from_secs(20)).await;
    assert_eq!(status_of(&got), 413, "{got:?}");
    let body = json_body(&got);
    assert_eq!(body["error_type"], "payload_too_large");
    assert!(
        body["error"].as_str().unwrap().contains("--payload-limit"),
        "{body}"
    );

    let img = b64(&test_image(0));
    let caption = |auth: &'static str| {
        let r = server
            .client
            .post(server.url("/v1/caption"))
            .header("authorization", auth)
            .json(&json!({"images": [img.clone()], "beams": 1}));
        async move {
            let r = r.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<serde_json::Value>().await.unwrap())
        }
    };
    // The auth scheme is case-insensitive (RFC 9110 §11.1); the key is not.
    for spelling in ["Bearer s3cret", "bearer s3cret", "BEARER s3cret"] {
        let (status, body) = caption(spelling).await;
        assert_eq!(status, 200, "{spelling}: {body}");
    }
    assert_error(&caption("bearer S3CRET").await, 401, "unauthorized");

    // A compressed body is refused naming its encoding (not "not valid JSON").
    let r = server
        .client
        .post(server.url("/v1/caption"))
        .header("authorization", "Bearer s3cret")
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3])
        .send()
        .await
        .unwrap();
    let got = (
        r.status().as_u16(),
        r.json::<serde_json::Value>().await.unwrap(),
    );
    assert_error_naming(&got, 415, "unsupported_media_type", "gzip");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_error_is_json_and_names_the_field() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut a = args(&["caption", "retrieval", "vqa"]);
    let dir = tempfile::tempdir().unwrap();
    a.index = Some(dir.path().join("i.idx"));
    let server = TestServer::start(a).await;
    let img = b64(&test_image(0));

    // A wrong type names the field and what it must be.
    let got = server
        .post("/v1/caption", json!({"images": [img], "beams": "3"}))
        .await;
    assert_error_naming(&got, 422, "validation", "beams: invalid type: string");
    let got = server
        .post("/v1/search", json!({"text": "x", "k": -1}))
        .await;
    assert_error_naming(&got, 422, "validation", "k: invalid value");

    // A path that is not UTF-8: the router's rejection, in the JSON shape.
    let r = server
        .client
        .get(server.url("/v1/images/%FF%FE"))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let ctype = r.headers()["content-type"].to_str().unwrap().to_string();
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(ctype.starts_with("application/json"), "{ctype}");
    assert_eq!(body["error_type"], "bad_request");

    // A prompt longer than the model's positions is the client's error (422), not a 503, and the
    // answer quotes none of it.
    let long_prompt = "a picture of a very ".repeat(80);
    let got = server
        .post(
            "/v1/caption",
            json!({"images": [img], "prompt": long_prompt}),
        )
        .await;
    assert_error_naming(&got, 422, "validation", "prompt");
    let huge = "z".repeat(900_000);
    let r = server
        .client
        .post(server.url("/v1/caption"))
        .json(&json!({"images": [img], "prompt": huge}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let text = r.text().await.unwrap();
    assert!(text.len() < 600, "the error echoed {} bytes", text.len());
    assert!(text.contains("prompt"), "{text}");
    // A serde error quoting a huge string value is cut too.
    let r = server
        .client
        .post(server.url("/v1/caption"))
        .json(&json!({"images": [img], "beams": "9".repeat(500_000)}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    assert!(r.text().await.unwrap().len() < 600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn work_per_request_is_bounded_before_any_graph_runs() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut a = args(&["retrieval", "vqa"]);
    let dir = tempfile::tempdir().unwrap();
    a.index = Some(dir.path().join("i.idx"));
    let server = TestServer::start(a).await;
    let img = b64(&test_image(1));
    let before = metric(
        &server.metrics().await,
        "blip_graph_duration_seconds_count{graph=\"vision_encoder\"}",
    );

    let answers: Vec<String> = (0..5000).map(|i| format!("answer {i}")).collect();
    let questions: Vec<String> = (0..7).map(|i| format!("what is shape {i}?")).collect();
    let got = server
        .post(
            "/v1/vqa",
            json!({"image": img, "questions": questions, "answers": answers, "k": 1_000_000_000_000u64}),
        )
        .await;
    assert_error_naming(&got, 422, "validation", "answers: 5000 items; at most 4096");
    let got = server
        .post(
            "/v1/vqa",
            json!({"image": img, "questions": questions, "answers": answers[..3], "k": 1_000_000_000_000u64}),
        )
        .await;
    assert_error_naming(&got, 422, "validation", "k: 1000000000000 is out of range");
    let got = server
        .post(
            "/v1/vqa",
            json!({"image": img, "questions": vec!["q?"; 33]}),
        )
        .await;
    assert_error_naming(&got, 422, "validation", "questions: 33 items; at most 32");
    let got = server
        .post(
            "/v1/search",
            json!({"text": "x".repeat(1_900_000), "rerank": 16}),
        )
        .await;
    assert_error_naming(&got, 422, "validation", "text: 1900000 bytes; at most 2048");
    let got = server
        .post(
            "/v1/itm",
            json!({"image": img, "texts": vec!["a shape"; limits::MAX_TEXTS + 1]}),
        )
        .await;
    assert_error_naming(&got, 422, "validation", "texts: 257 items; at most 256");
    let got = server
        .post(
            "/v1/embed",
            json!({"texts": ["fine", "y".repeat(limits::MAX_TEXT_BYTES + 1)]}),
        )
        .await;
    assert_error_naming(&got, 422, "validation", "texts[1]: 2049 bytes");

    // None of them reached the engine.
    let after = metric(
        &server.metrics().await,
        "blip_graph_duration_seconds_count{graph=\"vision_encoder\"}",
    );
    assert_eq!(before, after, "a refused request ran the vision encoder");
    // And the server answers at once afterwards; three questions about one image encode it once.
    let (status, body) = server
        .post(
            "/v1/vqa",
            json!({"image": img, "questions": ["what shape is it?", "what color is it?", "is it big?"]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"].as_array().unwrap().len(), 3);
    let runs = metric(
        &server.metrics().await,
        "blip_graph_duration_seconds_count{graph=\"vision_encoder\"}",
    );
    assert_eq!(
        runs - after,
        1.0,
        "the vision encoder ran {} times",
        runs - after
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_index_changes_keep_each_entry_its_own() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("i.idx");
    let mut a = args(&["retrieval"]);
    a.index = Some(path.clone());
    let server = TestServer::start(a).await;
    let mut model = library_model("retrieval");
    let states: Vec<Vec<f32>> = (0..4).map(|i| library_states(&mut model, i)).collect();

    // Two clients add the same id with different images at once, five rounds: exactly one is
    // acknowledged, and the entry holds that one's image and states.
    for round in 0..5 {
        let id = format!("same-{round}");
        let (i, j) = (round % 4, (round + 1) % 4);
        let add = |k: usize| {
            server.post(
                "/v1/index",
                json!({"images": [{"id": id, "image": b64(&test_image(k))}]}),
            )
        };
        let ((s1, b1), (s2, b2)) = tokio::join!(add(i), add(j));
        assert_eq!((s1, s2), (200, 200), "{b1} {b2}");
        let acked: Vec<usize> = [(i, &b1), (j, &b2)]
            .iter()
            .filter(|(_, b)| b["results"][0]["added"] == true)
            .map(|(k, _)| *k)
            .collect();
        assert_eq!(acked.len(), 1, "{b1} {b2}");
        let (kept, other) = if acked[0] == i { (i, j) } else { (j, i) };
        let idx = blip_index::Index::read(&path).unwrap();
        let row = idx.position(&id).expect("acknowledged id is in the index");
        let stored = idx.read_states(&path, &[row]).unwrap();
        let own = max_abs_diff(&stored, &states[kept]);
        let foreign = max_abs_diff(&stored, &states[other]);
        assert!(
            own < 0.05 && own * 10.0 < foreign,
            "round {round}: stored states are {own} from the acknowledged image's, {foreign} from the refused one's"
        );
        let bytes = server
            .client
            .get(server.url(&format!("/v1/images/{id}")))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(bytes.as_ref(), std::fs::read(test_image(kept)).unwrap());
    }

    // Reranked searches while other clients add and delete: none fails.
    let writers = (0..2).map(|w| {
        let server = &server;
        async move {
            for n in 0..12 {
                let id = format!("churn-{w}-{}", n % 3);
                let (s, b) = server
                    .post(
                        "/v1/index",
                        json!({"images": [{"id": id, "image": b64(&test_image(n % 4))}]}),
                    )
                    .await;
                assert_eq!(s, 200, "{b}");
                assert_eq!(b["results"][0]["added"], true, "{b}");
                let r = server
                    .client
                    .delete(server.url(&format!("/v1/index/{id}")))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
            }
        }
    });
    let readers = (0..2).map(|_| {
        let server = &server;
        async move {
            let mut answered = 0;
            for _ in 0..15 {
                let (s, b) = server
                    .post(
                        "/v1/search",
                        json!({"text": "a purple triangle", "rerank": 16}),
                    )
                    .await;
                assert_eq!(s, 200, "a search during index changes failed: {b}");
                answered += 1;
            }
            answered
        }
    });
    let (_, answered) = tokio::join!(
        futures_all(writers.collect()),
        futures_all(readers.collect())
    );
    assert_eq!(answered, vec![15, 15]);
    let idx = blip_index::Index::read(&path).unwrap();
    assert_eq!(idx.len(), 5, "the five same-id entries, no churn left");
    // The churn's files were swept even though searches held older versions meanwhile: after one
    // more change with no reader left, the states folder holds exactly the entries' files.
    let (s, b) = server
        .post(
            "/v1/index",
            json!({"images": [{"id": "last", "image": b64(&test_image(0))}]}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let idx = blip_index::Index::read(&path).unwrap();
    // States live in the index's database: a delete takes its entry's row with it.
    let states = blip_index::Store::open_entries(&path)
        .unwrap()
        .state_rows()
        .unwrap();
    assert_eq!(
        states,
        idx.len(),
        "state rows left behind: {states} for {} entries",
        idx.len()
    );
}

/// Runs futures concurrently and collects their outputs in order.
async fn futures_all<F: std::future::Future>(fs: Vec<F>) -> Vec<F::Output> {
    let handles: Vec<_> = fs.into_iter().map(Box::pin).collect();
    let mut out = Vec::with_capacity(handles.len());
    let mut pending: Vec<_> = handles.into_iter().map(Some).collect();
    let mut results: Vec<Option<F::Output>> = (0..pending.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for (i, slot) in pending.iter_mut().enumerate() {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => {
                        results[i] = Some(v);
                        *slot = None;
                    }
                    std::task::Poll::Pending => done = false,
                }
            }
        }
        if done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    for r in results {
        out.extend(r);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn work_that_cannot_finish_by_its_deadline_is_refused_at_once() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut a = args(&["caption"]);
    a.request_timeout = 2.0;
    a.max_batch_images = 4;
    let server = TestServer::start(a).await;
    let body =
        json!({"images": [b64(&test_image(2))], "beams": 8, "max_length": 40, "min_length": 40});
    // One request alone teaches the engine what such a caption costs.
    let alone = Instant::now();
    let (status, first) = server.post("/v1/caption", body.clone()).await;
    assert_eq!(status, 200, "{first}");
    // Enough requests that, even if batches of 4 cost no more than one alone, their work is 4x
    // the deadline on this machine at its speed today: a fixed count was not always more work than
    // the deadline (48 took 1.5 s in one run, against the 2 s deadline).
    let per_batch = alone.elapsed().as_secs_f64();
    let n = ((4.0 * 2.0 / per_batch).ceil() as usize * 4).clamp(48, 400);
    let started = Instant::now();
    let calls: Vec<_> = (0..n)
        .map(|_| {
            let client = server.client.clone();
            let url = server.url("/v1/caption");
            let body = body.clone();
            tokio::spawn(async move {
                let r = client.post(url).json(&body).send().await.unwrap();
                let status = r.status().as_u16();
                let retry = r
                    .headers()
                    .get("retry-after")
                    .map(|v| v.to_str().unwrap().to_string());
                let v: serde_json::Value = r.json().await.unwrap();
                (status, retry, v)
            })
        })
        .collect();
    let (mut ok, mut refused, mut late) = (0, 0, 0);
    for c in calls {
        let (status, retry, v) = c.await.unwrap();
        match status {
            200 => {
                ok += 1;
                assert_eq!(v["results"][0]["caption"], first["results"][0]["caption"]);
            }
            429 => {
                refused += 1;
                assert_eq!(v["error_type"], "overloaded", "{v}");
                assert!(retry.is_some(), "429 without Retry-After");
                if v["error"].as_str().unwrap().contains("--request-timeout") {
                    late += 1;
                }
            }
            other => panic!("status {other}: {v}"),
        }
    }
    eprintln!(
        "{n} requests (one alone took {per_batch:.3} s) in {:.1} s: {ok} answered, {refused} refused ({late} by deadline)",
        started.elapsed().as_secs_f64()
    );
    assert!(ok >= 1, "none answered");
    assert!(late >= 1, "nothing was refused for its deadline");
    assert_eq!(ok + refused, n);
}
