//! Attention fusion: the converter's attention subgraph → one `com.microsoft.MultiHeadAttention`.
//!
//! ONNX Runtime's own attention fusions look for BERT/GPT export patterns and miss ours, so this pass
//! matches exactly what `blip-convert` writes (scores `MatMul` → `Mul`/`Div` by a constant → optional
//! additive mask → `Softmax` → `MatMul` with V, heads split by `Reshape` + `Transpose` and merged back
//! the same way). It fuses attention whose keys and values are computed in the graph: the ViT's
//! self-attention, the text encoders' self-attention and their cross-attention to image states. It
//! leaves alone the decoder's attention over its KV cache and over precomputed cross K/V: there the
//! kernel was measured no faster than the plain ops (a decoding step is bound by reading weights).
//!
//! Works on any precision: only what follows the Q/K/V projections is rewritten.

use std::collections::HashMap;

use onnx_writer::onnx::{GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto};
use onnx_writer::{attr_float, attr_int};

const MS_DOMAIN: &str = "com.microsoft";

/// One matched attention block.
struct Match {
    /// Indices of the nodes the fused op replaces.
    remove: Vec<usize>,
    q: String,
    k: String,
    v: String,
    mask: Option<String>,
    out: String,
    heads: i64,
    scale: f32,
}

struct Graph<'g> {
    g: &'g GraphProto,
    producer: HashMap<&'g str, usize>,
    consumers: HashMap<&'g str, Vec<usize>>,
    inits: HashMap<&'g str, &'g TensorProto>,
}

