//! FP16 graphs for GPU targets: float weights and activations in half precision, the graph's
//! interface kept FP32 (a Cast after each float input, before each float output) so every runtime
//! feeds an FP16 package exactly as an FP32 one, and the ops that must stay FP32 computed in FP32.

use std::collections::HashMap;
use std::path::Path;

use half::f16;
use onnx_writer::onnx::{ModelProto, NodeProto, TensorProto, tensor_proto::DataType as PbType};

use crate::{Result, f32_values, graph_err, node};

/// Ops kept in FP32 by default: `ReduceL2` sums squares over the hidden size (768 values of
/// magnitude 10 already pass FP16's 65504), so the ITC normalisation overflows in half precision.
pub const DEFAULT_KEEP_FP32: &[&str] = &["ReduceL2"];

const F32: i32 = PbType::Float as i32;
const F16: i32 = PbType::Float16 as i32;

fn to_f16_bytes(values: &[f32]) -> Vec<u8> {
    // Out-of-range constants (attention masks use f32::MIN) saturate to FP16's finite range, as
    // transformers does with `finfo(float16).min`: -inf would turn fully masked rows into NaN.
    let max = f16::MAX.to_f32();
    values
        .iter()
        .flat_map(|v| f16::from_f32(v.clamp(-max, max)).to_le_bytes())
        .collect()
}

fn convert_tensor(t: &mut TensorProto, path: &Path) -> Result<()> {
    if t.data_type == Some(F32) {
        let values = f32_values(t, path)?;
        t.raw_data = Some(to_f16_bytes(&values));
        t.float_data.clear();
        t.data_type = Some(F16);
    }
    Ok(())
}

/// Element type of each output, from the op and its input types (our graphs are topologically
/// sorted, so one pass sees every producer first).
fn output_types(n: &NodeProto, types: &HashMap<String, i32>) -> Vec<i32> {
    let input = |i: usize| {
        n.input
            .get(i)
            .and_then(|x| types.get(x))
            .copied()
            .unwrap_or(F32)
    };
    let attr = |name: &str| n.attribute.iter().find(|a| a.name.as_deref() == Some(name));
    let one = match n.op_type.as_deref().unwrap_or("") {
        "Shape" | "Size" | "NonZero" | "ArgMax" | "ArgMin" => PbType::Int64 as i32,
        "Cast" => attr("to").and_then(|a| a.i).unwrap_or(F32 as i64) as i32,
        "Equal" | "Less" | "LessOrEqual" | "Greater" | "GreaterOrEqual" | "And" | "Or" | "Not"
        | "IsNaN" | "IsInf" => PbType::Bool as i32,
        "Where" => input(1),
        "MatMulInteger" | "ConvInteger" => PbType::Int32 as i32,
        "DynamicQuantizeLinear" => {
            return vec![PbType::Uint8 as i32, F32, PbType::Uint8 as i32];
        }
        "Constant" | "ConstantOfShape" => attr("value")
            .and_then(|a| a.t.as_ref())
            .and_then(|t| t.data_type)
            .unwrap_or(F32),
        _ => input(0),
    };
    vec![one; n.output.len()]
}

/// `Gemm(A, W, bias, transB=1)` (the LM head over the tied word embeddings) as
/// `MatMul(A, Transpose(W)) + bias`: the same product in ops every runtime runs in FP16 (tract
/// fails on an FP16 `Gemm`); runtimes fold the Transpose of the constant weight once, at load,
/// and the weight is still stored once.
fn gemm_as_matmul(nodes: Vec<NodeProto>) -> Vec<NodeProto> {
    let mut out = Vec::with_capacity(nodes.len() + 2);
    for n in nodes {
        let plain = n.op_type.as_deref() == Some("Gemm")
            && n.input.len() == 3
            && n.output.len() == 1
            && !n.attribute.is_empty()
            && n.attribute
                .iter()
                .all(|a| a.name.as_deref() == Some("transB") && a.i == Some(1));
        if !plain {
            out.push(n);
            continue;
        }
        let name = n.name.clone().unwrap_or_default();
        let (a, w, bias) = (&n.input[0], &n.input[1], &n.input[2]);
        let (wt, product) = (format!("{name}/weight_t"), format!("{name}/product"));
        out.push(node(
            "Transpose",
            &format!("{name}/transpose_weight"),
            &[w],
            &[&wt],
            vec![onnx_writer::attr_ints("perm", &[1, 0])],
        ));
        out.push(node(
            "MatMul",
            &format!("{name}/matmul"),
            &[a, &wt],
            &[&product],
            vec![],
        ));
        out.push(node(
            "Add",
            &format!("{name}/bias"),
            &[&product, bias],
            &[&n.output[0]],
            vec![],
        ));
    }
    out
}

