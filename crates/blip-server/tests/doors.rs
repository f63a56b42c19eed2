//! The HTTP door of the request layer: every row of the shared option table
//! (fixtures/requests/caption-options.json, which the CLI, Python and the browser tests read too)
//! is answered 422 naming its field (`top_p: …`), and every good row captions token for token as
//! the library does with the same request resolved.

mod common;

use blip_runtime::request::{CaptionRequest, ModelLimits};
use blip_runtime::{BlipModel, ImageInput, SessionOptions};
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

    let mut model = BlipModel::open(
        &package("caption"),
        &SessionOptions {
            intra_threads: 1,
            ..Default::default()
        },
    )
    .unwrap();
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