impl<'g> Graph<'g> {
    fn new(g: &'g GraphProto) -> Self {
        let mut producer = HashMap::new();
        let mut consumers: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, n) in g.node.iter().enumerate() {
            for o in &n.output {
                producer.insert(o.as_str(), i);
            }
            for x in &n.input {
                consumers.entry(x.as_str()).or_default().push(i);
            }
        }
        let inits = g
            .initializer
            .iter()
            .filter_map(|t| Some((t.name.as_deref()?, t)))
            .collect();
        Graph {
            g,
            producer,
            consumers,
            inits,
        }
    }

    fn node(&self, i: usize) -> &'g NodeProto {
        &self.g.node[i]
    }

    /// The node computing `value` when it is `op` and `value` feeds nothing but `consumer` (so
    /// removing the node loses nothing).
    fn sole_producer(&self, value: &str, op: &str, consumer: usize) -> Option<usize> {
        let i = *self.producer.get(value)?;
        let only = self.consumers.get(value).is_some_and(|c| c == &[consumer]);
        (only && self.node(i).op_type.as_deref() == Some(op)).then_some(i)
    }

    /// The single consumer of `value`, when it is `op`.
    fn sole_consumer(&self, value: &str, op: &str) -> Option<usize> {
        match self.consumers.get(value)?.as_slice() {
            [i] if self.node(*i).op_type.as_deref() == Some(op) => Some(*i),
            _ => None,
        }
    }

    fn perm(&self, i: usize) -> Vec<i64> {
        self.node(i)
            .attribute
            .iter()
            .find(|a| a.name.as_deref() == Some("perm"))
            .map(|a| a.ints.clone())
            .unwrap_or_default()
    }

    fn f32_scalar(&self, name: &str) -> Option<f32> {
        let t = self.inits.get(name)?;
        if t.data_type != Some(onnx_writer::DataType::F32.onnx())
            || t.dims.iter().product::<i64>() != 1
        {
            return None;
        }
        match (&t.raw_data, t.float_data.first()) {
            (Some(raw), _) if raw.len() == 4 => Some(f32::from_le_bytes(raw[..4].try_into().ok()?)),
            (_, Some(v)) => Some(*v),
            _ => None,
        }
    }

    fn i64_values(&self, name: &str) -> Option<Vec<i64>> {
        let t = self.inits.get(name)?;
        if t.data_type != Some(onnx_writer::DataType::I64.onnx()) {
            return None;
        }
        match &t.raw_data {
            Some(raw) => Some(
                raw.chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap_or_default()))
                    .collect(),
            ),
            None => Some(t.int64_data.clone()),
        }
    }

    /// `x` → `Reshape [0,0,H,hd]` → `Transpose perm` (`[B,H,S,hd]` or `[B,H,hd,S]`) ending at node
    /// `t`: returns (x, H, the two nodes).
    fn split_heads(&self, t: usize, perm: &[i64]) -> Option<(String, i64, [usize; 2])> {
        let tn = self.node(t);
        if tn.op_type.as_deref() != Some("Transpose") || self.perm(t) != perm {
            return None;
        }
        let r = self.sole_producer(tn.input.first()?, "Reshape", t)?;
        let rn = self.node(r);
        let shape = self.i64_values(rn.input.get(1)?)?;
        match shape.as_slice() {
            [0, 0, heads, _] if *heads > 0 => Some((rn.input[0].clone(), *heads, [t, r])),
            _ => None,
        }
    }

    fn match_at(&self, softmax: usize) -> Option<Match> {
        let sm = self.node(softmax);
        let mut remove = vec![softmax];
        // Optional additive mask between the scaled scores and the Softmax.
        let (scaled, owner, mask) = match self.sole_producer(sm.input.first()?, "Add", softmax) {
            Some(add) => {
                remove.push(add);
                let an = self.node(add);
                (an.input.first()?, add, Some(an.input.get(1)?.clone()))
            }
            None => (sm.input.first()?, softmax, None),
        };
        let scale_node = self
            .sole_producer(scaled, "Mul", owner)
            .or_else(|| self.sole_producer(scaled, "Div", owner))?;
        remove.push(scale_node);
        let sn = self.node(scale_node);
        let c = self.f32_scalar(sn.input.get(1)?)?;
        let scale = if sn.op_type.as_deref() == Some("Mul") {
            c
        } else {
            1.0 / c
        };
        let qk = self.sole_producer(sn.input.first()?, "MatMul", scale_node)?;
        remove.push(qk);
        let qkn = self.node(qk);
        // Q: [B,S,H·hd] split into heads.
        let qt = self.sole_producer(qkn.input.first()?, "Transpose", qk)?;
        let (q, heads, nodes) = self.split_heads(qt, &[0, 2, 1, 3])?;
        remove.extend(nodes);
        // K: split into heads, then its last two axes swapped (no cache: a cache is a Concat here).
        let kt = self.sole_producer(qkn.input.get(1)?, "Transpose", qk)?;
        if self.perm(kt) != [0, 1, 3, 2] {
            return None;
        }
        remove.push(kt);
        let kh = self.sole_producer(self.node(kt).input.first()?, "Transpose", kt)?;
        let (k, k_heads, nodes) = self.split_heads(kh, &[0, 2, 1, 3])?;
        remove.extend(nodes);
        // probabilities @ V, heads merged back.
        let av = self.sole_consumer(sm.output.first()?, "MatMul")?;
        let avn = self.node(av);
        if avn.input.first() != sm.output.first() {
            return None;
        }
        remove.push(av);
        let vh = self.sole_producer(avn.input.get(1)?, "Transpose", av)?;
        let (v, v_heads, nodes) = self.split_heads(vh, &[0, 2, 1, 3])?;
        remove.extend(nodes);
        let ot = self.sole_consumer(avn.output.first()?, "Transpose")?;
        if self.perm(ot) != [0, 2, 1, 3] {
            return None;
        }
        let or = self.sole_consumer(self.node(ot).output.first()?, "Reshape")?;
        remove.extend([ot, or]);
        if k_heads != heads || v_heads != heads {
            return None;
        }
        Some(Match {
            remove,
            q,
            k,
            v,
            mask,
            out: self.node(or).output.first()?.clone(),
            heads,
            scale,
        })
    }
}

