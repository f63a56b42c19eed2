//! Index file bytes → Index::read, and for an index that reads: its rows are consistent, its
//! stored-state names stay inside the sidecar folder, and writing it reads back the same.
#![no_main]

use blip_index::Index;
use blip_onnx_fuzz::{scratch_dir, write_input};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = scratch_dir("index");
    let path = write_input(&dir, "fuzz.idx", data);
    let Ok(index) = Index::read(&path) else {
        return;
    };
    for (i, entry) in index.entries().iter().enumerate() {
        assert_eq!(index.position(&entry.id), Some(i), "ids are unique");
        assert!(index.embedding(i).iter().all(|v| v.is_finite()));
        if let Some(name) = &entry.state {
            assert_eq!(*name, Index::state_name(&entry.id), "state names are ours");
        }
    }
    // No state files exist here: reading them must fail cleanly, not read elsewhere.
    let rows: Vec<usize> = (0..index.len().min(4)).collect();
    if !rows.is_empty() {
        assert!(index.read_states(&path, &rows).is_err());
    }
    let again = dir.join("again.idx");
    index.write(&again).expect("an index that read writes");
    let back = Index::read(&again).expect("a written index reads back");
    assert_eq!(back.entries(), index.entries());
    assert_eq!(back.embeddings().len(), index.embeddings().len());
    assert!(
        back.embeddings()
            .iter()
            .zip(index.embeddings())
            .all(|(a, b)| a.to_bits() == b.to_bits())
    );
});
