//! Quantizing blip-onnx packages, in Rust, on the ONNX graphs.
//!
//! INT8 dynamic quantization as ONNX Runtime's `quantize_dynamic` does it, in standard ops: every
//! `MatMul` (and the LM head's `Gemm`) with a constant weight becomes
//! `DynamicQuantizeLinear(x) → MatMulInteger(x_q, W_q, x_zp, W_zp) → Cast → Mul(x_scale · w_scale)`,
//! with per-output-channel symmetric int8 weights (optionally reduce-range, 7 bits, for CPUs without
//! VNNI). ORT fuses the pattern into its integer kernels. Convolutions (the ViT patch embedding) stay
//! float (chosen when onnxruntime-web lacked `ConvInteger`; 1.30 has it). [`Target`] picks the
//! flavour per runtime (QUInt8 on every graph for the browser's wasm kernels).

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use blip_package::{GraphEntry, Manifest, Package, Precision};
use onnx_writer::onnx::{
    AttributeProto, ModelProto, NodeProto, TensorProto, tensor_proto::DataLocation,
    tensor_proto::DataType as PbType,
};
use prost::Message;
use sha2::{Digest, Sha256};

mod embedding;
mod fp16;
mod target;

pub use fp16::DEFAULT_KEEP_FP32;
pub use target::Target;

#[derive(Debug, thiserror::Error)]
pub enum QuantizeError {
    #[error(transparent)]
    Package(#[from] blip_package::PackageError),
    #[error("{path}: {message}")]
    Graph { path: PathBuf, message: String },
    #[error("output {path} already exists; pass --force to replace it")]
    OutputExists { path: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "--policy names {role:?}, which is not a graph of {package}; its graphs are {}, and the policies are {}",
        valid.join(", "),
        POLICY_NAMES.join(", ")
    )]
    UnknownRole {
        role: String,
        package: PathBuf,
        valid: Vec<String>,
    },
    #[error("the policy selects none of {package}'s graphs ({}); nothing would be quantized", graphs.join(", "))]
    NothingSelected {
        package: PathBuf,
        graphs: Vec<String>,
    },
    #[error(
        "{path}: {role} is already {precision}; quantize the FP32 package it came from (a second pass would leave it {precision} under a new label)"
    )]
    AlreadyQuantized {
        path: PathBuf,
        role: String,
        precision: Precision,
    },
    #[error("--target {target} refuses {precision}: {reason}")]
    TargetRefuses {
        target: &'static str,
        precision: Precision,
        reason: &'static str,
    },
    #[error(
        "{package} is made for {}, and a --target {target} package runs on {}: the result would be meant for no runtime; quantize the FP32 package it came from",
        source_runtimes.join(", "), target_runtimes.join(", ")
    )]
    NoRuntime {
        package: PathBuf,
        target: &'static str,
        source_runtimes: Vec<String>,
        target_runtimes: Vec<String>,
    },
}

/// The named policies `--policy` takes besides comma-separated roles.
pub const POLICY_NAMES: [&str; 4] = ["default", "encoders", "decoder", "all"];

pub type Result<T> = std::result::Result<T, QuantizeError>;

/// Which graphs to quantize.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Policy {
    /// Encoders (vision, text, ITM, question encoder, cross K/V) INT8; the decoder stays FP32 (plain
    /// INT8 of the BLIP text decoder is known to lose accuracy; weight-only INT4/INT8 is the plan there).
    Encoders,
    /// Every graph INT8.
    All,
    /// The decoder only (weight-only INT4 is meant for it: its per-step cost is reading weights).
    Decoder,
    /// These roles only.
    Roles(Vec<String>),
}

impl Policy {
    /// Parses a policy name: `default` (the target's choice for the precision,
    /// [`Target::default_policy`]), `encoders`, `decoder`, `all`, or comma-separated roles.
    pub fn parse(name: &str, scheme: &Scheme, target: Target) -> Policy {
        match name {
            "default" => target.default_policy(scheme),
            "encoders" => Policy::Encoders,
            "decoder" => Policy::Decoder,
            "all" => Policy::All,
            roles => Policy::Roles(roles.split(',').map(|r| r.trim().to_string()).collect()),
        }
    }

    fn includes(&self, role: &str) -> bool {
        match self {
            Policy::Encoders => role != blip_package::DECODER,
            Policy::All => true,
            Policy::Decoder => role == blip_package::DECODER,
            Policy::Roles(r) => r.iter().any(|x| x == role),
        }
    }
}

