//! Layer helpers over [`GraphBuilder`]: each reads its weights from the checkpoint by their Hugging Face
//! key (shape-checked before anything is written) and names its nodes after that key.

use std::borrow::Cow;
use std::collections::HashMap;

use blip_checkpoint::{Checkpoint, DType};
use onnx_writer::{DataType, Dim, GraphBuilder, TensorData, attr_float, attr_int, attr_ints};

use crate::Result;

/// How attention scores are scaled: the vision tower multiplies by `hd^-0.5`, the BERT text side divides
/// by `sqrt(hd)`; mirroring each keeps results as close as possible to the reference.
#[derive(Clone, Copy)]
pub(crate) enum Scale {
    Mul(f32),
    Div(f32),
}

/// Large negative added to masked attention scores (transformers uses the dtype minimum).
pub(crate) const MASK_MIN: f32 = f32::MIN;

pub(crate) struct Net<'a> {
    pub g: GraphBuilder<'a>,
    ck: &'a Checkpoint,
    weights: HashMap<String, String>,
    consts: HashMap<String, String>,
}

impl<'a> Net<'a> {
    pub fn new(name: &str, ck: &'a Checkpoint) -> Self {
        Net {
            g: GraphBuilder::new(name),
            ck,
            weights: HashMap::new(),
            consts: HashMap::new(),
        }
    }

    pub fn input(&mut self, name: &str, dtype: DataType, dims: &[Dim]) -> String {
        self.g.input(name, dtype, dims)
    }

    /// A checkpoint tensor used as stored (f32), after checking its shape.
    pub fn param(&mut self, key: &str, shape: &[usize]) -> Result<String> {
        if let Some(n) = self.weights.get(key) {
            return Ok(n.clone());
        }
        self.ck.expect_shape(key, shape)?;
        let ck = self.ck;
        let data = if ck.dtype(key) == Some(DType::F32) {
            match ck.f32_bytes(key)? {
                Cow::Borrowed(b) => TensorData::Bytes(Cow::Borrowed(b)),
                Cow::Owned(v) => TensorData::Bytes(Cow::Owned(v)),
            }
        } else {
            let k = key.to_string();
            TensorData::Lazy(Box::new(move || {
                ck.f32_bytes(&k)
                    .map(Cow::into_owned)
                    .map_err(|e| e.to_string())
            }))
        };
        let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        let name = self.g.initializer(key, DataType::F32, &dims, data);
        self.weights.insert(key.to_string(), name.clone());
        Ok(name)
    }

    /// Whether the checkpoint holds `key`.
    pub fn has(&self, key: &str) -> bool {
        self.ck.contains(key)
    }

    /// A checkpoint tensor's values as f32, after checking its shape (for tensors the converter
    /// combines before writing).
    pub fn tensor(&self, key: &str, shape: &[usize]) -> Result<Vec<f32>> {
        self.ck.expect_shape(key, shape)?;
        Ok(self.ck.f32(key)?)
    }

    /// A float tensor computed by the converter (e.g. interpolated position embeddings).
    pub fn owned_param(&mut self, key: &str, shape: &[usize], values: Vec<f32>) -> String {
        let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let name = self.g.initializer(
            key,
            DataType::F32,
            &dims,
            TensorData::Bytes(Cow::Owned(bytes)),
        );
        self.weights.insert(key.to_string(), name.clone());
        name
    }

    /// A torch `Linear` weight `[out, in]`, stored transposed as `[in, out]` for `MatMul`.
    fn linear_weight(&mut self, key: &str, d_in: usize, d_out: usize) -> Result<String> {
        let cache_key = format!("{key}#T");
        if let Some(n) = self.weights.get(&cache_key) {
            return Ok(n.clone());
        }
        self.ck.expect_shape(key, &[d_out, d_in])?;
        let ck = self.ck;
        let k = key.to_string();
        let data = TensorData::Lazy(Box::new(move || {
            let w = ck.f32(&k).map_err(|e| e.to_string())?;
            let mut out = vec![0u8; w.len() * 4];
            for o in 0..d_out {
                let row = &w[o * d_in..(o + 1) * d_in];
                for (i, v) in row.iter().enumerate() {
                    let at = (i * d_out + o) * 4;
                    out[at..at + 4].copy_from_slice(&v.to_le_bytes());
                }
            }
            Ok(out)
        }));
        let name = self
            .g
            .initializer(key, DataType::F32, &[d_in as i64, d_out as i64], data);
        self.weights.insert(cache_key, name.clone());
        Ok(name)
    }

