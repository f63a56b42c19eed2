//! `check --target`: whether each graph of a package runs on another runtime, with reasons. The
//! rules are what was measured on every flavour of the shapes and fixture packages
//! (`docs/runtimes.md`; the portability suite re-measures them): op coverage, the
//! 2 GB protobuf limit, wasm32's 4 GB memory, external data, and where a runtime computes
//! differently from native ONNX Runtime.

use std::path::Path;

use blip_package::{GraphEntry, Package, Runtime};
use onnx_writer::onnx::{ModelProto, NodeProto, tensor_proto::DataType as PbType};
use prost::Message;

use crate::{CheckItem, CheckReport, item};

/// A protobuf message (one graph file without its external data) may not exceed 2 GB.
const PROTOBUF_LIMIT: u64 = 2 << 30;
/// wasm32 addresses 4 GB; onnxruntime-web holds every weight in that heap, plus activations.
const WASM_MEMORY: u64 = 4 << 30;

/// Dynamic-INT8 ops: onnxruntime-web's WebGPU EP has no kernels for them (they run on wasm).
const DYNAMIC_INT8_OPS: [&str; 5] = [
    "DynamicQuantizeLinear",
    "MatMulInteger",
    "ConvInteger",
    "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat",
];

/// `MultiHeadAttention` given a padding mask, an attention bias or a past key/value (inputs 4-7).
fn attention_with_mask_or_past(n: &NodeProto) -> bool {
    n.op_type.as_deref() == Some("MultiHeadAttention")
        && n.input.iter().skip(4).any(|i| !i.is_empty())
}

/// A `Gemm` whose weight is an FP16 initializer (the FP16 package's LM head).
fn fp16_gemm(n: &NodeProto, model: &ModelProto) -> bool {
    n.op_type.as_deref() == Some("Gemm")
        && model.graph.as_ref().is_some_and(|g| {
            g.initializer.iter().any(|t| {
                t.data_type == Some(PbType::Float16 as i32)
                    && n.input.get(1).is_some_and(|b| t.name.as_deref() == Some(b))
            })
        })
}

/// A dynamic-INT8 MatMul whose weight is a full-range QInt8 initializer: a value beyond 7 bits,
/// or values this check cannot see (external data).
fn saturating_int8_matmul(n: &NodeProto, model: &ModelProto) -> bool {
    let op = n.op_type.as_deref().unwrap_or("");
    if !matches!(
        op,
        "MatMulInteger" | "DynamicQuantizeMatMul" | "MatMulIntegerToFloat"
    ) {
        return false;
    }
    model.graph.as_ref().is_some_and(|g| {
        g.initializer.iter().any(|t| {
            t.data_type == Some(PbType::Int8 as i32)
                && n.input.get(1).is_some_and(|b| t.name.as_deref() == Some(b))
                && match &t.raw_data {
                    Some(raw) => raw.iter().any(|&b| !(-64..=63).contains(&(b as i8))),
                    None if !t.int32_data.is_empty() => {
                        t.int32_data.iter().any(|v| !(-64..=63).contains(v))
                    }
                    None => true,
                }
        })
    })
}

/// Whether a graph has FP16 weights (an FP16 package's graph).
fn half_precision(model: &ModelProto) -> bool {
    model.graph.iter().any(|g| {
        g.initializer
            .iter()
            .any(|t| t.data_type == Some(PbType::Float16 as i32))
    })
}

/// Why `target` cannot run the graph `model` as a whole within the portability suite's gates, if it
/// cannot: FP16 normalisation and attention on tract.
fn refused_graph(target: Runtime, model: &ModelProto) -> Option<&'static str> {
    let normalises = || {
        model
            .graph
            .iter()
            .flat_map(|g| g.node.iter())
            .any(|n| matches!(n.op_type.as_deref(), Some("LayerNormalization" | "Softmax")))
    };
    (target == Runtime::Tract && half_precision(model) && normalises()).then_some(
        "FP16: tract computes LayerNormalization, Softmax and the MatMuls between them in half precision, where native ONNX Runtime accumulates in FP32: the portability suite measured RMS distances to FP32 2-8x native's on their outputs (the decoder's logits about 2x, the encoders' states up to 8x), beyond its 1.5x gate; FP16 packages are not made for tract",
    )
}