/// What the selected MatMuls become: a precision with its parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Dynamic INT8: int8 per-channel weights, activations quantized at run time (standard ops).
    Int8,
    /// Weight-only INT4 (`com.microsoft.MatMulNBits`), symmetric blocks of `block_size` along K.
    /// `accuracy_level` 4 lets ORT multiply in int8 (fastest on CPU); 0 computes in float.
    Int4 {
        block_size: usize,
        accuracy_level: i64,
    },
    /// FP16 weights and activations (for GPU targets), the interface and `keep_fp32` ops in FP32.
    Fp16,
}

/// INT4 block size along K: 128, the usual group size of weight-only INT4.
pub const DEFAULT_INT4_BLOCK_SIZE: usize = 128;
/// INT4 accuracy level: 4 multiplies in int8 (fastest on CPU).
pub const DEFAULT_INT4_ACCURACY_LEVEL: i64 = 4;

impl Scheme {
    /// The precision the quantized graphs have.
    pub fn precision(&self) -> Precision {
        match self {
            Scheme::Int8 => Precision::Int8,
            Scheme::Int4 { .. } => Precision::Int4,
            Scheme::Fp16 => Precision::Fp16,
        }
    }

    /// What each precision is meant for: INT8 the encoders, INT4 the decoder, FP16 every graph.
    pub fn default_policy(&self) -> Policy {
        match self {
            Scheme::Int8 => Policy::Encoders,
            Scheme::Int4 { .. } => Policy::Decoder,
            Scheme::Fp16 => Policy::All,
        }
    }
}

/// INT8 weight type. QInt8 is the fast one on x86 with VNNI; QUInt8 (zero point 128) is what
/// some targets' integer kernels expect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightType {
    #[default]
    QInt8,
    QUInt8,
}

#[derive(Debug, Clone)]
pub struct QuantizeOptions {
    pub scheme: Scheme,
    pub policy: Policy,
    /// 7-bit weights ([-63, 63]): avoids int16 accumulation saturation on CPUs without VNNI.
    pub reduce_range: bool,
    pub weight_type: WeightType,
    /// INT4 blocks symmetric around zero point 8 (else per-block min/max with a zero point).
    pub int4_symmetric: bool,
    /// Also quantize the word-embedding tables (`Gather`): needed for the package-size targets.
    pub embeddings: bool,
    /// FP16: op types computed in FP32 (inputs cast up, outputs cast down).
    pub keep_fp32: Vec<String>,
    /// Where the package is meant to run: what its manifest's `runtimes` becomes (the other
    /// fields' defaults for a target are [`Target`]'s).
    pub target: Target,
    pub force: bool,
}

impl QuantizeOptions {
    /// Full-range QInt8 weights: their int16 pair sums saturate on x86 without VNNI unless the
    /// session asks for precise products (see [`Target::narrow`]).
    pub fn saturating_int8(&self) -> bool {
        self.scheme == Scheme::Int8 && self.weight_type == WeightType::QInt8 && !self.reduce_range
    }
}

impl Default for QuantizeOptions {
    fn default() -> Self {
        QuantizeOptions {
            scheme: Scheme::Int8,
            policy: Policy::Encoders,
            reduce_range: false,
            weight_type: WeightType::QInt8,
            int4_symmetric: true,
            embeddings: true,
            keep_fp32: DEFAULT_KEEP_FP32.iter().map(|s| s.to_string()).collect(),
            target: Target::Native,
            force: false,
        }
    }
}

#[derive(Debug, Clone)]
pub struct GraphStats {
    pub role: String,
    pub quantized_matmuls: usize,
    /// Word-embedding `Gather`s quantized (INT8/INT4) or float tensors converted (FP16).
    pub other_rewrites: usize,
    pub bytes_before: u64,
    pub bytes_after: u64,
}

