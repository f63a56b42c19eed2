//! The CLI's door of the request layer: every row of the shared option table
//! (fixtures/requests/caption-options.json, which the server, Python and the browser tests read
//! too) is refused naming its field as a flag (`--top-p: …`), and every good row captions token
//! for token as the library does with the same request resolved.

use std::path::{Path, PathBuf};
use std::process::Command;

use blip_runtime::request::{CaptionRequest, ModelLimits};
use blip_runtime::{BlipModel, ImageInput, SessionOptions};

fn fixture(rel: &str) -> PathBuf {
    blip_testkit::fixture(rel)
}

fn table() -> serde_json::Value {
    let text = std::fs::read_to_string(fixture("requests/caption-options.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The options of a row as `blip-onnx caption` flags.
fn flags(options: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in options.as_object().unwrap() {
        let flag = format!("--{}", k.replace('_', "-"));
        match v {
            serde_json::Value::Bool(true) => out.push(flag),
            serde_json::Value::String(s) => out.push(format!("{flag}={s}")),
            other => out.push(format!("{flag}={other}")),
        }
    }
    out
}

fn caption(package: &Path, options: &serde_json::Value, image: &Path) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_blip-onnx"))
        .args(["caption", "-p"])
        .arg(package)
        .args(["--threads", "1", "--format", "json", "--quiet"])
        .args(flags(options))
        .arg(image)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn the_shared_option_table_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let package = dir.path().join("caption");
    let out = Command::new(env!("CARGO_BIN_EXE_blip-onnx"))
        .arg("convert")
        .arg(fixture("shapes/models/shapes-caption"))
        .arg("-o")
        .arg(&package)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let image = fixture("shapes/test/images/test_00003.png");
    let table = table();

    for row in table["bad"].as_array().unwrap() {
        let (ok, _, stderr) = caption(&package, &row["options"], &image);
        let flag = format!("--{}:", row["field"].as_str().unwrap().replace('_', "-"));
        assert!(!ok, "{row} was taken");
        assert!(
            stderr.contains(&flag),
            "{row}: {flag} not named in {stderr:?}"
        );
    }

    let mut model = BlipModel::open(
        &package,
        &SessionOptions {
            intra_threads: 1,
            ..Default::default()
        },
    )
    .unwrap();
    for options in table["good"].as_array().unwrap() {
        let (ok, stdout, stderr) = caption(&package, options, &image);
        assert!(ok, "{options}: {stderr}");
        let got: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        let request: CaptionRequest = serde_json::from_value(options.clone()).unwrap();
        let opts = request.resolve(ModelLimits::of(&model.package)).unwrap();
        let want = model
            .caption(&[ImageInput::Path(image.clone())], &opts)
            .unwrap()
            .remove(0)
            .unwrap();
        assert_eq!(got[0]["tokens"], serde_json::json!(want.ids), "{options}");
        assert_eq!(got[0]["caption"], want.text.as_str(), "{options}");
    }
}