    /// Several torch `Linear`s `[d_out, d_in]` that read the same input, as one `MatMul` over their
    /// weights concatenated along the output (`name.weight`, `[d_in, n·d_out]`) and one bias `Add`,
    /// split back: one weight pass instead of n (a decoder step reads Q, K and V weights at once).
    pub fn linear_fused(
        &mut self,
        name: &str,
        prefixes: &[String],
        x: &str,
        d_in: usize,
        d_out: usize,
    ) -> Result<Vec<String>> {
        let n = prefixes.len();
        let keys: Vec<String> = prefixes.iter().map(|p| format!("{p}.weight")).collect();
        for k in &keys {
            self.ck.expect_shape(k, &[d_out, d_in])?;
        }
        let ck = self.ck;
        let data = TensorData::Lazy(Box::new(move || {
            let ws = keys
                .iter()
                .map(|k| ck.f32(k).map_err(|e| e.to_string()))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let cols = n * d_out;
            let mut out = vec![0u8; d_in * cols * 4];
            for (j, w) in ws.iter().enumerate() {
                for o in 0..d_out {
                    for i in 0..d_in {
                        let at = (i * cols + j * d_out + o) * 4;
                        out[at..at + 4].copy_from_slice(&w[o * d_in + i].to_le_bytes());
                    }
                }
            }
            Ok(out)
        }));
        let w = self.g.initializer(
            &format!("{name}.weight"),
            DataType::F32,
            &[d_in as i64, (n * d_out) as i64],
            data,
        );
        let mut bias = Vec::with_capacity(n * d_out);
        for p in prefixes {
            let key = format!("{p}.bias");
            self.ck.expect_shape(&key, &[d_out])?;
            bias.extend(self.ck.f32(&key)?);
        }
        let b = self.owned_param(&format!("{name}.bias"), &[n * d_out], bias);
        let y = self.op("MatMul", name, &[x, &w]);
        let y = self.op("Add", name, &[&y, &b]);
        let split = self.ci64(&vec![d_out as i64; n]);
        Ok(self
            .g
            .op_n("Split", name, &[&y, &split], n, vec![attr_int("axis", -1)]))
    }

    pub fn ci64(&mut self, values: &[i64]) -> String {
        let key = format!("i64:{values:?}");
        if let Some(n) = self.consts.get(&key) {
            return n.clone();
        }
        let name = self.g.const_i64("const_i64", values);
        self.consts.insert(key, name.clone());
        name
    }

    pub fn si64(&mut self, value: i64) -> String {
        let key = format!("si64:{value}");
        if let Some(n) = self.consts.get(&key) {
            return n.clone();
        }
        let name = self.g.scalar_i64("scalar_i64", value);
        self.consts.insert(key, name.clone());
        name
    }

    pub fn cf32(&mut self, value: f32) -> String {
        let key = format!("f32:{}", value.to_bits());
        if let Some(n) = self.consts.get(&key) {
            return n.clone();
        }
        let name = self.g.scalar_f32("const_f32", value);
        self.consts.insert(key, name.clone());
        name
    }

    pub fn op(&mut self, op: &str, name: &str, inputs: &[&str]) -> String {
        self.g.op(op, name, inputs, vec![])
    }

    /// `x @ W^T + b` for the torch `Linear` at `prefix`.
    pub fn linear(&mut self, prefix: &str, x: &str, d_in: usize, d_out: usize) -> Result<String> {
        let w = self.linear_weight(&format!("{prefix}.weight"), d_in, d_out)?;
        let b = self.param(&format!("{prefix}.bias"), &[d_out])?;
        let y = self.op("MatMul", prefix, &[x, &w]);
        Ok(self.op("Add", prefix, &[&y, &b]))
    }

    pub fn layer_norm(&mut self, prefix: &str, x: &str, dim: usize, eps: f64) -> Result<String> {
        let w = self.param(&format!("{prefix}.weight"), &[dim])?;
        let b = self.param(&format!("{prefix}.bias"), &[dim])?;
        Ok(self.g.op(
            "LayerNormalization",
            prefix,
            &[x, &w, &b],
            vec![attr_int("axis", -1), attr_float("epsilon", eps as f32)],
        ))
    }

    /// BERT's output sub-block at `prefix`: `LayerNorm(dense(x) + residual)`, `x` `d_in` wide.
    pub fn dense_residual_norm(
        &mut self,
        prefix: &str,
        x: &str,
        residual: &str,
        (d_in, d_out): (usize, usize),
        eps: f64,
    ) -> Result<String> {
        let y = self.linear(&format!("{prefix}.dense"), x, d_in, d_out)?;
        let r = self.op("Add", prefix, &[&y, residual]);
        self.layer_norm(&format!("{prefix}.LayerNorm"), &r, d_out, eps)
    }

    /// Exact (erf) GELU, written in the pattern ONNX Runtime fuses into one Gelu kernel.
    pub fn gelu(&mut self, name: &str, x: &str) -> String {
        let sqrt2 = self.cf32(std::f32::consts::SQRT_2);
        let one = self.cf32(1.0);
        let half = self.cf32(0.5);
        let d = self.op("Div", name, &[x, &sqrt2]);
        let e = self.op("Erf", name, &[&d]);
        let a = self.op("Add", name, &[&e, &one]);
        let m = self.op("Mul", name, &[x, &a]);
        self.op("Mul", name, &[&m, &half])
    }

    /// `[B, S, H*hd]` → `[B, H, S, hd]`.
    pub fn split_heads(&mut self, name: &str, x: &str, heads: usize, head_dim: usize) -> String {
        self.heads_permuted(name, x, heads, head_dim, &[0, 2, 1, 3])
    }

