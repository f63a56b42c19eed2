//! `blip-onnx caption --write txt|json|xmp`: the sidecars hold the captions the ordinary `caption`
//! prints for the same images (trained shapes caption package, shapes test images), exiftool reads
//! the XMP sidecar's caption back, `--skip-existing` resumes, an existing sidecar without a flag
//! is refused before any work, and a bad image fails alone.

use crate::common;

use common::{blip, shapes_package};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use blip_runtime::request::{CaptionRequest, ModelLimits};

/// The shapes caption package, converted once per test run.
fn package() -> &'static Path {
    static PACKAGE: OnceLock<PathBuf> = OnceLock::new();
    PACKAGE.get_or_init(|| shapes_package("caption", "sidecars-shapes-caption"))
}

/// `caption DIR --write KIND extra...` on the shapes package.
fn write(dir: &Path, kind: &str, extra: &[&str]) -> (Option<i32>, String, String) {
    let mut args = vec![
        "caption",
        "-p",
        package().to_str().unwrap(),
        "--threads",
        "1",
        "--format",
        "json",
        dir.to_str().unwrap(),
        "--write",
        kind,
    ];
    args.extend_from_slice(extra);
    blip(&args)
}

/// The ordinary `caption` output for the images under `dir`: file name → caption.
fn captions(dir: &Path) -> BTreeMap<String, String> {
    let (code, stdout, stderr) = blip(&[
        "caption",
        "-p",
        package().to_str().unwrap(),
        "--threads",
        "1",
        "--format",
        "json",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    parse(&stdout)
}

/// `--format json` records as file name → caption (error records left out).
fn parse(stdout: &str) -> BTreeMap<String, String> {
    let records: Vec<serde_json::Value> = serde_json::from_str(stdout).unwrap();
    records
        .iter()
        .filter_map(|r| {
            let name = Path::new(r["image"].as_str()?).file_name()?;
            Some((
                name.to_string_lossy().into_owned(),
                r["caption"].as_str()?.to_string(),
            ))
        })
        .collect()
}

/// A folder with `n` shapes test images.
fn images(n: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..n {
        let name = format!("test_{i:05}.png");
        std::fs::copy(
            blip_testkit::fixture("shapes/test/images").join(&name),
            dir.path().join(&name),
        )
        .unwrap();
    }
    dir
}

fn sidecar(dir: &Path, image: &str, ext: &str) -> PathBuf {
    dir.join(Path::new(image).with_extension(ext))
}

/// exiftool, or None (with the reason printed) outside CI; under CI a missing exiftool fails.
fn exiftool() -> Option<&'static str> {
    let found = Command::new("exiftool")
        .arg("-ver")
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        return Some("exiftool");
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "exiftool is not installed and CI is set: scripts/setup-exiftool.sh installs it"
    );
    eprintln!(
        "skipping the exiftool read-back: exiftool is not installed (scripts/setup-exiftool.sh)"
    );
    None
}

#[test]
fn each_sidecar_holds_the_caption_of_caption() {
    let dir = images(4);
    let want = captions(dir.path());
    assert_eq!(want.len(), 4, "{want:?}");
    let exiftool = exiftool();
    for kind in ["txt", "json", "xmp"] {
        let (code, stdout, stderr) = write(dir.path(), kind, &[]);
        assert_eq!(code, Some(0), "{kind}: {stderr}");
        // The run still prints what `caption` prints.
        assert_eq!(parse(&stdout), want, "{kind}");
        assert!(
            stderr.contains(&format!("4 .{kind} sidecars written")),
            "{stderr}"
        );
        for (image, caption) in &want {
            let path = sidecar(dir.path(), image, kind);
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            match kind {
                "txt" => assert_eq!(text, format!("{caption}\n"), "{}", path.display()),
                "json" => {
                    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
                    assert_eq!(doc["caption"], caption.as_str(), "{}", path.display());
                    assert_eq!(doc["model"], "sidecars-shapes-caption");
                    // The options are the request layer's defaults, resolved.
                    let back: CaptionRequest =
                        serde_json::from_value(doc["options"].clone()).unwrap();
                    let limits = ModelLimits::of(&blip_runtime::Package::open(package()).unwrap());
                    let got = back.resolve(limits).unwrap();
                    let default = CaptionRequest::default().resolve(limits).unwrap();
                    assert_eq!(got.strategy, default.strategy);
                    assert_eq!(got.prompt, default.prompt);
                    assert_eq!(
                        (got.max_length, got.min_length),
                        (default.max_length, default.min_length)
                    );
                }
                _ => {
                    assert!(text.contains("<dc:description>"), "{text}");
                    if let Some(exiftool) = exiftool {
                        let out = Command::new(exiftool)
                            .args(["-s3", "-Description"])
                            .arg(&path)
                            .output()
                            .unwrap();
                        assert!(out.status.success());
                        assert_eq!(
                            String::from_utf8_lossy(&out.stdout).trim_end_matches('\n'),
                            caption,
                            "{}",
                            path.display()
                        );
                        let out = Command::new(exiftool)
                            .args(["-validate", "-s3"])
                            .arg(&path)
                            .output()
                            .unwrap();
                        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK");
                    }
                }
            }
        }
    }
    // Nothing but the images and their sidecars is left in the folder (no temporary files).
    let count = std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(count, 4 * 4);
}