fn node(op: &str, name: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
    NodeProto {
        op_type: Some(op.into()),
        name: Some(name.into()),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn i64_init(name: &str, values: &[i64]) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        data_type: Some(onnx_writer::DataType::I64.onnx()),
        dims: vec![values.len() as i64],
        raw_data: Some(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        ..Default::default()
    }
}

/// `mask` expanded over the query axis of `q` (`[B,S,·]`) for the block `block`: the nodes go to
/// `nodes`, their constants to `inits`; returns the expanded value.
fn expand_mask(
    block: &str,
    mask: &str,
    q: &str,
    nodes: &mut Vec<NodeProto>,
    inits: &mut Vec<TensorProto>,
) -> String {
    let p = format!("{block}/mask_expand");
    let (s, ones2, one, shape) = (
        format!("{p}/S"),
        format!("{p}/ones2"),
        format!("{p}/one"),
        format!("{p}/shape"),
    );
    let mut seq = node("Shape", &format!("{p}/Shape"), &[q], &[&s]);
    seq.attribute = vec![attr_int("start", 1), attr_int("end", 2)];
    inits.push(i64_init(&ones2, &[1, 1]));
    inits.push(i64_init(&one, &[1]));
    let mut concat = node(
        "Concat",
        &format!("{p}/Concat"),
        &[&ones2, &s, &one],
        &[&shape],
    );
    concat.attribute = vec![attr_int("axis", 0)];
    let out = format!("{p}/expanded");
    let expand = node("Expand", &format!("{p}/Expand"), &[mask, &shape], &[&out]);
    nodes.extend([seq, concat, expand]);
    out
}

/// Fuses every attention block of `model` it recognises; returns how many.
pub fn fuse_attention(model: &mut ModelProto) -> usize {
    let Some(g) = model.graph.as_mut() else {
        return 0;
    };
    let matches: Vec<Match> = {
        let view = Graph::new(g);
        (0..g.node.len())
            .filter(|&i| view.node(i).op_type.as_deref() == Some("Softmax"))
            .filter_map(|i| view.match_at(i))
            .collect()
    };
    if matches.is_empty() {
        return 0;
    }
    // MultiHeadAttention takes its additive mask as [B or 1, 1, S, T]; the converter's encoder masks
    // are [B,1,1,T], broadcast over the queries, so each block expands its mask to [B,1,S,T] with
    // its own query length (Expand to [1,1,S,1] leaves an already full mask as it is).
    let mut insert: HashMap<usize, Vec<NodeProto>> = HashMap::new();
    let mut removed = vec![false; g.node.len()];
    let mut inits = Vec::new();
    for (n, m) in matches.iter().enumerate() {
        let mut new = Vec::new();
        let name = g.node[m.remove[0]]
            .name
            .clone()
            .unwrap_or_else(|| format!("attention_{n}"));
        let name = name.trim_end_matches("/Softmax");
        let mask = m
            .mask
            .as_ref()
            .map(|mask| expand_mask(name, mask, &m.q, &mut new, &mut inits));
        let mut inputs = vec![m.q.as_str(), m.k.as_str(), m.v.as_str()];
        if let Some(mask) = &mask {
            inputs.extend(["", "", mask.as_str()]);
        }
        let mut mha = node(
            "MultiHeadAttention",
            &format!("{name}/MultiHeadAttention"),
            &inputs,
            &[&m.out],
        );
        mha.domain = Some(MS_DOMAIN.into());
        mha.attribute = vec![attr_int("num_heads", m.heads), attr_float("scale", m.scale)];
        new.push(mha);
        // At the block's last node: every input of the fused op is computed before it.
        let last = *m.remove.iter().max().unwrap_or(&0);
        insert.insert(last, new);
        for &i in &m.remove {
            removed[i] = true;
        }
    }
    let old = std::mem::take(&mut g.node);
    for (i, n) in old.into_iter().enumerate() {
        if let Some(new) = insert.remove(&i) {
            g.node.extend(new);
        }
        if !removed[i] {
            g.node.push(n);
        }
    }
    g.initializer.extend(inits);
    if !model
        .opset_import
        .iter()
        .any(|o| o.domain.as_deref() == Some(MS_DOMAIN))
    {
        model.opset_import.push(OperatorSetIdProto {
            domain: Some(MS_DOMAIN.into()),
            version: Some(1),
        });
    }
    matches.len()
}