    /// `[B, S, H*hd]` reshaped to `[B, S, H, hd]`, then transposed by `perm`.
    fn heads_permuted(
        &mut self,
        name: &str,
        x: &str,
        heads: usize,
        head_dim: usize,
        perm: &[i64],
    ) -> String {
        let shape = self.ci64(&[0, 0, heads as i64, head_dim as i64]);
        let r = self.op("Reshape", name, &[x, &shape]);
        self.g
            .op("Transpose", name, &[&r], vec![attr_ints("perm", perm)])
    }

    /// `[B, H, S, hd]` → `[B, S, H*hd]`.
    pub fn merge_heads(&mut self, name: &str, x: &str, hidden: usize) -> String {
        let t = self.g.op(
            "Transpose",
            name,
            &[x],
            vec![attr_ints("perm", &[0, 2, 1, 3])],
        );
        let shape = self.ci64(&[0, 0, hidden as i64]);
        self.op("Reshape", name, &[&t, &shape])
    }

    /// softmax(q kᵀ · scale + mask) v over `[B, H, S, hd]` tensors; `k_t` is already `[B, H, hd, S]`.
    pub fn attention(
        &mut self,
        name: &str,
        q: &str,
        k_t: &str,
        v: &str,
        mask: Option<&str>,
        scale: Scale,
    ) -> String {
        let scores = self.op("MatMul", name, &[q, k_t]);
        self.attend(name, &scores, v, mask, scale)
    }

    /// The same attention for keys stored key-major (`k [B, H, E, hd]`, as `cross_kv` writes them)
    /// and the query still merged (`q [B, S, H·hd]`): scores are `(k qᵀ)ᵀ`. For a decoding step
    /// (S = 1) `k qᵀ` is a matrix-vector product that streams K once in stored order, where `q kᵀ`
    /// made the GEMM repack all of K every step (the cross K of 577 image tokens is 21 MB per step
    /// for base): the INT4 step ran ~16 % faster.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_key_major(
        &mut self,
        name: &str,
        q: &str,
        k: &str,
        v: &str,
        mask: Option<&str>,
        scale: Scale,
        heads: usize,
        head_dim: usize,
    ) -> String {
        // qᵀ per head: [B, H, hd, S].
        let q_t = self.heads_permuted(name, q, heads, head_dim, &[0, 2, 3, 1]);
        let scores_t = self.op("MatMul", name, &[k, &q_t]);
        let scores = self.transpose_last2(name, &scores_t);
        self.attend(name, &scores, v, mask, scale)
    }

    /// softmax(scores · scale + mask) v.
    fn attend(
        &mut self,
        name: &str,
        scores: &str,
        v: &str,
        mask: Option<&str>,
        scale: Scale,
    ) -> String {
        let scaled = match scale {
            Scale::Mul(s) => {
                let c = self.cf32(s);
                self.op("Mul", name, &[scores, &c])
            }
            Scale::Div(s) => {
                let c = self.cf32(s);
                self.op("Div", name, &[scores, &c])
            }
        };
        let masked = match mask {
            Some(m) => self.op("Add", name, &[&scaled, m]),
            None => scaled,
        };
        let probs = self
            .g
            .op("Softmax", name, &[&masked], vec![attr_int("axis", -1)]);
        self.op("MatMul", name, &[&probs, v])
    }

    pub fn transpose_last2(&mut self, name: &str, x: &str) -> String {
        self.g.op(
            "Transpose",
            name,
            &[x],
            vec![attr_ints("perm", &[0, 1, 3, 2])],
        )
    }

    /// L2-normalise the last axis as `torch.nn.functional.normalize` (norm clamped at 1e-12).
    pub fn l2_normalize(&mut self, name: &str, x: &str) -> String {
        let norm = self.g.op(
            "ReduceL2",
            name,
            &[x],
            vec![attr_ints("axes", &[-1]), attr_int("keepdims", 1)],
        );
        let eps = self.cf32(1e-12);
        let clamped = self.op("Max", name, &[&norm, &eps]);
        self.op("Div", name, &[x, &clamped])
    }

    /// `x[:, 0, :]`.
    pub fn first_token(&mut self, name: &str, x: &str) -> String {
        let zero = self.si64(0);
        self.g
            .op("Gather", name, &[x, &zero], vec![attr_int("axis", 1)])
    }

    /// `[B, S]` 0/1 mask → additive `[B, 1, 1, S]` float mask (0 where kept, MASK_MIN where masked).
    pub fn additive_mask(&mut self, name: &str, mask: &str) -> String {
        let f = self.g.op(
            "Cast",
            name,
            &[mask],
            vec![attr_int("to", DataType::F32.onnx() as i64)],
        );
        let one = self.cf32(1.0);
        let inv = self.op("Sub", name, &[&one, &f]);
        let min = self.cf32(MASK_MIN);
        let add = self.op("Mul", name, &[&inv, &min]);
        let axes = self.ci64(&[1, 2]);
        self.op("Unsqueeze", name, &[&add, &axes])
    }
}