/// Why `target` cannot run `node`, if it cannot.
fn refused(target: Runtime, node: &NodeProto, model: &ModelProto) -> Option<&'static str> {
    let op = node.op_type.as_deref().unwrap_or("");
    match target {
        Runtime::Tract if attention_with_mask_or_past(node) => {
            Some("MultiHeadAttention with a mask or past key/value is not implemented in tract")
        }
        Runtime::Tract if op == "DynamicQuantizeMatMul" => {
            Some("DynamicQuantizeMatMul is not implemented in tract")
        }
        Runtime::Tract if fp16_gemm(node, model) => {
            Some("tract fails on Gemm with FP16 weights (the LM head)")
        }
        Runtime::OrtMobile if saturating_int8_matmul(node, model) => Some(
            "full-range QInt8 weights: in the ORT format, ORT's x86 kernel sums u8 x s8 products in saturating int16 on CPUs without VNNI (session.x64quantprecision does not reach it); quantize --target web (QUInt8) or --reduce-range",
        ),
        Runtime::Webgpu if attention_with_mask_or_past(node) => Some(
            "MultiHeadAttention with a mask or past key/value is not implemented in the WebGPU EP",
        ),
        _ => None,
    }
}

/// What the runtime computes differently from native ONNX Runtime, if anything (not a failure).
fn notes(target: Runtime, model: &ModelProto) -> Vec<String> {
    let nodes = || model.graph.iter().flat_map(|g| g.node.iter());
    let mut notes = Vec::new();
    let level4 = nodes().any(|n| {
        n.op_type.as_deref() == Some("MatMulNBits")
            && n.attribute
                .iter()
                .any(|a| a.name.as_deref() == Some("accuracy_level") && a.i == Some(4))
    });
    if level4 && !matches!(target, Runtime::Ort | Runtime::Node | Runtime::OrtMobile) {
        notes.push(
            "INT4 accuracy level 4 (int8 compute) only takes effect in native ONNX Runtime: here it computes in float, up to 0.12 from native's numbers (quantize --accuracy-level 0 makes them equal)".into(),
        );
    }
    let dynamic: Vec<&str> = DYNAMIC_INT8_OPS
        .into_iter()
        .filter(|op| nodes().any(|n| n.op_type.as_deref() == Some(op)))
        .collect();
    if target == Runtime::Webgpu && !dynamic.is_empty() {
        notes.push(format!(
            "{} run on wasm, not the GPU (quantize --target webgpu avoids them)",
            dynamic.join(", ")
        ));
    }
    if target == Runtime::Tract && half_precision(model) {
        notes.push(
            "FP16: tract computes in half precision, where native ONNX Runtime accumulates in FP32 (a graph without normalisation or attention, such as the cross K/V projection, stays within the portability suite's gate); FP16 packages are not made for tract".into(),
        );
    }
    notes
}

/// A graph file, read and decoded once for every target; the error names the file.
fn load_graph(pkg: &Package, entry: &GraphEntry) -> Result<ModelProto, String> {
    let path = pkg.dir.join(&entry.file);
    let len = std::fs::metadata(&path)
        .map_err(|e| format!("{}: {e}", entry.file))?
        .len();
    if len > PROTOBUF_LIMIT {
        return Err(format!(
            "{} is {len} bytes, over protobuf's 2 GB: convert with external data",
            entry.file
        ));
    }
    let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", entry.file))?;
    ModelProto::decode(bytes.as_slice()).map_err(|e| format!("{}: {e}", entry.file))
}

