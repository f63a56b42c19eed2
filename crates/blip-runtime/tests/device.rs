//! Asking for a GPU that this build or library cannot use is an error, never a silent CPU fallback.

use blip_runtime::{Device, OrtLibrary, SessionOptions};

#[test]
fn cuda_request_without_cuda_is_a_loud_error() {
    let rt = OrtLibrary::init().unwrap_or_else(|e| panic!("{e}"));
    let model = blip_testkit::fixture("models/tiny-caption");
    let c = blip_testkit::convert_fixture(&model, &Default::default());
    let opts = SessionOptions {
        device: Device::Cuda { device_id: 0 },
        ..Default::default()
    };
    let Err(err) = rt.package_session(&c.pkg, "vision_encoder", &opts) else {
        panic!("CUDA must not silently fall back to the CPU");
    };
    let msg = err.to_string();
    assert!(msg.contains("CUDA"), "{msg}");
}
