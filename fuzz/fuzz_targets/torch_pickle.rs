//! Raw pickle bytes as `data.pkl` of an otherwise valid torch archive (two storages: `data/0`
//! stored, `data/1` deflated), so the mutations go to the pickle machine, not the zip container.
#![no_main]

use std::io::Write;

use blip_checkpoint::Checkpoint;
use blip_onnx_fuzz::{read_all_tensors, scratch_dir, write_input};
use libfuzzer_sys::fuzz_target;
use zip::write::SimpleFileOptions;

fn archive(pickle: &[u8]) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let stored = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let deflated =
        SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    let storage: Vec<u8> = (0..=255u8).collect();
    let entries: [(&str, &[u8], SimpleFileOptions); 3] = [
        ("archive/data.pkl", pickle, stored),
        ("archive/data/0", &storage, stored),
        ("archive/data/1", &storage, deflated),
    ];
    for (name, bytes, options) in entries {
        zip.start_file(name, options).expect("zip entry");
        zip.write_all(bytes).expect("zip entry data");
    }
    zip.finish().expect("zip archive").into_inner()
}

fuzz_target!(|data: &[u8]| {
    let bytes = archive(data);
    let pth = write_input(&scratch_dir("pickle-pth"), "model.pth", &bytes);
    if let Ok(ck) = Checkpoint::open(&pth) {
        read_all_tensors(&ck);
    }
    let hf = scratch_dir("pickle-hf-bin");
    write_input(&hf, "config.json", b"{}");
    write_input(&hf, "pytorch_model.bin", &bytes);
    if let Ok(ck) = Checkpoint::open(&hf) {
        read_all_tensors(&ck);
    }
});
