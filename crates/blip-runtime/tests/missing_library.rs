//! Without a library the runtime refuses with one line that says how to fix it (no panic).
//! (Own test binary: it changes process-wide environment variables.)

#[test]
fn missing_library_names_the_fix() {
    let empty = tempfile::tempdir().unwrap();
    // SAFETY: this test binary has a single test; nothing else reads the environment concurrently.
    unsafe {
        std::env::set_var(
            "ORT_DYLIB_PATH",
            empty.path().join("libonnxruntime.so.1.32.0"),
        );
        std::env::set_var("BLIP_ONNX_CACHE", empty.path());
    }
    let err = blip_runtime::Runtime::init()
        .err()
        .expect("must fail without a library");
    let msg = err.to_string();
    assert!(msg.contains("ONNX Runtime library not found"), "{msg}");
    assert!(msg.contains("scripts/fetch-onnxruntime.sh"), "{msg}");
    assert!(!msg.contains('\n'), "one line: {msg}");
}
