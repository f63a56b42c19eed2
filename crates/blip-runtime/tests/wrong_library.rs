//! A file that is not ONNX Runtime is refused with a clear error (no panic, no abort).
//! (Own test binary: it changes process-wide environment variables.)

#[test]
fn non_onnxruntime_library_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir
        .path()
        .join(format!("libonnxruntime.so.{}", blip_runtime::ORT_VERSION));
    std::fs::write(&fake, b"not a shared library").unwrap();
    // SAFETY: this test binary has a single test; nothing else reads the environment concurrently.
    unsafe { std::env::set_var("ORT_DYLIB_PATH", &fake) };
    let msg = blip_runtime::OrtLibrary::init()
        .err()
        .expect("must refuse")
        .to_string();
    assert!(msg.contains("not a usable ONNX Runtime library"), "{msg}");
    assert!(msg.contains("fetch-onnxruntime.sh"), "{msg}");
}
