//! Shared test helpers: fixtures, PyTorch goldens, ORT sessions, comparisons.
#![allow(dead_code)]

use std::collections::HashMap;

use blip_package::Package;
use blip_runtime::{OrtLibrary, SessionOptions};
pub use blip_testkit::*;
use ndarray::{ArrayD, Axis, IxDyn};
use ort::session::Session;
use ort::value::{DynValue, Tensor};

/// ONNX Runtime from the fetch script's cache or ORT_DYLIB_PATH. Tests fail (not skip) without it.
pub fn runtime() -> OrtLibrary {
    OrtLibrary::init().unwrap_or_else(|e| panic!("{e}"))
}

pub fn session(pkg: &Package, role: &str) -> Session {
    runtime()
        .package_session(pkg, role, &SessionOptions::default())
        .unwrap()
}

pub enum In {
    F(ArrayD<f32>),
    I(ArrayD<i64>),
}

pub fn run<S: Into<String>>(s: &mut Session, inputs: Vec<(S, In)>) -> HashMap<String, ArrayD<f32>> {
    let values: Vec<(String, DynValue)> = inputs
        .into_iter()
        .map(|(n, v)| {
            let value = match v {
                In::F(a) => Tensor::from_array(a).unwrap().into_dyn(),
                In::I(a) => Tensor::from_array(a).unwrap().into_dyn(),
            };
            (n.into(), value)
        })
        .collect();
    let out = s.run(values).unwrap();
    out.iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                v.try_extract_array::<f32>().unwrap().to_owned(),
            )
        })
        .collect()
}

pub fn rows(a: &ArrayD<f32>, range: std::ops::Range<usize>) -> ArrayD<f32> {
    a.slice_axis(Axis(0), ndarray::Slice::from(range))
        .to_owned()
}

pub fn rows_i(a: &ArrayD<i64>, range: std::ops::Range<usize>) -> ArrayD<i64> {
    a.slice_axis(Axis(0), ndarray::Slice::from(range))
        .to_owned()
}

pub fn ones_i64(shape: &[usize]) -> ArrayD<i64> {
    ArrayD::from_elem(IxDyn(shape), 1)
}

/// A decoder driven greedily over `cross_kv` + the KV-cached `decoder`, as HF `generate` with
/// num_beams=1: the prompt is fed in one call, then one token per step; finished rows get pad.
pub struct Decoder {
    pub cross: Session,
    pub step: Session,
    pub layers: usize,
    pub heads: usize,
    pub head_dim: usize,
}

impl Decoder {
    pub fn new(pkg: &Package) -> Decoder {
        let m = &pkg.manifest.model;
        Decoder {
            cross: session(pkg, "cross_kv"),
            step: session(pkg, "decoder"),
            layers: m.text_layers,
            heads: m.text_heads,
            head_dim: m.text_hidden_size / m.text_heads,
        }
    }

    pub fn cross_kv(&mut self, encoder_states: &ArrayD<f32>) -> HashMap<String, ArrayD<f32>> {
        run(
            &mut self.cross,
            vec![("encoder_hidden_states", In::F(encoder_states.clone()))],
        )
    }

    /// Runs the decoder on `ids` (all rows the same length) after `past` positions.
    pub fn forward(
        &mut self,
        ids: &ArrayD<i64>,
        past: &[(ArrayD<f32>, ArrayD<f32>)],
        cross: &HashMap<String, ArrayD<f32>>,
        enc_len: usize,
    ) -> HashMap<String, ArrayD<f32>> {
        let (b, t) = (ids.shape()[0], ids.shape()[1]);
        let p = past[0].0.shape()[2];
        let positions = ArrayD::from_shape_fn(IxDyn(&[b, t]), |ix| (p + ix[1]) as i64);
        let mut inputs = vec![
            ("input_ids".to_string(), In::I(ids.clone())),
            ("position_ids".to_string(), In::I(positions)),
            ("attention_mask".to_string(), In::I(ones_i64(&[b, p + t]))),
            (
                "encoder_attention_mask".to_string(),
                In::I(ones_i64(&[b, enc_len])),
            ),
            // One image per row.
            (
                blip_package::CROSS_GROUPS.to_string(),
                In::I(ArrayD::from_shape_fn(IxDyn(&[b, 1]), |ix| ix[0] as i64)),
            ),
            (
                blip_package::CROSS_SLOTS.to_string(),
                In::I(ArrayD::from_shape_fn(IxDyn(&[b]), |ix| ix[0] as i64)),
            ),
        ];
        for (i, (k, v)) in past.iter().enumerate() {
            inputs.push((format!("past_key_values.{i}.key"), In::F(k.clone())));
            inputs.push((format!("past_key_values.{i}.value"), In::F(v.clone())));
        }
        for i in 0..self.layers {
            for kv in ["key", "value"] {
                let name = format!("cross_key_values.{i}.{kv}");
                inputs.push((name.clone(), In::F(cross[&name].clone())));
            }
        }
        run(&mut self.step, inputs)
    }

    pub fn empty_past(&self, batch: usize) -> Vec<(ArrayD<f32>, ArrayD<f32>)> {
        let z = ArrayD::<f32>::zeros(IxDyn(&[batch, self.heads, 0, self.head_dim]));
        (0..self.layers).map(|_| (z.clone(), z.clone())).collect()
    }

    pub fn greedy(
        &mut self,
        prompt: &[Vec<i64>],
        encoder_states: &ArrayD<f32>,
        max_length: usize,
        eos: i64,
        pad: i64,
    ) -> Vec<Vec<i64>> {
        let b = prompt.len();
        let enc_len = encoder_states.shape()[1];
        let cross = self.cross_kv(encoder_states);
        let mut seqs: Vec<Vec<i64>> = prompt.to_vec();
        let mut done = vec![false; b];
        let flat: Vec<i64> = prompt.iter().flatten().copied().collect();
        let mut next_in = ArrayD::from_shape_vec(IxDyn(&[b, prompt[0].len()]), flat).unwrap();
        let mut past = self.empty_past(b);
        while seqs[0].len() < max_length && done.iter().any(|d| !d) {
            let out = self.forward(&next_in, &past, &cross, enc_len);
            let logits = &out["logits"];
            let last = logits.shape()[1] - 1;
            let mut next = Vec::with_capacity(b);
            for (r, seq) in seqs.iter_mut().enumerate() {
                let row = logits.index_axis(Axis(0), r);
                let row = row.index_axis(Axis(0), last);
                let mut best = 0usize;
                for (i, v) in row.iter().enumerate() {
                    if *v > row[best] {
                        best = i;
                    }
                }
                let tok = if done[r] { pad } else { best as i64 };
                if tok == eos {
                    done[r] = true;
                }
                seq.push(tok);
                next.push(tok);
            }
            next_in = ArrayD::from_shape_vec(IxDyn(&[b, 1]), next).unwrap();
            past = (0..self.layers)
                .map(|i| {
                    (
                        out[&format!("present.{i}.key")].clone(),
                        out[&format!("present.{i}.value")].clone(),
                    )
                })
                .collect();
        }
        seqs
    }
}
