//! A whole torch zip checkpoint → Checkpoint::open, both as an original `.pth` (state dict under
//! "model") and as a Hugging Face folder's `pytorch_model.bin` (top-level state dict).
#![no_main]

use blip_checkpoint::Checkpoint;
use blip_onnx_fuzz::{read_all_tensors, scratch_dir, write_input};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let pth = write_input(&scratch_dir("pth"), "model.pth", data);
    if let Ok(ck) = Checkpoint::open(&pth) {
        read_all_tensors(&ck);
    }
    let hf = scratch_dir("hf-bin");
    write_input(&hf, "config.json", b"{}");
    write_input(&hf, "pytorch_model.bin", data);
    if let Ok(ck) = Checkpoint::open(&hf) {
        read_all_tensors(&ck);
    }
});
