//! `blip_generated_tokens_total` counts the tokens generated after the prompt (the server takes
//! the prompt's length from its route check, not from a second tokenization). Its own test
//! binary: the metrics recorder is process-wide.

mod common;

use blip_runtime::{CaptionOptions, ImageInput, Strategy};
use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn generated_tokens_are_the_captions_tokens_after_the_prompt() {
    let server = TestServer::start(args(&["caption"])).await;
    let prompt = "a picture of";
    let images: Vec<String> = (0..2).map(|i| b64(&test_image(i))).collect();
    let (status, body) = server
        .post(
            "/v1/caption",
            json!({"images": images, "prompt": prompt, "beams": 1, "max_length": 20}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let counted = metric(
        &server.metrics().await,
        "blip_generated_tokens_total{head=\"caption\"}",
    );

    let mut model = library_model("caption");
    let opts = CaptionOptions {
        prompt: prompt.into(),
        strategy: Strategy::Greedy,
        max_length: 20,
        ..Default::default()
    };
    let prompt_len = model.tokenizer.prompt_ids(prompt).unwrap().len();
    let inputs: Vec<ImageInput> = (0..2).map(|i| ImageInput::Path(test_image(i))).collect();
    let want: usize = model
        .caption(&inputs, &opts)
        .unwrap()
        .into_iter()
        .map(|c| c.unwrap().ids.len() - prompt_len)
        .sum();
    assert!(prompt_len > 2 && want > 0);
    assert_eq!(counted as usize, want, "{body}");
}
