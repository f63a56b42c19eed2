//! Inputs that `scripts/fuzz.sh` found crashing the torch reader (fixtures/fuzz-regressions/).
//! The torch_pickle target's inputs are raw `data.pkl` bytes; they are wrapped here in the same
//! archive as the target does (a stored and a deflated storage) and opened as an original `.pth`.

use std::io::Write;
use std::path::{Path, PathBuf};

use blip_checkpoint::{Checkpoint, CheckpointError};

fn regressions(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/fuzz-regressions")
        .join(target)
}

fn torch_archive(pickle: &[u8]) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let stored =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let deflated = stored.compression_method(zip::CompressionMethod::Deflated);
    let storage: Vec<u8> = (0..=255u8).collect();
    let entries = [
        ("archive/data.pkl", pickle, stored),
        ("archive/data/0", &storage[..], stored),
        ("archive/data/1", &storage[..], deflated),
    ];
    for (name, bytes, options) in entries {
        zip.start_file(name, options).unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap().into_inner()
}

/// Opens the pickle as `model.pth`; the reader must refuse it with BadTorchFile naming the file.
fn pickle_error(pickle_file: &Path) -> String {
    let dir = tempfile::tempdir().unwrap();
    let pth = dir.path().join("model.pth");
    std::fs::write(&pth, torch_archive(&std::fs::read(pickle_file).unwrap())).unwrap();
    match Checkpoint::open(&pth) {
        Ok(_) => panic!("{} opened as a checkpoint", pickle_file.display()),
        Err(e @ CheckpointError::BadTorchFile { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("model.pth"), "{msg}");
            msg
        }
        Err(e) => panic!("{}: unexpected error {e}", pickle_file.display()),
    }
}

#[test]
fn pickle_ending_inside_a_global_name_is_refused() {
    // A lone GLOBAL opcode ("c"): reading its newline-terminated name stepped past the buffer.
    let msg = pickle_error(&regressions("torch_pickle").join("global-without-newline.pkl"));
    assert!(msg.contains("pickle ends inside a GLOBAL name"), "{msg}");
}

#[test]
fn pickle_with_a_length_near_u64_max_is_refused() {
    // BINUNICODE8 (0x8d) with length u64::MAX: `pos + n` overflowed.
    let msg = pickle_error(&regressions("torch_pickle").join("unicode8-length-overflow.pkl"));
    assert!(msg.contains("pickle ends early"), "{msg}");
}

#[test]
fn every_committed_pickle_regression_is_refused_without_a_panic() {
    let mut n = 0;
    for entry in std::fs::read_dir(regressions("torch_pickle")).unwrap() {
        pickle_error(&entry.unwrap().path());
        n += 1;
    }
    assert!(n >= 1, "no regression inputs found");
}
