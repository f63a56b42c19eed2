//! Images that must be refused, with the file named, before they cost memory or give a wrong answer.

use std::path::{Path, PathBuf};

use blip_preprocess::{ImagePreprocessor, PreprocessError};

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/images")
        .join(rel)
}

fn pre() -> ImagePreprocessor {
    ImagePreprocessor::new(&blip_package::Preprocess::blip(32))
}

#[test]
fn every_fixture_jpeg_is_complete_and_decodes() {
    for f in [
        "grace_hopper.jpg",
        "formats/cmyk.jpg",
        "formats/exif_rotated.jpg",
    ] {
        let img = pre().load_path(&fixture(f)).unwrap();
        assert!(img.width > 0 && img.height > 0, "{f}");
    }
}

#[test]
fn a_truncated_jpeg_is_an_error_not_a_grey_image() {
    let bytes = std::fs::read(fixture("grace_hopper.jpg")).unwrap();
    for cut in [bytes.len() - 2, bytes.len() / 2, 700, 300] {
        let err = pre()
            .load_bytes(&bytes[..cut], "cut.jpg")
            .expect_err("truncated JPEG accepted");
        let msg = err.to_string();
        assert!(
            msg.starts_with("image cut.jpg: corrupt or truncated image"),
            "cut at {cut}: {msg}"
        );
    }
    // Bytes after the end-of-image marker (some cameras append data) are fine.
    let mut padded = bytes.clone();
    padded.extend_from_slice(b"trailing vendor data");
    pre().load_bytes(&padded, "padded.jpg").unwrap();
}

#[test]
fn an_oversized_file_is_refused_before_it_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.png");
    let f = std::fs::File::create(&path).unwrap();
    // Sparse: 1 GiB on paper, nothing on disk; a reader that read it whole would take 1 GiB.
    f.set_len(1 << 30).unwrap();
    let err = pre().load_path(&path).unwrap_err();
    assert!(matches!(err, PreprocessError::FileTooLarge { bytes, .. } if bytes == 1 << 30));
    assert!(err.to_string().contains("huge.png"), "{err}");
    // The limit is a setting.
    let mut small = pre();
    small.max_file_bytes = 100;
    let err = small.load_path(&fixture("synthetic_a.png")).unwrap_err();
    assert!(
        err.to_string()
            .contains("498 bytes, over the limit of 100 bytes"),
        "{err}"
    );
}

#[test]
fn a_file_named_png_that_is_not_an_image_is_refused_by_its_first_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.png");
    std::fs::write(&path, "these are notes, not pixels\n".repeat(1000)).unwrap();
    let err = pre().load_path(&path).unwrap_err();
    assert!(
        err.to_string().contains("not a recognised image format"),
        "{err}"
    );
}

#[cfg(unix)]
#[test]
fn a_fifo_is_refused_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pipe.png");
    let status = std::process::Command::new("mkfifo")
        .arg(&path)
        .status()
        .unwrap();
    assert!(status.success());
    let err = pre().load_path(&path).unwrap_err();
    assert!(err.to_string().contains("not a regular file"), "{err}");
}
