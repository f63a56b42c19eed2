//! `blip-onnx batch`: an OpenAI Batch API file answered offline. Every line gets one result line,
//! in input order; a caption line equals `blip-onnx caption`, a question line `blip-onnx vqa`; a
//! line that is not JSON, names another route, asks to stream or carries a bad option gets its
//! error (naming the line or the field) while the others are answered; nothing is written when
//! the packages cannot be loaded.

use crate::common;

use common::{blip, shapes_package};

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use base64::Engine as _;
use serde_json::{Value, json};

fn packages() -> &'static [PathBuf; 2] {
    static PACKAGES: OnceLock<[PathBuf; 2]> = OnceLock::new();
    PACKAGES.get_or_init(|| {
        ["caption", "vqa"].map(|head| shapes_package(head, &format!("batch-shapes-{head}")))
    })
}

fn image() -> PathBuf {
    blip_testkit::fixture("shapes/test/images/test_00001.png")
}

fn data_uri(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap();
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

fn line(id: &str, body: Value) -> String {
    json!({"custom_id": id, "method": "POST", "url": "/v1/chat/completions", "body": body})
        .to_string()
}

fn content(text: Option<&str>) -> Value {
    let mut parts = vec![json!({"type": "image_url", "image_url": {"url": data_uri(&image())}})];
    if let Some(t) = text {
        parts.push(json!({"type": "text", "text": t}));
    }
    json!([{"role": "user", "content": parts}])
}

#[test]
fn lines_are_answered_in_order_and_bad_lines_alone_fail() {
    let [caption, vqa] = packages();
    let model = caption.file_name().unwrap().to_str().unwrap().to_string();
    let question = "what color is the shape?";
    let input = [
        line("cap", json!({"model": model, "messages": content(None)})),
        line(
            "ask",
            json!({"model": model, "messages": content(Some(question))}),
        ),
        "{not json".to_string(),
        line(
            "bad-temp",
            json!({"model": model, "messages": content(None), "temperature": -1}),
        ),
        json!({"custom_id": "emb", "method": "POST", "url": "/v1/embeddings", "body": {}})
            .to_string(),
        String::new(),
        line(
            "stream",
            json!({"model": model, "messages": content(None), "stream": true}),
        ),
        line(
            "greedy",
            json!({"model": model, "messages": content(None), "temperature": 0, "max_tokens": 2}),
        ),
    ]
    .join("\n");
    let dir = tempfile::tempdir().unwrap();
    let requests = dir.path().join("requests.jsonl");
    std::fs::write(&requests, input).unwrap();
    let results = dir.path().join("results.jsonl");
    let (code, _, stderr) = blip(&[
        "batch",
        "--package",
        caption.to_str().unwrap(),
        "--package",
        vqa.to_str().unwrap(),
        "--threads",
        "1",
        requests.to_str().unwrap(),
        "-o",
        results.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(3), "some lines failed: exit 3\n{stderr}");
    let out: Vec<Value> = std::fs::read_to_string(&results)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // One result per non-blank line, in order.
    let ids: Vec<Value> = out.iter().map(|r| r["custom_id"].clone()).collect();
    assert_eq!(
        ids,
        [
            json!("cap"),
            json!("ask"),
            Value::Null,
            json!("bad-temp"),
            json!("emb"),
            json!("stream"),
            json!("greedy")
        ]
    );
    let answer = |r: &Value| {
        assert_eq!(r["response"]["status_code"], 200, "{r}");
        r["response"]["body"]["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_string()
    };
    // The caption line is `blip-onnx caption` with its defaults; the question `blip-onnx vqa`.
    let (code, stdout, stderr) = blip(&[
        "caption",
        "-p",
        caption.to_str().unwrap(),
        "--format",
        "json",
        image().to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    let want: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(answer(&out[0]), want[0]["caption"].as_str().unwrap());
    let (code, stdout, stderr) = blip(&[
        "vqa",
        "-p",
        vqa.to_str().unwrap(),
        "--format",
        "json",
        image().to_str().unwrap(),
        question,
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    let want: Value = serde_json::from_str(&stdout).unwrap();
    let want_answer = want[0]["answer"].as_str();
    assert_eq!(Some(answer(&out[1]).as_str()), want_answer, "{want}");
    // Greedy, two generated tokens: `caption --beams 1 --max-length 4+2`.
    let (code, stdout, stderr) = blip(&[
        "caption",
        "-p",
        caption.to_str().unwrap(),
        "--format",
        "json",
        "--beams",
        "1",
        "--max-length",
        "6",
        image().to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    let want: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(answer(&out[6]), want[0]["caption"].as_str().unwrap());
    // Errors: the unreadable line by number, the bad option by field, the other route by name.
    assert!(
        out[2]["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("line 3:"),
        "{}",
        out[2]
    );
    assert_eq!(out[3]["response"]["status_code"], 422, "{}", out[3]);
    assert_eq!(
        out[3]["response"]["body"]["error"]["param"], "temperature",
        "{}",
        out[3]
    );
    assert!(
        out[4]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/v1/embeddings"),
        "{}",
        out[4]
    );
    assert!(
        out[5]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("stream"),
        "{}",
        out[5]
    );
}

#[test]
fn nothing_is_written_when_the_packages_do_not_load() {
    let dir = tempfile::tempdir().unwrap();
    let requests = dir.path().join("requests.jsonl");
    std::fs::write(
        &requests,
        line("a", json!({"model": "m", "messages": content(None)})),
    )
    .unwrap();
    let results = dir.path().join("results.jsonl");
    let (code, _, stderr) = blip(&[
        "batch",
        "--package",
        dir.path().join("no-such-package").to_str().unwrap(),
        requests.to_str().unwrap(),
        "-o",
        results.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("no-such-package"), "{stderr}");
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(left.len(), 1, "only the requests file: {left:?}");
}
