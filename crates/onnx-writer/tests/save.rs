//! The streamed file decodes as the ModelProto it describes, inline and with external data.

use std::borrow::Cow;

use onnx_writer::onnx::{ModelProto, tensor_proto::DataLocation};
use onnx_writer::{
    DataType, Dim, ExternalData, GraphBuilder, ModelInfo, TensorData, attr_int, save_model,
};
use prost::Message;

fn info() -> ModelInfo {
    ModelInfo {
        ir_version: 8,
        opsets: vec![(String::new(), 17)],
        producer_name: "test".into(),
        producer_version: "0".into(),
        doc: "doc".into(),
        metadata: vec![("k".into(), "v".into())],
    }
}

fn graph<'a>(big: &'a [u8]) -> GraphBuilder<'a> {
    let mut g = GraphBuilder::new("g");
    g.input("x", DataType::F32, &[Dim::sym("batch"), Dim::Fixed(512)]);
    let w = g.initializer(
        "layer.weight",
        DataType::F32,
        &[512, 512],
        TensorData::Bytes(Cow::Borrowed(big)),
    );
    let b = g.initializer(
        "layer.bias",
        DataType::F32,
        &[512],
        TensorData::Lazy(Box::new(|| {
            Ok((0..512).flat_map(|i| (i as f32).to_le_bytes()).collect())
        })),
    );
    let y = g.op("MatMul", "layer", &["x", &w], vec![]);
    let z = g.op("Add", "layer", &[&y, &b], vec![]);
    let s = g.op("Softmax", "out", &[&z], vec![attr_int("axis", -1)]);
    g.output(
        "y",
        &s,
        DataType::F32,
        &[Dim::sym("batch"), Dim::Fixed(512)],
    );
    g
}

fn big() -> Vec<u8> {
    (0..512 * 512)
        .flat_map(|i| ((i % 97) as f32 * 0.25).to_le_bytes())
        .collect()
}

#[test]
fn inline_model_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.onnx");
    let data = big();
    let stats = save_model(graph(&data), &info(), &path, ExternalData::Never).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(stats.onnx_bytes, bytes.len() as u64);
    let m = ModelProto::decode(bytes.as_slice()).unwrap();
    let g = m.graph.unwrap();
    assert_eq!(m.ir_version, Some(8));
    assert_eq!(
        g.node
            .iter()
            .map(|n| n.name.clone().unwrap())
            .collect::<Vec<_>>(),
        ["layer/MatMul", "layer/Add", "out/Softmax"]
    );
    // The output is the Softmax's own value, renamed: no copying Identity.
    assert_eq!(g.node[2].output, ["y"]);
    assert_eq!(g.initializer.len(), 2);
    assert_eq!(g.initializer[0].name.as_deref(), Some("layer.weight"));
    assert_eq!(g.initializer[0].raw_data.as_deref(), Some(data.as_slice()));
    assert_eq!(
        g.initializer[1].raw_data.as_ref().unwrap()[4..8],
        1f32.to_le_bytes()
    );
    assert!(stats.data_file.is_none());
    assert!(!dir.path().join("m.onnx.partial").exists());
}

#[test]
fn external_data_model_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.onnx");
    let data = big();
    let stats = save_model(graph(&data), &info(), &path, ExternalData::Always).unwrap();
    assert_eq!(stats.data_file.as_deref(), Some("m.onnx.data"));
    let m = ModelProto::decode(std::fs::read(&path).unwrap().as_slice()).unwrap();
    let g = m.graph.unwrap();
    let w = &g.initializer[0];
    assert_eq!(w.data_location, Some(DataLocation::External as i32));
    let kv: std::collections::HashMap<_, _> = w
        .external_data
        .iter()
        .map(|e| (e.key.clone().unwrap(), e.value.clone().unwrap()))
        .collect();
    let offset: usize = kv["offset"].parse().unwrap();
    let length: usize = kv["length"].parse().unwrap();
    assert_eq!(offset % 4096, 0, "big tensors are page aligned");
    let blob = std::fs::read(dir.path().join("m.onnx.data")).unwrap();
    assert_eq!(&blob[offset..offset + length], data.as_slice());
    // The 2 KiB bias is external too; tiny tensors would stay inline.
    assert_eq!(
        g.initializer[1].data_location,
        Some(DataLocation::External as i32)
    );
}

#[test]
fn wrong_lazy_length_fails_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.onnx");
    let mut g = GraphBuilder::new("g");
    g.input("x", DataType::F32, &[Dim::Fixed(2)]);
    let c = g.initializer(
        "c",
        DataType::F32,
        &[2],
        TensorData::Lazy(Box::new(|| Ok(vec![0u8; 4]))),
    );
    let y = g.op("Add", "a", &["x", &c], vec![]);
    g.output("y", &y, DataType::F32, &[Dim::Fixed(2)]);
    let err = save_model(g, &info(), &path, ExternalData::Never).unwrap_err();
    assert!(
        err.to_string().contains("initializer c: has 4 bytes"),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