fn graph_item(
    role: &str,
    entry: &GraphEntry,
    model: &Result<ModelProto, String>,
    target: Runtime,
) -> CheckItem {
    let name = format!("{role}: runs on {target}");
    let model = match model {
        Ok(m) => m,
        Err(e) => return item(name, Err(e.clone())),
    };
    let mut refusals: Vec<String> = refused_graph(target, model)
        .map(str::to_string)
        .into_iter()
        .collect();
    for node in model.graph.iter().flat_map(|g| g.node.iter()) {
        // Each reason names its op.
        if let Some(why) = refused(target, node, model)
            && !refusals.iter().any(|r| r == why)
        {
            refusals.push(why.to_string());
        }
    }
    if !refusals.is_empty() {
        return item(name, Err(refusals.join("; ")));
    }
    let mut reason = format!(
        "every op runs there ({} nodes)",
        model.graph.as_ref().map_or(0, |g| g.node.len())
    );
    if entry.data_file.is_some() && matches!(target, Runtime::Web | Runtime::Webgpu) {
        reason += "; its external data must be handed to the session (blip-web does)";
    }
    for note in notes(target, model) {
        reason += "; ";
        reason += &note;
    }
    item(name, Ok(reason))
}

fn package_items(pkg: &Package, target: Runtime) -> Vec<CheckItem> {
    let claimed = Runtime::claimed(&pkg.manifest.runtimes);
    let names: Vec<String> = claimed.iter().map(|r| r.to_string()).collect();
    let mut items = vec![item(
        format!("package: made for {target}"),
        Ok(if claimed.contains(&target) {
            format!("yes (made for {})", names.join(", "))
        } else {
            format!(
                "no, made for {}: it may still run (see each graph), but another flavour is the one for {target}{}",
                names.join(", "),
                match target {
                    Runtime::Web => " (quantize --target web)",
                    Runtime::Webgpu => " (quantize --target webgpu)",
                    _ => "",
                }
            )
        }),
    )];
    if matches!(target, Runtime::Web | Runtime::Webgpu) {
        let total: u64 = pkg.manifest.graphs.values().map(|g| g.bytes).sum();
        items.push(item(
            format!("package: fits wasm32 memory on {target}"),
            if total < WASM_MEMORY / 2 {
                Ok(format!(
                    "{total} bytes of graphs, under half of wasm32's 4 GB (the rest for activations)"
                ))
            } else {
                Err(format!(
                    "{total} bytes of graphs: with activations they do not fit wasm32's 4 GB; quantize (--target {target})"
                ))
            },
        ));
    }
    if target == Runtime::Openvino {
        items.push(item(
            "package: OpenVINO precision".into(),
            Ok("set INFERENCE_PRECISION_HINT=f32: OpenVINO otherwise computes in bf16 on CPUs with AVX512-BF16 (FP32 graphs off by up to 0.11)".into()),
        ));
    }
    items
}

