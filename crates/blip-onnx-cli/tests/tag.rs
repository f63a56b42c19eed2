//! `blip-onnx tag` and `POST /v1/tag` on the trained shapes retrieval package: each tag score is
//! the cosine of the `embed` outputs of the image and of the label's prompt, the server's tags
//! equal the CLI's, and bad requests name their field at both doors.

use crate::common;

use common::{blip, shapes_package};

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

const LABELS: [&str; 5] = [
    "red circle",
    "blue square",
    "purple triangle",
    "yellow square",
    "green circle",
];

fn package() -> &'static Path {
    static PACKAGE: OnceLock<PathBuf> = OnceLock::new();
    PACKAGE.get_or_init(|| shapes_package("retrieval", "tag-shapes-retrieval"))
}

fn images() -> Vec<String> {
    (0..3)
        .map(|i| {
            blip_testkit::fixture(&format!("shapes/test/images/test_{i:05}.png"))
                .display()
                .to_string()
        })
        .collect()
}

fn labels_file(dir: &Path, labels: &[&str]) -> PathBuf {
    let path = dir.join("labels.txt");
    std::fs::write(&path, labels.join("\n") + "\n").unwrap();
    path
}

/// `blip-onnx tag` with `extra` flags: one (label, score) list per image.
fn cli_tags(labels: &Path, extra: &[&str]) -> Vec<Vec<(String, f64)>> {
    let mut args = vec![
        "tag",
        "-p",
        package().to_str().unwrap(),
        "--threads",
        "1",
        "--labels",
        labels.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let imgs = images();
    args.extend(imgs.iter().map(String::as_str));
    let (code, stdout, stderr) = blip(&args);
    assert_eq!(code, Some(0), "{stderr}");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), imgs.len());
    lines
        .iter()
        .zip(&imgs)
        .map(|(l, img)| {
            assert_eq!(l["image"], img.as_str());
            tag_list(&l["tags"])
        })
        .collect()
}

fn tag_list(tags: &serde_json::Value) -> Vec<(String, f64)> {
    tags.as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["label"].as_str().unwrap().to_string(),
                t["score"].as_f64().unwrap(),
            )
        })
        .collect()
}

