//! Helpers shared by the fuzz targets: the readers under test take paths, so each input is written
//! to a scratch folder that lives as long as the fuzzing process.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use blip_checkpoint::Checkpoint;

/// Largest tensor the targets read back in full (bigger ones are only opened), so one input
/// cannot make an iteration slow for a reason that is not a bug.
const MAX_READ_ELEMENTS: usize = 1 << 20;

fn scratch_root() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("scratch folder for fuzz inputs"))
        .path()
}

/// A folder `name` inside the scratch folder (created on first use).
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = scratch_root().join(name);
    std::fs::create_dir_all(&dir).expect("scratch sub-folder");
    dir
}

/// Writes `bytes` to `dir/name`, replacing what an earlier input left there.
pub fn write_input(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("writing the fuzz input");
    path
}

/// Reads every (not too large) tensor of an opened checkpoint the way the converter does, and checks
/// that each read gives as many values as the shape promises.
pub fn read_all_tensors(ck: &Checkpoint) {
    let names: Vec<String> = ck.names().map(str::to_string).collect();
    for name in &names {
        let shape = ck
            .shape(name)
            .expect("a listed tensor has a shape")
            .to_vec();
        let Some(numel) = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)) else {
            continue;
        };
        if numel > MAX_READ_ELEMENTS {
            continue;
        }
        let _ = ck.same_data(name, name);
        if let Ok(values) = ck.f32(name) {
            assert_eq!(values.len(), numel, "tensor {name}: f32() length");
        }
        if let Ok(bytes) = ck.f32_bytes(name) {
            assert_eq!(bytes.len(), numel * 4, "tensor {name}: f32_bytes() length");
        }
    }
}

/// The special tokens of the fixture packages (bert-base-uncased + BLIP's [DEC] / [ENC]).
pub fn fixture_tokens() -> blip_package::Tokens {
    blip_package::Tokens {
        bos: 30522,
        enc: 30523,
        cls: 101,
        sep: 102,
        eos: 102,
        pad: 0,
        max_text_tokens: 35,
    }
}
