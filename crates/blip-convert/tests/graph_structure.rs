//! What the written graphs look like: standard ops at opset 17, symbolic batch/sequence axes, node and
//! initializer names that mirror checkpoint keys, the tied embedding stored once.

use crate::common;

use blip_convert::ConvertOptions;
use common::{convert_fixture, fixture};
use onnx_writer::onnx::{
    ModelProto, tensor_shape_proto::dimension::Value as DimValue, type_proto::Value as TypeValue,
};
use prost::Message;

fn load(path: &std::path::Path) -> ModelProto {
    ModelProto::decode(std::fs::read(path).unwrap().as_slice()).unwrap()
}

fn dims(v: &onnx_writer::onnx::ValueInfoProto) -> Vec<String> {
    let Some(TypeValue::TensorType(t)) = v.r#type.as_ref().and_then(|t| t.value.clone()) else {
        panic!("not a tensor")
    };
    t.shape
        .unwrap()
        .dim
        .iter()
        .map(|d| match d.value.clone().unwrap() {
            DimValue::DimValue(v) => v.to_string(),
            DimValue::DimParam(p) => p,
        })
        .collect()
}

#[test]
fn graphs_use_standard_ops_dynamic_axes_and_checkpoint_names() {
    let c = convert_fixture(&fixture("models/tiny-caption"), &ConvertOptions::default());
    for (role, entry) in &c.pkg.manifest.graphs {
        let m = load(&c.pkg.dir.join(&entry.file));
        assert_eq!(m.opset_import.len(), 1, "{role}");
        assert_eq!(
            (
                m.opset_import[0].domain.as_deref(),
                m.opset_import[0].version
            ),
            (Some(""), Some(17))
        );
        let g = m.graph.unwrap();
        assert!(
            g.node
                .iter()
                .all(|n| n.domain.as_deref().unwrap_or("").is_empty()),
            "{role}: standard ops only"
        );
        assert!(
            g.node
                .iter()
                .all(|n| n.op_type.as_deref() != Some("Dropout")),
            "{role}"
        );
        for i in g.input.iter().chain(g.output.iter()) {
            // The decoder's cross-attention inputs come once per image, not per row.
            let name = i.name.as_deref().unwrap();
            let per_image = role == "decoder"
                && (name.starts_with("cross_key_values.")
                    || name == "encoder_attention_mask"
                    || name == blip_package::CROSS_GROUPS);
            assert_eq!(
                dims(i)[0],
                if per_image { "images" } else { "batch" },
                "{role}: {name} has a dynamic batch axis",
            );
        }
        // The manifest lists exactly the graph's I/O.
        let names: Vec<_> = g.input.iter().map(|i| i.name.clone().unwrap()).collect();
        assert_eq!(
            names,
            entry
                .inputs
                .iter()
                .map(|s| s.name.clone())
                .collect::<Vec<_>>()
        );
    }
    let v = load(&c.pkg.dir.join("vision_encoder.onnx")).graph.unwrap();
    assert!(
        v.node.iter().any(
            |n| n.name.as_deref() == Some("vision_model.encoder.layers.1.self_attn.qkv/MatMul")
        )
    );
    assert!(
        v.initializer
            .iter()
            .any(|t| t.name.as_deref() == Some("vision_model.encoder.layers.1.mlp.fc2.weight"))
    );
    let d = load(&c.pkg.dir.join("decoder.onnx")).graph.unwrap();
    assert_eq!(dims(&d.input[0]), ["batch", "sequence"]);
    assert_eq!(
        dims(
            d.input
                .iter()
                .find(|i| i.name.as_deref() == Some("past_key_values.0.key"))
                .unwrap()
        ),
        ["batch", "4", "past_sequence", "8"]
    );
    let vocab_sized = d
        .initializer
        .iter()
        .filter(|t| t.dims == [30524, 32])
        .count();
    assert_eq!(
        vocab_sized, 1,
        "tied word embedding / LM head weight stored once"
    );
}
