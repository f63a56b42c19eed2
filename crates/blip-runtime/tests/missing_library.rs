//! Without a library the runtime refuses with one line that says how to fix it (no panic).
//! (Own test binary: it changes process-wide environment variables.)

#[test]
fn missing_library_names_the_fix() {
    let empty = tempfile::tempdir().unwrap();
    // SAFETY: this test binary has a single test; nothing else reads the environment concurrently.
    unsafe {
        std::env::set_var(
            "ORT_DYLIB_PATH",
            empty
                .path()
                .join(format!("libonnxruntime.so.{}", blip_runtime::ORT_VERSION)),
        );
        std::env::set_var("BLIP_ONNX_CACHE", empty.path());
    }
    let err = blip_runtime::OrtLibrary::init()
        .err()
        .expect("must fail without a library");
    let msg = err.to_string();
    assert!(msg.contains("ONNX Runtime library not found"), "{msg}");
    assert!(msg.contains("scripts/fetch-onnxruntime.sh"), "{msg}");
    assert!(!msg.contains('\n'), "one line: {msg}");
}

/// The pinned ONNX Runtime version is the one versions.env names (the fetch script reads it too).
#[test]
fn the_pinned_version_comes_from_versions_env() {
    let file = include_str!("../../../versions.env");
    assert!(
        file.lines()
            .any(|l| l == format!("ORT_VERSION={}", blip_runtime::ORT_VERSION)),
        "{}",
        blip_runtime::ORT_VERSION
    );
    assert!(blip_runtime::ORT_VERSION.starts_with("1."));
}

/// The pip pins of onnxruntime (pip's own files) follow versions.env: a bump there that leaves
/// one behind fails here.
#[test]
fn every_pip_pin_of_onnxruntime_is_the_pinned_version() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let want = format!("onnxruntime=={}", blip_runtime::ORT_VERSION);
    for file in [
        "python/pyproject.toml",
        "python/requirements-test.txt",
        "tools/portability/requirements.txt",
        "tools/reference/requirements.txt",
    ] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let pins: Vec<&str> = text
            .split(|c: char| c.is_whitespace() || c == '"' || c == ',' || c == '[' || c == ']')
            .filter(|w| w.starts_with("onnxruntime=="))
            .collect();
        assert!(!pins.is_empty(), "{file} pins no onnxruntime");
        assert!(
            pins.iter().all(|p| *p == want),
            "{file}: {pins:?}, not {want}"
        );
    }
}