fn graph_err(path: &Path, message: impl Into<String>) -> QuantizeError {
    QuantizeError::Graph {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// The values of a float initializer, checked against its dims (a graph file is outside input:
/// a tensor whose data does not match its shape must not reach the indexing below).
fn f32_values(t: &TensorProto, path: &Path) -> Result<Vec<f32>> {
    if t.data_type != Some(PbType::Float as i32) {
        return Err(graph_err(path, format!("{:?} is not float", t.name)));
    }
    let values: Vec<f32> = match &t.raw_data {
        Some(raw) => raw
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        None => t.float_data.clone(),
    };
    let expected = t.dims.iter().try_fold(1usize, |n, &d| {
        usize::try_from(d)
            .ok()
            .filter(|&d| d > 0)
            .and_then(|d| n.checked_mul(d))
    });
    if expected != Some(values.len()) {
        return Err(graph_err(
            path,
            format!(
                "tensor {:?} has {} values for dims {:?} (a truncated or damaged graph)",
                t.name.as_deref().unwrap_or(""),
                values.len(),
                t.dims
            ),
        ));
    }
    Ok(values)
}

/// Reads a model; external tensors are loaded inline (the quantized graph is written inline).
fn load_model(path: &Path) -> Result<ModelProto> {
    let bytes = std::fs::read(path).map_err(|source| QuantizeError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut model =
        ModelProto::decode(bytes.as_slice()).map_err(|e| graph_err(path, e.to_string()))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    if let Some(g) = model.graph.as_mut() {
        for t in g
            .initializer
            .iter_mut()
            .filter(|t| t.data_location == Some(DataLocation::External as i32))
        {
            let get = |k: &str| {
                t.external_data
                    .iter()
                    .find(|e| e.key.as_deref() == Some(k))
                    .and_then(|e| e.value.clone())
            };
            let location = get("location")
                .ok_or_else(|| graph_err(path, "external tensor without location"))?;
            let offset: u64 = get("offset").and_then(|v| v.parse().ok()).unwrap_or(0);
            let length: usize = get("length").and_then(|v| v.parse().ok()).unwrap_or(0);
            let data_path = dir.join(&location);
            let mut f = std::fs::File::open(&data_path).map_err(|source| QuantizeError::Io {
                path: data_path.clone(),
                source,
            })?;
            std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(offset)).map_err(|source| {
                QuantizeError::Io {
                    path: data_path.clone(),
                    source,
                }
            })?;
            let mut buf = vec![0u8; length];
            f.read_exact(&mut buf).map_err(|source| QuantizeError::Io {
                path: data_path.clone(),
                source,
            })?;
            t.raw_data = Some(buf);
            t.data_location = None;
            t.external_data.clear();
        }
    }
    Ok(model)
}

fn tensor(name: &str, dtype: PbType, dims: &[i64], raw: Vec<u8>) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        data_type: Some(dtype as i32),
        dims: dims.to_vec(),
        raw_data: Some(raw),
        ..Default::default()
    }
}

fn node(
    op: &str,
    name: &str,
    inputs: &[&str],
    outputs: &[&str],
    attribute: Vec<AttributeProto>,
) -> NodeProto {
    NodeProto {
        op_type: Some(op.into()),
        name: Some(name.into()),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        attribute,
        ..Default::default()
    }
}

/// Symmetric per-column int8: `w[k, n] ≈ q[k, n] · scale[n]`.
fn quantize_columns(w: &[f32], k: usize, n: usize, qmax: f32) -> (Vec<u8>, Vec<f32>) {
    let mut scale = vec![0f32; n];
    for row in w.chunks_exact(n) {
        for (s, v) in scale.iter_mut().zip(row) {
            *s = s.max(v.abs());
        }
    }
    for s in scale.iter_mut() {
        *s = if *s > 0.0 { *s / qmax } else { 1.0 };
    }
    let mut q = Vec::with_capacity(k * n);
    for row in w.chunks_exact(n) {
        for (v, s) in row.iter().zip(&scale) {
            q.push((v / s).round().clamp(-qmax, qmax) as i8 as u8);
        }
    }
    (q, scale)
}

/// A float MatMul with a constant 2-D weight, or a `Gemm(transB=1)` head, to be rewritten.
struct WeightMatMul<'a> {
    node: &'a NodeProto,
    weight: &'a TensorProto,
    /// Gemm(transB=1): the weight is `[N, K]` (a MatMul weight is `[K, N]`).
    gemm: bool,
}

impl WeightMatMul<'_> {
    fn name(&self) -> String {
        self.node.name.clone().unwrap_or_default()
    }
    fn weight_name(&self) -> String {
        self.weight.name.clone().unwrap_or_default()
    }
    /// `(K, N)` of the product.
    fn k_n(&self) -> (usize, usize) {
        let (r, c) = (self.weight.dims[0] as usize, self.weight.dims[1] as usize);
        if self.gemm { (c, r) } else { (r, c) }
    }
}

