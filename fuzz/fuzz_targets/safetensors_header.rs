//! A `.safetensors` file (header + data) → Checkpoint::open → every tensor read as f32.
#![no_main]

use blip_checkpoint::Checkpoint;
use blip_onnx_fuzz::{read_all_tensors, scratch_dir, write_input};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = write_input(&scratch_dir("safetensors"), "model.safetensors", data);
    if let Ok(ck) = Checkpoint::open(&path) {
        read_all_tensors(&ck);
    }
});