/// Rewrites an FP32 graph in place; returns how many float initializers became FP16.
pub(crate) fn convert_graph(
    model: &mut ModelProto,
    path: &Path,
    keep_fp32: &[String],
) -> Result<usize> {
    let graph = model
        .graph
        .as_mut()
        .ok_or_else(|| graph_err(path, "no graph"))?;
    if let Some(n) = graph.node.iter().find(|n| {
        matches!(
            n.op_type.as_deref(),
            Some(
                "DynamicQuantizeLinear" | "MatMulInteger" | "MatMulNBits" | "GatherBlockQuantized"
            )
        )
    }) {
        return Err(graph_err(
            path,
            format!(
                "node {:?} is already quantized; convert the FP32 package to FP16",
                n.name.as_deref().unwrap_or("")
            ),
        ));
    }
    graph.node = gemm_as_matmul(std::mem::take(&mut graph.node));
    let mut converted = 0;
    for t in graph.initializer.iter_mut() {
        if t.data_type == Some(F32) {
            converted += 1;
        }
        convert_tensor(t, path)?;
    }
    // Everything below is FP16 unless a kept node produces it: track element types as we go.
    let mut types: HashMap<String, i32> = graph
        .initializer
        .iter()
        .filter_map(|t| Some((t.name.clone()?, t.data_type?)))
        .collect();
    let mut nodes = Vec::with_capacity(graph.node.len() + 16);
    let cast = |from: &str, to: &str, dtype: i32, name: &str| {
        node(
            "Cast",
            name,
            &[from],
            &[to],
            vec![onnx_writer::attr_int("to", dtype as i64)],
        )
    };
    // Float graph inputs: cast to FP16 on entry, under the name the graph already reads.
    let mut renamed: HashMap<String, String> = HashMap::new();
    for i in &graph.input {
        let Some(name) = i.name.clone() else { continue };
        let elem = i
            .r#type
            .as_ref()
            .and_then(|t| match &t.value {
                Some(onnx_writer::onnx::type_proto::Value::TensorType(tt)) => tt.elem_type,
                _ => None,
            })
            .unwrap_or(0);
        if elem == F32 {
            let half = format!("{name}_fp16");
            nodes.push(cast(&name, &half, F16, &format!("{name}/to_fp16")));
            renamed.insert(name, half.clone());
            types.insert(half, F16);
        } else {
            types.insert(name, elem);
        }
    }
    let outputs: std::collections::HashSet<String> =
        graph.output.iter().filter_map(|o| o.name.clone()).collect();
    let mut output_casts = Vec::new();
    for mut n in std::mem::take(&mut graph.node) {
        for x in n.input.iter_mut() {
            if let Some(r) = renamed.get(x) {
                *x = r.clone();
            }
        }
        for a in n.attribute.iter_mut() {
            if let Some(t) = a.t.as_mut() {
                convert_tensor(t, path)?;
            }
            // Casts to float now cast to half.
            if n.op_type.as_deref() == Some("Cast")
                && a.name.as_deref() == Some("to")
                && a.i == Some(F32 as i64)
            {
                a.i = Some(F16 as i64);
            }
        }
        let keep = keep_fp32
            .iter()
            .any(|k| Some(k.as_str()) == n.op_type.as_deref());
        let op_name = n.name.clone().unwrap_or_default();
        if keep {
            for (i, x) in n.input.iter_mut().enumerate() {
                if types.get(x.as_str()) == Some(&F16) {
                    let wide = format!("{x}_fp32_for_{op_name}_{i}");
                    nodes.push(cast(x, &wide, F32, &format!("{op_name}/input{i}_to_fp32")));
                    *x = wide;
                }
            }
            // Undo the Cast rewrite for a kept Cast (it computes in FP32 by definition).
            let out_types = output_types(&n, &types);
            let mut back = Vec::new();
            for (o, t) in n.output.iter_mut().zip(out_types) {
                if t == F32 {
                    let wide = format!("{o}_fp32");
                    back.push(cast(&wide, o, F16, &format!("{op_name}/output_to_fp16")));
                    types.insert(o.clone(), F16);
                    *o = wide;
                } else {
                    types.insert(o.clone(), t);
                }
            }
            nodes.push(n);
            nodes.extend(back);
            continue;
        }
        for (o, t) in n.output.iter().zip(output_types(&n, &types)) {
            types.insert(o.clone(), t);
        }
        nodes.push(n);
    }
    // Float graph outputs: computed in FP16 under a new name, cast back under the old one.
    for n in nodes.iter_mut() {
        for o in n.output.iter_mut() {
            if outputs.contains(o) && types.get(o.as_str()) == Some(&F16) {
                let half = format!("{o}_fp16");
                output_casts.push(cast(&half, o, F32, &format!("{o}/to_fp32")));
                *o = half;
            }
        }
    }
    // Consumers of a renamed output (e.g. a present that is also read inside) read the FP16 value.
    let moved: HashMap<String, String> = output_casts
        .iter()
        .map(|c| (c.output[0].clone(), c.input[0].clone()))
        .collect();
    for n in nodes.iter_mut() {
        for x in n.input.iter_mut() {
            if let Some(r) = moved.get(x) {
                *x = r.clone();
            }
        }
    }
    nodes.extend(output_casts);
    graph.node = nodes;
    Ok(converted)
}
