//! blip.json text → Manifest, and Package::open on a folder holding it (with one graph file
//! present, so manifests naming it get past the file check).
#![no_main]

use blip_onnx_fuzz::{scratch_dir, write_input};
use blip_package::{MANIFEST_FILE, Manifest, Package};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(manifest) = serde_json::from_slice::<Manifest>(data) {
        let text = serde_json::to_string(&manifest).expect("a parsed manifest serializes");
        serde_json::from_str::<Manifest>(&text).expect("a written manifest parses back");
    }
    let dir = scratch_dir("package");
    write_input(&dir, "vision_encoder.onnx", b"");
    write_input(&dir, MANIFEST_FILE, data);
    if let Ok(package) = Package::open(&dir) {
        let _ = package.tokenizer_path();
        for role in package.manifest.graphs.keys() {
            package.graph_path(role).expect("a listed graph has a path");
        }
    }
});