#[test]
fn skip_existing_resumes_and_captions_only_the_rest() {
    let dir = images(3);
    let want = captions(dir.path());
    let kept = sidecar(dir.path(), "test_00001.png", "txt");
    std::fs::write(&kept, "written by hand\n").unwrap();
    let (code, stdout, stderr) = write(dir.path(), "txt", &["--skip-existing"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(std::fs::read_to_string(&kept).unwrap(), "written by hand\n");
    // Its image was not captioned at all: only the other two are in the output.
    let got = parse(&stdout);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        ["test_00000.png", "test_00002.png"]
    );
    for image in ["test_00000.png", "test_00002.png"] {
        assert_eq!(
            std::fs::read_to_string(sidecar(dir.path(), image, "txt")).unwrap(),
            format!("{}\n", want[image])
        );
    }
    assert!(stderr.contains("1 skipped"), "{stderr}");
    // A second resume has nothing left to do.
    let (code, stdout, stderr) = write(dir.path(), "txt", &["--skip-existing"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(stderr.contains("nothing to caption"), "{stderr}");
}

#[test]
fn an_existing_sidecar_is_refused_before_any_work_unless_overwrite() {
    let dir = images(3);
    let existing = sidecar(dir.path(), "test_00002.png", "xmp");
    std::fs::write(&existing, "old").unwrap();
    let (code, stdout, stderr) = write(dir.path(), "xmp", &[]);
    assert_ne!(code, Some(0));
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        stderr.contains(&format!("{} already exists", existing.display())),
        "{stderr}"
    );
    assert!(stderr.contains("--overwrite"), "{stderr}");
    // Nothing was written: no other sidecar, the old one as it was.
    for image in ["test_00000.png", "test_00001.png"] {
        assert!(!sidecar(dir.path(), image, "xmp").exists());
    }
    assert_eq!(std::fs::read_to_string(&existing).unwrap(), "old");

    let (code, _, stderr) = write(dir.path(), "xmp", &["--overwrite"]);
    assert_eq!(code, Some(0), "{stderr}");
    let text = std::fs::read_to_string(&existing).unwrap();
    let want = &captions(dir.path())["test_00002.png"];
    assert!(text.contains(&format!(">{want}</rdf:li>")), "{text}");

    // The two flags exclude each other.
    let (code, _, stderr) = write(dir.path(), "xmp", &["--overwrite", "--skip-existing"]);
    assert_eq!(code, Some(2), "{stderr}");
}

#[test]
fn a_bad_image_fails_alone() {
    let dir = images(3);
    let want = captions(dir.path());
    let bad = dir.path().join("broken.png");
    std::fs::write(&bad, b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let (code, stdout, stderr) = write(dir.path(), "json", &[]);
    // Partial: exit 3, the bad image named, every good image's sidecar written.
    assert_eq!(code, Some(3), "{stderr}");
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("error:") && l.contains("broken.png")),
        "{stderr}"
    );
    assert!(!sidecar(dir.path(), "broken.png", "json").exists());
    assert_eq!(parse(&stdout), want);
    for (image, caption) in &want {
        let doc: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(sidecar(dir.path(), image, "json")).unwrap(),
        )
        .unwrap();
        assert_eq!(doc["caption"], caption.as_str());
    }
    assert!(stderr.contains("3 .json sidecars written"), "{stderr}");
    assert!(stderr.contains("1 failed"), "{stderr}");
}
