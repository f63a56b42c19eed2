//! The `blip-onnx` binary end to end: convert, refuse to overwrite, inspect and run every graph.

use std::path::PathBuf;
use std::process::Command;

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(rel)
}

fn blip(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_blip-onnx"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn convert_then_inspect_runs_every_graph() {
    let dir = tempfile::tempdir().unwrap();
    for head in ["caption", "retrieval", "vqa"] {
        let out = dir.path().join(head);
        let ck = fixture(&format!("models/tiny-{head}"));
        let (ok, stdout, stderr) = blip(&[
            "convert",
            ck.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--json",
        ]);
        assert!(ok, "{stderr}");
        let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(report["head"], head);
        let (ok, stdout, stderr) =
            blip(&["inspect", out.to_str().unwrap(), "--run", "--threads", "1"]);
        assert!(ok, "{stderr}");
        let graphs = std::fs::read_dir(&out)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "onnx")
            })
            .count();
        assert_eq!(
            stdout
                .lines()
                .filter(|l| l.starts_with("graph") && l.ends_with("ok"))
                .count(),
            graphs,
            "{stdout}"
        );
    }
}

#[test]
fn convert_refuses_to_overwrite_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pkg");
    let ck = fixture("models/tiny-caption");
    assert!(blip(&["convert", ck.to_str().unwrap(), "-o", out.to_str().unwrap()]).0);
    let (ok, _, stderr) = blip(&["convert", ck.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    assert!(!ok);
    assert!(stderr.contains("already exists; pass --force"), "{stderr}");
    let (ok, _, stderr) = blip(&[
        "convert",
        ck.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--force",
    ]);
    assert!(ok, "{stderr}");
}

#[test]
fn inspect_reports_a_missing_graph_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pkg");
    let ck = fixture("models/tiny-caption");
    assert!(blip(&["convert", ck.to_str().unwrap(), "-o", out.to_str().unwrap()]).0);
    std::fs::remove_file(out.join("decoder.onnx")).unwrap();
    let (ok, _, stderr) = blip(&["inspect", out.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        stderr.contains(
            "graph decoder is listed in the manifest but its file decoder.onnx is missing"
        ),
        "{stderr}"
    );
}
