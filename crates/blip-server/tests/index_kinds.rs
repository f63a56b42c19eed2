//! `serve --rerank-states f16|int8|none`, through the real server. Its own test binary: the
//! vision-encoder runs it counts come from the process-wide metrics recorder, which the other
//! tests' servers would share.

mod common;

use common::*;
use serde_json::json;

/// An index made with `--rerank-states none` (as `index --from-parquet` makes) takes adds, and
/// its reranked search encodes the candidates' stored images: the same ranking as f16 states
/// within f16's rounding, with vision runs at query time. `int8` takes adds and ranks the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn indexes_without_or_with_int8_states_take_adds_and_rerank() {
    let dir = tempfile::tempdir().unwrap();
    let mut results = Vec::new();
    for kind in ["f16", "int8", "none"] {
        let mut a = args(&["retrieval"]);
        a.index = Some(dir.path().join(format!("{kind}.idx")));
        a.rerank_states = kind.parse().unwrap();
        let server = TestServer::start(a).await;
        let images: Vec<_> = (0..6)
            .map(|i| json!({"id": format!("img{i}"), "image": b64(&test_image(i))}))
            .collect();
        let (status, body) = server.post("/v1/index", json!({"images": images})).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["images"], 6, "{kind}: {body}");
        let (_, before) = server.get("/metrics").await;
        let (status, body) = server
            .post(
                "/v1/search",
                json!({"text": "a purple triangle", "k": 6, "rerank": 4}),
            )
            .await;
        assert_eq!(status, 200, "{kind}: {body}");
        let (_, after) = server.get("/metrics").await;
        let runs = |m: &str| {
            sample(
                m,
                "blip_graph_duration_seconds_count{graph=\"vision_encoder\"}",
            )
            .unwrap_or(0.0)
        };
        let vision_runs = runs(&after) - runs(&before);
        assert_eq!(
            vision_runs > 0.0,
            kind == "none",
            "{kind}: {vision_runs} vision runs"
        );
        let (_, info) = server.get("/info").await;
        let info: serde_json::Value = serde_json::from_str(&info).unwrap();
        assert_eq!(info["index"]["rerank_states"], kind);
        results.push(body["hits"].as_array().unwrap().clone());
    }
    for (kind, hits) in ["int8", "none"].iter().zip(&results[1..]) {
        for (h, f) in hits.iter().zip(&results[0]) {
            assert_eq!(h["id"], f["id"], "{kind}: {hits:?}");
            let (a, b) = (h["score"].as_f64().unwrap(), f["score"].as_f64().unwrap());
            assert!((a - b).abs() < 0.1, "{kind}: score {a} vs f16 {b}");
        }
    }
}