/// Walks the graph, hands every eligible MatMul / Gemm to `rewrite` (which emits its replacement nodes
/// and initializers), keeps the other nodes, and drops float weights nothing reads any more.
fn rewrite_weight_matmuls(
    model: &mut ModelProto,
    path: &Path,
    mut rewrite: impl FnMut(&WeightMatMul<'_>, &mut Vec<NodeProto>, &mut Vec<TensorProto>) -> Result<()>,
) -> Result<usize> {
    let graph = model
        .graph
        .as_mut()
        .ok_or_else(|| graph_err(path, "no graph"))?;
    let inits: HashMap<String, usize> = graph
        .initializer
        .iter()
        .enumerate()
        .filter_map(|(i, t)| t.name.clone().map(|n| (n, i)))
        .collect();
    let mut new_nodes = Vec::with_capacity(graph.node.len() * 2);
    let mut new_inits = Vec::new();
    let mut count = 0;
    for n in std::mem::take(&mut graph.node) {
        let op = n.op_type.as_deref().unwrap_or("");
        let plain_gemm = n
            .attribute
            .iter()
            .all(|a| matches!(a.name.as_deref(), Some("transB")))
            && n.attribute
                .iter()
                .any(|a| a.name.as_deref() == Some("transB") && a.i == Some(1));
        let weight = n
            .input
            .get(1)
            .and_then(|w| inits.get(w))
            .map(|&i| &graph.initializer[i]);
        // A node without an output (a damaged graph) is left alone rather than indexed.
        let eligible = weight
            .filter(|_| !n.output.is_empty())
            .filter(|w| w.dims.len() == 2 && w.data_type == Some(PbType::Float as i32))
            .filter(|_| op == "MatMul" || (op == "Gemm" && plain_gemm));
        match eligible {
            Some(w) => {
                rewrite(
                    &WeightMatMul {
                        node: &n,
                        weight: w,
                        gemm: op == "Gemm",
                    },
                    &mut new_nodes,
                    &mut new_inits,
                )?;
                count += 1;
            }
            None => new_nodes.push(n),
        }
    }
    graph.node = new_nodes;
    let used: std::collections::HashSet<String> = graph
        .node
        .iter()
        .flat_map(|n| n.input.iter().cloned())
        .collect();
    graph
        .initializer
        .retain(|t| t.name.as_ref().is_some_and(|n| used.contains(n)));
    let mut seen = std::collections::HashSet::new();
    graph.initializer.extend(
        new_inits
            .into_iter()
            .filter(|t| seen.insert(t.name.clone())),
    );
    Ok(count)
}

/// Dynamic INT8: `DynamicQuantizeLinear(x) → MatMulInteger → Cast → Mul(x_scale · w_scale)` (+ bias for Gemm).
fn quantize_graph(
    model: &mut ModelProto,
    path: &Path,
    reduce_range: bool,
    weight_type: WeightType,
) -> Result<usize> {
    let qmax = if reduce_range { 63.0 } else { 127.0 };
    // One DynamicQuantizeLinear per activation, shared by the MatMuls that read it (Q, K, V).
    let mut dynq: HashMap<String, [String; 3]> = HashMap::new();
    rewrite_weight_matmuls(model, path, |m, nodes, inits| {
        let (name, out, x) = (m.name(), m.node.output[0].clone(), m.node.input[0].clone());
        let values = f32_values(m.weight, path)?;
        let (k, cols) = m.k_n();
        // MatMulInteger wants B as [K, N]: a Gemm(transB) weight is transposed first.
        let wt = if m.gemm {
            let mut t = vec![0f32; values.len()];
            for r in 0..cols {
                for c in 0..k {
                    t[c * cols + r] = values[r * k + c];
                }
            }
            t
        } else {
            values
        };
        let (mut q, scale) = quantize_columns(&wt, k, cols, qmax);
        // QUInt8: the same codes shifted by the zero point 128.
        let (wtype, zero) = match weight_type {
            WeightType::QInt8 => (PbType::Int8, 0u8),
            WeightType::QUInt8 => {
                q.iter_mut()
                    .for_each(|v| *v = (*v as i8 as i16 + 128) as u8);
                (PbType::Uint8, 128u8)
            }
        };
        let wname = m.weight_name();
        let (qn, sn, zn) = (
            format!("{wname}_quantized"),
            format!("{wname}_scale"),
            format!("{wname}_zero_point"),
        );
        inits.push(tensor(&qn, wtype, &[k as i64, cols as i64], q));
        inits.push(tensor(
            &sn,
            PbType::Float,
            &[cols as i64],
            scale.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ));
        inits.push(tensor(&zn, wtype, &[cols as i64], vec![zero; cols]));
        let [xq, xs, xz] = dynq
            .entry(x.clone())
            .or_insert_with(|| {
                let base = format!("{x}_dynq");
                let names = [
                    format!("{base}_q"),
                    format!("{base}_scale"),
                    format!("{base}_zp"),
                ];
                nodes.push(node(
                    "DynamicQuantizeLinear",
                    &format!("{name}/DynamicQuantizeLinear"),
                    &[&x],
                    &[&names[0], &names[1], &names[2]],
                    vec![],
                ));
                names
            })
            .clone();
        let (yi, yf, s) = (
            format!("{out}_int32"),
            format!("{out}_int32_float"),
            format!("{out}_scale"),
        );
        nodes.push(node(
            "MatMulInteger",
            &format!("{name}/MatMulInteger"),
            &[&xq, &qn, &xz, &zn],
            &[&yi],
            vec![],
        ));
        nodes.push(cast_to_float(&name, &yi, &yf));
        nodes.push(node(
            "Mul",
            &format!("{name}/scale"),
            &[&xs, &sn],
            &[&s],
            vec![],
        ));
        push_output(nodes, m, &name, "dequantize", "Mul", &[&yf, &s]);
        Ok(())
    })
}

/// `Cast(to=float)` of an integer tensor (the step before a dequantizing `Mul`).
fn cast_to_float(name: &str, input: &str, output: &str) -> NodeProto {
    node(
        "Cast",
        &format!("{name}/Cast"),
        &[input],
        &[output],
        vec![onnx_writer::attr_int("to", PbType::Float as i64)],
    )
}

/// Emits the node producing the rewritten op's output, adding the Gemm's bias when it has one.
fn push_output(
    nodes: &mut Vec<NodeProto>,
    m: &WeightMatMul<'_>,
    name: &str,
    what: &str,
    op: &str,
    inputs: &[&str],
) {
    let out = m.node.output[0].clone();
    match m.node.input.get(2).filter(|_| m.gemm) {
        Some(bias) => {
            let y = format!("{out}_nobias");
            nodes.push(node(op, &format!("{name}/{what}"), inputs, &[&y], vec![]));
            nodes.push(node(
                "Add",
                &format!("{name}/bias"),
                &[&y, bias],
                &[&out],
                vec![],
            ));
        }
        None => nodes.push(node(op, &format!("{name}/{what}"), inputs, &[&out], vec![])),
    }
}

/// Symmetric 4-bit blocks along K for one output column: MatMulNBits' `B[n]` bytes and `scales[n]`.
fn quantize_q4_column(col: &[f32], block: usize) -> (Vec<u8>, Vec<f32>) {
    let blocks = col.len().div_ceil(block);
    let mut bytes = Vec::with_capacity(blocks * block / 2);
    let mut scales = Vec::with_capacity(blocks);
    for b in 0..blocks {
        let vals: Vec<f32> = (0..block)
            .map(|i| col.get(b * block + i).copied().unwrap_or(0.0))
            .collect();
        let max = vals.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = if max > 0.0 { max / 7.0 } else { 1.0 };
        // Codes are value/scale + 8 (MatMulNBits' default zero point), two per byte, low nibble first.
        let code = |v: f32| ((v / scale).round().clamp(-8.0, 7.0) + 8.0) as u8;
        for pair in vals.chunks(2) {
            bytes.push(code(pair[0]) | (code(pair[1]) << 4));
        }
        scales.push(scale);
    }
    (bytes, scales)
}

/// Asymmetric 4-bit blocks: `v ≈ (code - zp) · scale` with the block's min and max mapped to 0 and 15.
fn quantize_q4_column_asym(col: &[f32], block: usize) -> (Vec<u8>, Vec<f32>, Vec<u8>) {
    let blocks = col.len().div_ceil(block);
    let mut bytes = Vec::with_capacity(blocks * block / 2);
    let (mut scales, mut zps) = (Vec::with_capacity(blocks), Vec::with_capacity(blocks));
    for b in 0..blocks {
        let vals: Vec<f32> = (0..block)
            .map(|i| col.get(b * block + i).copied().unwrap_or(0.0))
            .collect();
        // The range always holds 0 so that padding and exact zeros stay exact.
        let lo = vals.iter().fold(0f32, |m, v| m.min(*v));
        let hi = vals.iter().fold(0f32, |m, v| m.max(*v));
        let scale = if hi > lo { (hi - lo) / 15.0 } else { 1.0 };
        let zp = (-lo / scale).round().clamp(0.0, 15.0);
        let code = |v: f32| ((v / scale).round() + zp).clamp(0.0, 15.0) as u8;
        for pair in vals.chunks(2) {
            bytes.push(code(pair[0]) | (code(pair[1]) << 4));
        }
        scales.push(scale);
        zps.push(zp as u8);
    }
    (bytes, scales, zps)
}

/// Weight-only INT4: `com.microsoft.MatMulNBits` with blocks along K (+ bias for Gemm).
/// The INT4 block for a tensor whose blocked axis has `k` values: the largest power of two
/// between 16 and `requested` that divides `k`, so a narrow model (hidden 32 with the default
/// 128) gets blocks that fit instead of padded or refused ones; `None` when no such block exists.
pub fn fit_block(requested: usize, k: usize) -> Option<usize> {
    let mut b = requested;
    while b >= 16 {
        if k.is_multiple_of(b) {
            return Some(b);
        }
        b /= 2;
    }
    None
}

/// The manifest note's words for the INT4 blocks used (`requested` unless a tensor needed less).
fn blocks_note(requested: usize, used: &std::collections::BTreeSet<usize>) -> String {
    let list: Vec<String> = used.iter().rev().map(|b| b.to_string()).collect();
    if used.iter().all(|&b| b == requested) {
        format!("block {requested}")
    } else {
        format!(
            "block {} ({requested} requested; the largest power of two >= 16 dividing each K)",
            list.join("/")
        )
    }
}

fn quantize_graph_q4(
    model: &mut ModelProto,
    path: &Path,
    requested: usize,
    accuracy_level: i64,
    symmetric: bool,
    used: &mut std::collections::BTreeSet<usize>,
) -> Result<usize> {
    if !requested.is_power_of_two() || requested < 16 {
        return Err(graph_err(
            path,
            format!("block size {requested} must be a power of two, at least 16"),
        ));
    }
    let count = rewrite_weight_matmuls(model, path, |m, nodes, inits| {
        let values = f32_values(m.weight, path)?;
        let (k, n_out) = m.k_n();
        // MatMulNBits pads the last block, so a K no block divides keeps the requested size.
        let block = fit_block(requested, k).unwrap_or(requested);
        used.insert(block);
        let cols = m.weight.dims[1] as usize;
        // MatMulNBits takes B as [N, K]: a MatMul weight [K, N] is read by column, a Gemm(transB) one by row.
        let column = |j: usize| -> Vec<f32> {
            if m.gemm {
                values[j * cols..(j + 1) * cols].to_vec()
            } else {
                (0..k).map(|r| values[r * cols + j]).collect()
            }
        };
        let blocks = k.div_ceil(block);
        let mut packed = Vec::with_capacity(n_out * blocks * block / 2);
        let mut scales = Vec::with_capacity(n_out * blocks);
        // Zero points: per column, two blocks' points per byte, low nibble first.
        let mut zero_points = Vec::new();
        for j in 0..n_out {
            if symmetric {
                let (b, s) = quantize_q4_column(&column(j), block);
                packed.extend(b);
                scales.extend(s);
            } else {
                let (b, s, z) = quantize_q4_column_asym(&column(j), block);
                packed.extend(b);
                scales.extend(s);
                zero_points.extend(
                    z.chunks(2)
                        .map(|p| p[0] | (p.get(1).copied().unwrap_or(0) << 4)),
                );
            }
        }
        let wname = m.weight_name();
        let (qn, sn, zn) = (
            format!("{wname}_q4"),
            format!("{wname}_q4_scales"),
            format!("{wname}_q4_zero_points"),
        );
        if !symmetric {
            inits.push(tensor(
                &zn,
                PbType::Uint8,
                &[zero_points.len() as i64],
                std::mem::take(&mut zero_points),
            ));
        }
        inits.push(tensor(
            &qn,
            PbType::Uint8,
            &[n_out as i64, blocks as i64, (block / 2) as i64],
            packed,
        ));
        inits.push(tensor(
            &sn,
            PbType::Float,
            &[(n_out * blocks) as i64],
            scales.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ));
        let attrs = vec![
            onnx_writer::attr_int("K", k as i64),
            onnx_writer::attr_int("N", n_out as i64),
            onnx_writer::attr_int("bits", 4),
            onnx_writer::attr_int("block_size", block as i64),
            onnx_writer::attr_int("accuracy_level", accuracy_level),
        ];
        let name = m.name();
        let mut tmp = Vec::new();
        let inputs: Vec<&str> = if symmetric {
            vec![&m.node.input[0], &qn, &sn]
        } else {
            vec![&m.node.input[0], &qn, &sn, &zn]
        };
        push_output(&mut tmp, m, &name, "MatMulNBits", "MatMulNBits", &inputs);
        tmp[0].attribute = attrs;
        tmp[0].domain = Some("com.microsoft".into());
        nodes.extend(tmp);
        Ok(())
    })?;
    ensure_ms_opset(model);
    Ok(count)
}

fn ensure_ms_opset(model: &mut ModelProto) {
    if !model
        .opset_import
        .iter()
        .any(|o| o.domain.as_deref() == Some("com.microsoft"))
    {
        model
            .opset_import
            .push(onnx_writer::onnx::OperatorSetIdProto {
                domain: Some("com.microsoft".into()),
                version: Some(1),
            });
    }
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Writes a quantized copy of the package at `src` to `out` (atomically, as the converter does).
pub fn quantize_package(src: &Path, out: &Path, opts: &QuantizeOptions) -> Result<Vec<GraphStats>> {
    if out.exists() && !opts.force {
        return Err(QuantizeError::OutputExists {
            path: out.to_path_buf(),
        });
    }
    // Opening verifies the checksums: a damaged graph is refused, not copied with a stale one.
    let pkg = Package::open(src)?;
    check_selection(&pkg, opts)?;
    check_target(&pkg, opts)?;
    blip_package::write_staged(out, |tmp| write_quantized(&pkg, tmp, opts)).map_err(|e| {
        e.into_io(out).unwrap_or_else(|source| QuantizeError::Io {
            path: out.to_path_buf(),
            source,
        })
    })
}

/// The precision must suit the target, and the result must still be meant for some runtime.
fn check_target(pkg: &Package, opts: &QuantizeOptions) -> Result<()> {
    let target = opts.target;
    if let Some(reason) = target.refuses(&opts.scheme) {
        return Err(QuantizeError::TargetRefuses {
            target: target.name(),
            precision: opts.scheme.precision(),
            reason,
        });
    }
    if target
        .narrow(&pkg.manifest.runtimes, opts.saturating_int8())
        .is_empty()
    {
        let names = |rs: &[blip_package::Runtime]| rs.iter().map(|r| r.to_string()).collect();
        return Err(QuantizeError::NoRuntime {
            package: pkg.dir.clone(),
            target: target.name(),
            source_runtimes: names(&blip_package::Runtime::claimed(&pkg.manifest.runtimes)),
            target_runtimes: names(target.runtimes()),
        });
    }
    Ok(())
}

/// The policy must name graphs the package has and select at least one, each still FP32.
fn check_selection(pkg: &Package, opts: &QuantizeOptions) -> Result<()> {
    let graphs: Vec<String> = pkg.manifest.graphs.keys().cloned().collect();
    if let Policy::Roles(roles) = &opts.policy
        && let Some(role) = roles.iter().find(|r| !graphs.contains(r))
    {
        return Err(QuantizeError::UnknownRole {
            role: role.clone(),
            package: pkg.dir.clone(),
            valid: graphs,
        });
    }
    let selected: Vec<(&String, &GraphEntry)> = pkg
        .manifest
        .graphs
        .iter()
        .filter(|(role, _)| opts.policy.includes(role))
        .collect();
    if selected.is_empty() {
        return Err(QuantizeError::NothingSelected {
            package: pkg.dir.clone(),
            graphs,
        });
    }
    for (role, entry) in selected {
        if entry.precision != Precision::Fp32 {
            return Err(QuantizeError::AlreadyQuantized {
                path: pkg.dir.join(&entry.file),
                role: role.clone(),
                precision: entry.precision,
            });
        }
    }
    Ok(())
}

fn write_quantized(pkg: &Package, dir: &Path, opts: &QuantizeOptions) -> Result<Vec<GraphStats>> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| QuantizeError::Io {
            path: path.clone(),
            source,
        }
    };
    let mut manifest: Manifest = pkg.manifest.clone();
    // Errors name the file being written (a full disk fails the write, not the read).
    let dst_tok = dir.join(&manifest.tokenizer);
    std::fs::copy(pkg.tokenizer_path(), &dst_tok).map_err(io(&dst_tok))?;
    let mut stats = Vec::new();
    let mut graphs = std::collections::BTreeMap::new();
    for (role, entry) in &pkg.manifest.graphs {
        let path = pkg.dir.join(&entry.file);
        let before = entry.bytes;
        if !opts.policy.includes(role) {
            for f in entry.files() {
                let dst = dir.join(f);
                std::fs::copy(pkg.dir.join(f), &dst).map_err(io(&dst))?;
            }
            graphs.insert(role.clone(), entry.clone());
            stats.push(GraphStats {
                role: role.clone(),
                quantized_matmuls: 0,
                other_rewrites: 0,
                bytes_before: before,
                bytes_after: before,
            });
            continue;
        }
        if let Some(o) = &entry.optimization {
            return Err(graph_err(
                &path,
                format!(
                    "{role} is a runtime-optimized graph ({o}); quantize the package before `optimize`"
                ),
            ));
        }
        let mut model = load_model(&path)?;
        let qmax = if opts.reduce_range { 63.0 } else { 127.0 };
        let (count, other, note, suffix, precision) = match opts.scheme {
            Scheme::Int8 => {
                let c = quantize_graph(&mut model, &path, opts.reduce_range, opts.weight_type)?;
                let e = if opts.embeddings {
                    embedding::quantize_int8(&mut model, &path, qmax)?
                } else {
                    0
                };
                let note = format!(
                    "dynamic INT8, per-channel {:?} weights{}",
                    opts.weight_type,
                    if opts.reduce_range {
                        ", reduce-range"
                    } else {
                        ""
                    }
                );
                (c, e, note, "quantized", Precision::Int8)
            }
            Scheme::Int4 {
                block_size,
                accuracy_level,
            } => {
                let mut used = std::collections::BTreeSet::new();
                let c = quantize_graph_q4(
                    &mut model,
                    &path,
                    block_size,
                    accuracy_level,
                    opts.int4_symmetric,
                    &mut used,
                )?;
                let e = if opts.embeddings {
                    embedding::quantize_int4(&mut model, &path, block_size, &mut used)?
                } else {
                    0
                };
                ensure_ms_opset(&mut model);
                (
                    c,
                    e,
                    format!(
                        "weight-only INT4 (MatMulNBits, {}, {}, accuracy level {accuracy_level})",
                        blocks_note(block_size, &used),
                        if opts.int4_symmetric {
                            "symmetric"
                        } else {
                            "asymmetric"
                        }
                    ),
                    "q4",
                    Precision::Int4,
                )
            }
            Scheme::Fp16 => {
                let n = fp16::convert_graph(&mut model, &path, &opts.keep_fp32)?;
                (
                    0,
                    n,
                    format!(
                        "FP16, FP32 interface, FP32 ops: {}",
                        opts.keep_fp32.join(",")
                    ),
                    "fp16",
                    Precision::Fp16,
                )
            }
        };
        if count == 0 && other == 0 {
            return Err(graph_err(
                &path,
                format!(
                    "{role} has no float weights to quantize; it would be copied unchanged under the label {precision}"
                ),
            ));
        }
        model.doc_string = Some(format!("{} | {note}", model.doc_string.unwrap_or_default()));
        let bytes = model.encode_to_vec();
        let file = format!("{role}_{suffix}.onnx");
        std::fs::write(dir.join(&file), &bytes).map_err(io(&dir.join(&file)))?;
        graphs.insert(
            role.clone(),
            GraphEntry {
                file,
                data_file: None,
                sha256: sha256(&bytes),
                bytes: bytes.len() as u64,
                precision,
                // `other` counts quantized embedding tables (INT8/INT4) or converted tensors (FP16).
                quantization: Some(if other > 0 && opts.scheme != Scheme::Fp16 {
                    format!("{note}; word embeddings too")
                } else {
                    note
                }),
                ..entry.clone()
            },
        );
        stats.push(GraphStats {
            role: role.clone(),
            quantized_matmuls: count,
            other_rewrites: other,
            bytes_before: before,
            bytes_after: bytes.len() as u64,
        });
    }
    manifest.precision = Precision::of_package(graphs.values().map(|g| g.precision));
    manifest.graphs = graphs;
    manifest.runtimes = opts
        .target
        .narrow(&pkg.manifest.runtimes, opts.saturating_int8());
    manifest.save(dir)?;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_blocks_pack_low_nibble_first_around_zero_point_8() {
        // One 16-wide block (padded from 3 values): scale = 0.7 / 7 = 0.1.
        let (bytes, scales) = quantize_q4_column(&[0.7, -0.7, 0.1], 16);
        assert_eq!(scales.len(), 1);
        assert!((scales[0] - 0.1).abs() < 1e-7);
        assert_eq!(bytes.len(), 8);
        assert_eq!(bytes[0], (8 + 7) | ((8 - 7) << 4));
        assert_eq!(
            bytes[1],
            (8 + 1) | (8 << 4),
            "third value, then zero padding"
        );
        assert!(bytes[2..].iter().all(|&b| b == 0x88));
        // Two blocks when K exceeds the block.
        let (bytes, scales) = quantize_q4_column(&[1.0; 20], 16);
        assert_eq!((bytes.len(), scales.len()), (16, 2));
    }

    #[test]
    fn per_column_symmetric_int8_round_trips_within_half_a_step() {
        let w = [0.5f32, -2.0, 0.25, 1.0, 0.0, -0.125];
        let (q, s) = quantize_columns(&w, 2, 3, 127.0);
        assert_eq!(s, [1.0 / 127.0, 2.0 / 127.0, 0.25 / 127.0]);
        for (i, v) in w.iter().enumerate() {
            let back = (q[i] as i8) as f32 * s[i % 3];
            assert!((back - v).abs() <= s[i % 3] / 2.0 + 1e-7, "{v} vs {back}");
        }
        assert_eq!(q[0] as i8, 64);
        assert_eq!(q[1] as i8, -127);
    }
}