fn embedding(v: &serde_json::Value) -> Vec<f64> {
    v["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

#[test]
fn tag_scores_are_the_cosines_of_embed() {
    let dir = tempfile::tempdir().unwrap();
    let labels = labels_file(dir.path(), &LABELS);
    // Every label kept: threshold at the lowest cosine.
    let tags = cli_tags(&labels, &["--threshold", "-1"]);

    let prompts: Vec<String> = LABELS
        .iter()
        .map(|l| blip_runtime::tag::tag_prompt(l))
        .collect();
    assert_eq!(prompts[0], "a photo of red circle");
    let mut args = vec![
        "embed",
        "-p",
        package().to_str().unwrap(),
        "--threads",
        "1",
        "--format",
        "json",
        "--image",
    ];
    let imgs = images();
    args.extend(imgs.iter().map(String::as_str));
    args.push("--text");
    args.extend(prompts.iter().map(String::as_str));
    let (code, stdout, stderr) = blip(&args);
    assert_eq!(code, Some(0), "{stderr}");
    let records: Vec<serde_json::Value> = serde_json::from_str(&stdout).unwrap();
    let text: Vec<Vec<f64>> = records[imgs.len()..].iter().map(embedding).collect();

    for (i, image_tags) in tags.iter().enumerate() {
        let image = embedding(&records[i]);
        assert_eq!(image_tags.len(), LABELS.len());
        for (label, score) in image_tags {
            let j = LABELS.iter().position(|l| l == label).unwrap();
            let want = cosine(&image, &text[j]);
            assert!(
                (score - want).abs() < 1e-5,
                "image {i} {label}: tag {score} vs cosine of embed {want}"
            );
        }
        // By score, highest first.
        assert!(
            image_tags.windows(2).all(|w| w[0].1 >= w[1].1),
            "{image_tags:?}"
        );
    }
    // The shapes model tells the first scene's purple triangle (its caption) first.
    assert_eq!(tags[0][0].0, "purple triangle");

    // --top-k keeps the head of the same list; --threshold the labels at or above it.
    let top = cli_tags(&labels, &["--top-k", "2"]);
    for (t, all) in top.iter().zip(&tags) {
        assert_eq!(t[..], all[..2]);
    }
    let cut = tags[1][2].1 as f32;
    let kept = cli_tags(&labels, &["--threshold", &cut.to_string()]);
    assert_eq!(kept[1][..], tags[1][..3]);
}

#[test]
fn bad_tag_requests_name_the_flag_or_line() {
    let dir = tempfile::tempdir().unwrap();
    let labels = labels_file(dir.path(), &LABELS);
    let img = &images()[0];
    let run = |labels: &Path, extra: &[&str]| {
        let mut args = vec![
            "tag",
            "-p",
            package().to_str().unwrap(),
            "--labels",
            labels.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        args.push(img);
        blip(&args)
    };
    for (extra, named) in [
        (&["--threshold", "1.5"][..], "--threshold:"),
        (&["--top-k", "0"][..], "--top-k:"),
    ] {
        let (code, _, stderr) = run(&labels, extra);
        assert_eq!(code, Some(1), "{stderr}");
        assert!(stderr.contains(named), "{named} not in {stderr:?}");
    }
    let dup = dir.path().join("dup.txt");
    std::fs::write(&dup, "cat\n\ndog\ncat\n").unwrap();
    let (code, _, stderr) = run(&dup, &[]);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains(&format!("{} line 4: repeats line 1", dup.display())),
        "{stderr}"
    );
}

/// Standard base64 (the request bodies' image encoding).
fn b64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for k in 0..4 {
            if k <= c.len() {
                out.push(A[(n >> (18 - 6 * k) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, body.to_string())
}

struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn server_tags_equal_the_cli_tags() {
    let dir = tempfile::tempdir().unwrap();
    let labels = labels_file(dir.path(), &LABELS);
    let want = cli_tags(&labels, &["--top-k", "3"]);

    let mut child = Command::new(env!("CARGO_BIN_EXE_blip-onnx"))
        .args(["serve", "--package"])
        .arg(package())
        .args(["--host", "127.0.0.1", "--port", "0", "--threads", "1"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let server = Server(child);
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let Some(Ok(line)) = lines.next() else {
            panic!("serve ended before listening");
        };
        if let Some(a) = line.split("listening on http://").nth(1) {
            break a.trim().to_string();
        }
    };
    // Keep reading its stderr so that the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    let start = std::time::Instant::now();
    while http(&addr, "GET", "/health/ready", "").0 != 200 {
        assert!(start.elapsed().as_secs() < 120, "server not ready");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

    let encoded: Vec<String> = images()
        .iter()
        .map(|p| b64(&std::fs::read(p).unwrap()))
        .collect();
    let body = serde_json::json!({"images": encoded, "labels": LABELS, "top_k": 3});
    let (status, text) = http(&addr, "POST", "/v1/tag", &body.to_string());
    assert_eq!(status, 200, "{text}");
    let got: serde_json::Value = serde_json::from_str(&text).unwrap();
    let results = got["results"].as_array().unwrap();
    assert_eq!(results.len(), want.len());
    for (r, w) in results.iter().zip(&want) {
        let g = tag_list(&r["tags"]);
        let labels = |v: &[(String, f64)]| v.iter().map(|t| t.0.clone()).collect::<Vec<_>>();
        assert_eq!(labels(&g), labels(w));
        for (a, b) in g.iter().zip(w) {
            assert!((a.1 - b.1).abs() < 1e-5, "{} {} vs {}", a.0, a.1, b.1);
        }
    }

    // Bad requests: 422 naming the field.
    for (body, field) in [
        (
            serde_json::json!({"images": [&encoded[0]], "labels": ["cat", " "]}),
            "labels[1]",
        ),
        (
            serde_json::json!({"images": [&encoded[0]], "labels": ["cat"], "threshold": 2.0}),
            "threshold",
        ),
        (
            serde_json::json!({"images": [&encoded[0]], "labels": ["cat"], "top_k": 0}),
            "top_k",
        ),
        (
            serde_json::json!({"images": [&encoded[0]], "labels": []}),
            "labels",
        ),
    ] {
        let (status, text) = http(&addr, "POST", "/v1/tag", &body.to_string());
        assert_eq!(status, 422, "{body}: {text}");
        let err: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert!(
            err["error"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{field}: ")),
            "{body}: {text}"
        );
    }
    drop(server);
}
