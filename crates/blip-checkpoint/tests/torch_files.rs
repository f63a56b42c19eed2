//! Reading the torch-pickled fixtures written by tools/reference/blip_reference.py.

use std::path::PathBuf;

use blip_checkpoint::{Checkpoint, CheckpointFormat, DType, Head, head_from_tensor_names};

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(rel)
}

#[test]
fn reads_original_blip_pth_with_renames_and_tied_storage() {
    let ck = Checkpoint::open(&fixture("models/tiny-caption-pth/model_tiny_caption.pth")).unwrap();
    assert_eq!(ck.format, CheckpointFormat::OriginalPth);
    assert_eq!(
        ck.shape("vision_model.embeddings.position_embedding"),
        Some(&[1, 17, 32][..])
    );
    assert_eq!(
        ck.dtype("vision_model.encoder.layers.1.self_attn.qkv.weight"),
        Some(DType::F16)
    );
    assert!(ck.contains("vision_model.post_layernorm.weight"));
    assert!(
        !ck.names().any(|n| n.starts_with("visual_encoder.")),
        "every vision key is renamed"
    );
    assert_eq!(
        ck.dtype("text_decoder.bert.embeddings.position_ids"),
        Some(DType::I64)
    );
    // The LM head weight is tied to the word embeddings: one storage, pickled once.
    assert!(ck.same_data(
        "text_decoder.cls.predictions.decoder.weight",
        "text_decoder.bert.embeddings.word_embeddings.weight"
    ));
    assert_eq!(head_from_tensor_names(ck.names()), Some(Head::Caption));
    // Values agree with the safetensors copy of the same weights.
    let st = Checkpoint::open(&fixture("models/tiny-caption")).unwrap();
    let key = "vision_model.encoder.layers.0.self_attn.qkv.weight";
    assert_eq!(ck.f32(key).unwrap(), st.f32(key).unwrap());
    assert_eq!(
        ck.f32("vision_model.embeddings.class_embedding").unwrap(),
        st.f32("vision_model.embeddings.class_embedding").unwrap()
    );
}

#[test]
fn reads_pytorch_model_bin_folder() {
    let ck = Checkpoint::open(&fixture("models/tiny-retrieval-bin")).unwrap();
    let st = Checkpoint::open(&fixture("models/tiny-retrieval")).unwrap();
    assert_eq!(ck.format, CheckpointFormat::HfPytorchBin);
    let mut a: Vec<_> = ck.names().collect();
    let mut b: Vec<_> = st.names().collect();
    a.sort();
    b.sort();
    assert_eq!(a, b);
    for key in [
        "itm_head.weight",
        "text_encoder.encoder.layer.1.crossattention.self.key.weight",
    ] {
        assert_eq!(ck.f32(key).unwrap(), st.f32(key).unwrap(), "{key}");
    }
}

/// The fixture re-zipped with deflated entries; `patch` may then edit the archive's bytes.
fn deflated_pth(patch: impl Fn(&mut Vec<u8>)) -> tempfile::NamedTempFile {
    use std::io::{Read, Write};
    let src =
        std::fs::File::open(fixture("models/tiny-caption-pth/model_tiny_caption.pth")).unwrap();
    let mut zin = zip::ZipArchive::new(src).unwrap();
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut zout = zip::ZipWriter::new(&mut buf);
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        for i in 0..zin.len() {
            let mut f = zin.by_index(i).unwrap();
            let mut data = Vec::new();
            f.read_to_end(&mut data).unwrap();
            let name = f.name().unwrap().to_string();
            zout.start_file(name, opts).unwrap();
            zout.write_all(&data).unwrap();
        }
        zout.finish().unwrap();
    }
    let mut bytes = buf.into_inner();
    patch(&mut bytes);
    let mut out = tempfile::Builder::new().suffix(".pth").tempfile().unwrap();
    out.write_all(&bytes).unwrap();
    out
}

#[test]
fn a_deflated_storage_claiming_more_than_deflate_can_hold_is_refused_unallocated() {
    // Unpatched, the deflated copy reads like the original.
    let ok = deflated_pth(|_| {});
    let ck = Checkpoint::open(ok.path()).unwrap();
    assert_eq!(
        ck.shape("vision_model.embeddings.position_embedding"),
        Some(&[1, 17, 32][..])
    );
    // Claim 2 GiB uncompressed for storage 0 in its central-directory record.
    let bad = deflated_pth(|b| {
        let name = b"model_tiny_caption/data/0";
        let at = (0..b.len() - 4)
            .filter(|&i| b[i..i + 4] == [0x50, 0x4b, 0x01, 0x02])
            .find(|&i| b[i + 46..].starts_with(name))
            .expect("central record of data/0");
        b[at + 24..at + 28].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
    });
    let Err(err) = Checkpoint::open(bad.path()) else {
        panic!("a 2 GiB claim was accepted");
    };
    let err = err.to_string();
    assert!(err.contains("data/0 claims 2147483647 bytes from"), "{err}");
}