/// Whether each graph of the package at `dir` runs on each of `targets`, with reasons.
pub fn check_targets(dir: &Path, targets: &[Runtime]) -> CheckReport {
    let package = dir.display().to_string();
    let pkg = match Package::open_unverified(dir) {
        Ok(p) => p,
        Err(e) => {
            return CheckReport {
                package,
                items: vec![item("package: manifest".into(), Err(e.to_string()))],
            };
        }
    };
    // Items by target, each graph decoded once (one at a time: base graphs are hundreds of MB).
    let mut by_target: Vec<Vec<CheckItem>> =
        targets.iter().map(|&t| package_items(&pkg, t)).collect();
    for (role, entry) in &pkg.manifest.graphs {
        let model = load_graph(&pkg, entry);
        for (items, &target) in by_target.iter_mut().zip(targets) {
            items.push(graph_item(role, entry, &model, target));
        }
    }
    CheckReport {
        package,
        items: by_target.concat(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use onnx_writer::onnx::{GraphProto, TensorProto};

    /// A graph of `nodes` with one initializer `w` of type `dtype`.
    fn graph_with_weight(nodes: Vec<NodeProto>, dtype: PbType) -> ModelProto {
        ModelProto {
            graph: Some(GraphProto {
                node: nodes,
                initializer: vec![TensorProto {
                    name: Some("w".into()),
                    data_type: Some(dtype as i32),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn an_fp16_gemm_is_refused_on_tract_only() {
        let gemm = NodeProto {
            op_type: Some("Gemm".into()),
            input: vec!["x".into(), "w".into(), "b".into()],
            output: vec!["y".into()],
            ..Default::default()
        };
        let model = |dtype: PbType| graph_with_weight(vec![gemm.clone()], dtype);
        let half = model(PbType::Float16);
        assert!(refused(Runtime::Tract, &gemm, &half).is_some_and(|r| r.contains("FP16")));
        for r in [Runtime::Web, Runtime::Openvino, Runtime::Ort] {
            assert_eq!(refused(r, &gemm, &half), None);
        }
        assert_eq!(refused(Runtime::Tract, &gemm, &model(PbType::Float)), None);
    }

    #[test]
    fn fp16_normalisation_is_refused_on_tract_only() {
        let node = |op: &str| NodeProto {
            op_type: Some(op.into()),
            input: vec!["x".into(), "w".into()],
            output: vec!["y".into()],
            ..Default::default()
        };
        let model = |dtype: PbType, ops: &[&str]| {
            graph_with_weight(ops.iter().map(|op| node(op)).collect(), dtype)
        };
        for ops in [
            &["MatMul", "LayerNormalization"][..],
            &["MatMul", "Softmax"],
        ] {
            let half = model(PbType::Float16, ops);
            assert!(
                refused_graph(Runtime::Tract, &half).is_some_and(|r| r.contains("half precision")),
                "{ops:?}"
            );
            for r in [
                Runtime::Web,
                Runtime::Openvino,
                Runtime::Ort,
                Runtime::OrtMobile,
            ] {
                assert_eq!(refused_graph(r, &half), None, "{ops:?} on {r}");
            }
            assert_eq!(
                refused_graph(Runtime::Tract, &model(PbType::Float, ops)),
                None
            );
        }
        // A projection alone (the cross K/V graph) stays within the gate on tract.
        assert_eq!(
            refused_graph(Runtime::Tract, &model(PbType::Float16, &["MatMul", "Add"])),
            None
        );
    }

    #[test]
    fn full_range_qint8_weights_are_refused_on_ort_mobile_only() {
        let matmul = NodeProto {
            op_type: Some("MatMulInteger".into()),
            input: vec!["x".into(), "w".into(), "xz".into(), "wz".into()],
            output: vec!["y".into()],
            ..Default::default()
        };
        let model = |dtype: PbType, raw: Vec<u8>| ModelProto {
            graph: Some(GraphProto {
                node: vec![matmul.clone()],
                initializer: vec![TensorProto {
                    name: Some("w".into()),
                    data_type: Some(dtype as i32),
                    raw_data: Some(raw),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let full = model(PbType::Int8, vec![3, (-100i8) as u8, 60]);
        assert!(refused(Runtime::OrtMobile, &matmul, &full).is_some_and(|r| r.contains("QInt8")));
        for r in [Runtime::Ort, Runtime::Node, Runtime::Web, Runtime::Openvino] {
            assert_eq!(refused(r, &matmul, &full), None);
        }
        // 7-bit weights (--reduce-range) and QUInt8 weights (--target web) do not saturate.
        let reduced = model(PbType::Int8, vec![3, (-63i8) as u8, 63]);
        assert_eq!(refused(Runtime::OrtMobile, &matmul, &reduced), None);
        let unsigned = model(PbType::Uint8, vec![0, 200, 255]);
        assert_eq!(refused(Runtime::OrtMobile, &matmul, &unsigned), None);
    }
}
