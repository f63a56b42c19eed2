//! Reading the torch-pickled fixtures written by tools/reference/blip_reference.py.

use std::path::PathBuf;

use blip_checkpoint::{Checkpoint, CheckpointFormat, DType, Head};

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
    assert_eq!(Head::from_tensor_names(ck.names()), Some(Head::Caption));
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
