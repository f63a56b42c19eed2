//! What the CLI's test binaries share: running the binary, and the shapes packages converted once
//! per test binary.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

/// Runs `blip-onnx ARGS`: exit code, stdout, stderr.
pub fn blip(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_blip-onnx"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The shapes package of `head` (caption, retrieval, vqa) converted into the test target folder
/// under `name` (each test binary names its own, so binaries running at once do not share one).
pub fn shapes_package(head: &str, name: &str) -> PathBuf {
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let checkpoint = blip_testkit::fixture(&format!("shapes/models/shapes-{head}"));
    let (code, _, stderr) = blip(&[
        "convert",
        checkpoint.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--force",
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    out
}
