//! The HTTP door of the request layer: every row of the shared option table
//! (fixtures/requests/caption-options.json, which the CLI, Python and the browser tests read too)
//! is answered 422 naming its field (`top_p: …`), and every good row captions token for token as
//! the library does with the same request resolved.

mod common;

use blip_runtime::ImageInput;
use blip_runtime::request::{CaptionRequest, ModelLimits};
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_shared_option_table_through_the_server() {
    let server = TestServer::start(args(&["caption"])).await;
    let text = std::fs::read_to_string(fixture("requests/caption-options.json")).unwrap();
    let table: serde_json::Value = serde_json::from_str(&text).unwrap();
    let image = test_image(3);
    let body = |options: &serde_json::Value| {
        let mut b = options.clone();
        b["images"] = serde_json::json!([b64(&image)]);
        b
    };

    for row in table["bad"].as_array().unwrap() {
        let got = server.post("/v1/caption", body(&row["options"])).await;
        let field = format!("{}:", row["field"].as_str().unwrap());
        assert_error(&got, 422, "validation");
        let message = got.1["error"].as_str().unwrap();
        assert!(message.starts_with(&field), "{row}: {message}");
    }

    let mut model = library_model("caption");
    for options in table["good"].as_array().unwrap() {
        let (status, got) = server.post("/v1/caption", body(options)).await;
        assert_eq!(status, 200, "{options}: {got}");
        let request: CaptionRequest = serde_json::from_value(options.clone()).unwrap();
        let opts = request.resolve(ModelLimits::of(&model.package)).unwrap();
        let want = model
            .caption(&[ImageInput::Path(image.clone())], &opts)
            .unwrap()
            .remove(0)
            .unwrap();
        assert_eq!(
            got["results"][0]["tokens"],
            serde_json::json!(want.ids),
            "{options}"
        );
        assert_eq!(got["results"][0]["caption"], want.text.as_str());
    }
}

/// A refusal naming `field` first: 422 `validation`, or 400 `empty_input` where the request gives
/// nothing to work on.
fn assert_refused(got: &(u16, serde_json::Value), row: &serde_json::Value) {
    let field = format!("{}:", row["field"].as_str().unwrap());
    assert!(
        matches!(
            (got.0, got.1["error_type"].as_str()),
            (422, Some("validation")) | (400, Some("empty_input"))
        ),
        "{row}: {got:?}"
    );
    let message = got.1["error"].as_str().unwrap();
    assert!(message.starts_with(&field), "{row}: {message}");
}

fn close(a: &serde_json::Value, b: f32) -> bool {
    (a.as_f64().unwrap() - f64::from(b)).abs() < 1e-4
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_shared_task_table_through_the_server() {
    use blip_runtime::request::{SearchRequest, VqaMode, VqaRequest};

    let dir = tempfile::tempdir().unwrap();
    let index = dir.path().join("shapes.idx");
    let mut a = args(&["retrieval", "vqa"]);
    a.index = Some(index.clone());
    let server = TestServer::start(a).await;
    let table = blip_testkit::task_options();
    let image = test_image(1);

    // VQA: bad rows refused naming the field, good rows answer as the library.
    let vqa_body = |request: &serde_json::Value| {
        let mut b = request.clone();
        b["image"] = serde_json::json!(b64(&image));
        b
    };
    for row in table["vqa"]["bad"].as_array().unwrap() {
        let got = server.post("/v1/vqa", vqa_body(&row["request"])).await;
        assert_refused(&got, row);
    }
    let mut vqa = library_model("vqa");
    for request in table["vqa"]["good"].as_array().unwrap() {
        let (status, got) = server.post("/v1/vqa", vqa_body(request)).await;
        assert_eq!(status, 200, "{request}: {got}");
        let req: VqaRequest = serde_json::from_value(request.clone()).unwrap();
        let qs: Vec<&str> = req.questions.iter().map(String::as_str).collect();
        let images = vec![ImageInput::Path(image.clone()); qs.len()];
        let results = got["results"].as_array().unwrap();
        assert_eq!(results.len(), qs.len(), "{request}");
        match req.resolve().unwrap() {
            VqaMode::Generate(opts) => {
                for (got, want) in results.iter().zip(vqa.answer(&images, &qs, &opts).unwrap()) {
                    assert_eq!(got["answer"], want.text.as_str(), "{request}");
                }
            }
            VqaMode::Rank { answers, k } => {
                let list: Vec<&str> = answers.iter().map(String::as_str).collect();
                let max = vqa.package.manifest.tokens.max_text_tokens;
                let ranked = vqa.rank_answers(&images, &qs, &list, k, max).unwrap();
                for (got, want) in results.iter().zip(ranked) {
                    assert_eq!(got["answer"], list[want.best], "{request}");
                    let cands = got["candidates"].as_array().unwrap();
                    assert_eq!(cands.len(), want.candidates.len(), "{request}");
                    for (c, (i, score)) in cands.iter().zip(&want.candidates) {
                        assert_eq!(c["answer"], list[*i], "{request}");
                        assert!(close(&c["score"], *score), "{request}: {c} vs {score}");
                    }
                }
            }
        }
    }

    // ITM: the text-list rules.
    let itm_body = |request: &serde_json::Value| {
        let mut b = request.clone();
        b["image"] = serde_json::json!(b64(&image));
        b
    };
    for row in table["itm"]["bad"].as_array().unwrap() {
        let got = server.post("/v1/itm", itm_body(&row["request"])).await;
        assert_refused(&got, row);
    }

    // Search over shapes test images 0-5, as the library ranks the server's own index.
    let images: Vec<_> = (0..6)
        .map(
            |i| serde_json::json!({"id": format!("test_{i:05}.png"), "image": b64(&test_image(i))}),
        )
        .collect();
    let (status, body) = server
        .post("/v1/index", serde_json::json!({"images": images}))
        .await;
    assert_eq!(status, 200, "{body}");
    for row in table["search"]["bad"].as_array().unwrap() {
        let got = server.post("/v1/search", row["request"].clone()).await;
        assert_refused(&got, row);
    }
    let idx = blip_index::Index::read(&index).unwrap();
    let mut retrieval = library_model("retrieval");
    for request in table["search"]["good"].as_array().unwrap() {
        let (status, got) = server.post("/v1/search", request.clone()).await;
        assert_eq!(status, 200, "{request}: {got}");
        let req: SearchRequest = serde_json::from_value(request.clone()).unwrap();
        let opts = req.resolve().unwrap();
        let want = blip_runtime::ready(blip_index::rank(
            &mut retrieval,
            &idx,
            &index,
            &req.text,
            opts.rerank,
        ))
        .unwrap();
        let hits = got["hits"].as_array().unwrap();
        assert_eq!(hits.len(), opts.k.min(want.len()), "{request}: {got}");
        for (h, w) in hits.iter().zip(&want) {
            assert_eq!(
                h["id"],
                idx.entries()[w.index].id.as_str(),
                "{request}: {got}"
            );
            assert!(close(&h["score"], w.score), "{request}: {h}");
        }
    }
}
