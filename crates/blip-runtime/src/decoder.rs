//! Driving the `decoder` graph: [`CachedDecoder`] keeps the self-attention KV cache between steps
//! (ORT's present outputs are passed back as the next past inputs without copying) and takes the
//! cross-attention K/V computed once per image; [`RefeedDecoder`] re-feeds the whole sequence every
//! step with an empty cache, the reference the cached path is tested against.

use std::borrow::Cow;

use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, Tensor};

use crate::generate::Step;
use crate::model::{gather_rows, infer_err};
use crate::{Result, RuntimeError};

const G: &str = "decoder";

/// Named graph values: the KV cache or the cross-attention K/V, in decoder input order.
pub type NamedValues = Vec<(String, DynValue)>;

pub struct DecoderShape {
    pub layers: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
}

fn empty_past(rows: usize, s: &DecoderShape) -> Result<NamedValues> {
    let mut past = Vec::with_capacity(2 * s.layers);
    for i in 0..s.layers {
        for kv in ["key", "value"] {
            let t = Tensor::<f32>::from_array(([rows, s.heads, 0, s.head_dim], Vec::<f32>::new()))
                .map_err(infer_err(G))?;
            past.push((format!("past_key_values.{i}.{kv}"), t.into_dyn()));
        }
    }
    Ok(past)
}

/// Feeds the decoder `tokens` (`rows × t`) after `past_len` cached positions, with a padding
/// `attention_mask` over past + current positions (`rows × (past_len + t)`).
#[allow(clippy::too_many_arguments)]
fn feed<'s>(
    session: &'s mut Session,
    tokens: &[i64],
    rows: usize,
    t: usize,
    past_len: usize,
    attention_mask: Vec<i64>,
    past: &[(String, DynValue)],
    cross: &[(String, DynValue)],
    enc_mask: &[i64],
) -> Result<ort::session::SessionOutputs<'s>> {
    let positions: Vec<i64> = (0..rows)
        .flat_map(|_| (past_len..past_len + t).map(|p| p as i64))
        .collect();
    let enc_len = enc_mask.len() / rows.max(1);
    let mut inputs: Vec<(Cow<'_, str>, SessionInputValue<'_>)> = vec![
        (
            "input_ids".into(),
            Tensor::from_array(([rows, t], tokens.to_vec()))
                .map_err(infer_err(G))?
                .into(),
        ),
        (
            "position_ids".into(),
            Tensor::from_array(([rows, t], positions))
                .map_err(infer_err(G))?
                .into(),
        ),
        (
            "attention_mask".into(),
            Tensor::from_array(([rows, past_len + t], attention_mask))
                .map_err(infer_err(G))?
                .into(),
        ),
        (
            "encoder_attention_mask".into(),
            Tensor::from_array(([rows, enc_len], enc_mask.to_vec()))
                .map_err(infer_err(G))?
                .into(),
        ),
    ];
    for (name, v) in past.iter().chain(cross.iter()) {
        inputs.push((Cow::Borrowed(name.as_str()), SessionInputValue::from(v)));
    }
    session.run(inputs).map_err(infer_err(G))
}

/// Runs the decoder once (no padding); returns the last position's logits and the present K/V.
#[allow(clippy::too_many_arguments)]
fn run_decoder(
    session: &mut Session,
    tokens: &[i64],
    rows: usize,
    t: usize,
    past_len: usize,
    past: &[(String, DynValue)],
    cross: &[(String, DynValue)],
    enc_mask: &[i64],
    s: &DecoderShape,
) -> Result<(Vec<f32>, NamedValues)> {
    let ones = vec![1i64; rows * (past_len + t)];
    let mut out = feed(
        session, tokens, rows, t, past_len, ones, past, cross, enc_mask,
    )?;
    let (shape, data) = out["logits"]
        .try_extract_tensor::<f32>()
        .map_err(infer_err(G))?;
    let (t_out, vocab) = (shape[1] as usize, shape[2] as usize);
    if vocab != s.vocab {
        return Err(RuntimeError::Inference {
            graph: G.into(),
            message: format!("logits have {vocab} columns, expected {}", s.vocab),
        });
    }
    let mut last = Vec::with_capacity(rows * vocab);
    for r in 0..rows {
        let at = (r * t_out + t_out - 1) * vocab;
        last.extend_from_slice(&data[at..at + vocab]);
    }
    let mut present = Vec::with_capacity(2 * s.layers);
    for i in 0..s.layers {
        for kv in ["key", "value"] {
            let v =
                out.remove(format!("present.{i}.{kv}"))
                    .ok_or_else(|| RuntimeError::Inference {
                        graph: G.into(),
                        message: format!("no output present.{i}.{kv}"),
                    })?;
            present.push((format!("past_key_values.{i}.{kv}"), v));
        }
    }
    Ok((last, present))
}

/// Logits of every position (`rows × t × V`) for padded sequences `ids` with padding `mask`, from an
/// empty cache (VQA rank mode scores whole answers this way).
pub fn all_logits(
    session: &mut Session,
    shape: &DecoderShape,
    ids: &[i64],
    mask: &[i64],
    t: usize,
    cross: &[(String, DynValue)],
    enc_mask: &[i64],
) -> Result<ndarray::Array3<f32>> {
    let rows = ids.len() / t.max(1);
    let past = empty_past(rows, shape)?;
    let out = feed(
        session,
        ids,
        rows,
        t,
        0,
        mask.to_vec(),
        &past,
        cross,
        enc_mask,
    )?;
    crate::model::to_array3(&out["logits"], G)
}

/// Incremental decoding with the self-attention KV cache.
pub struct CachedDecoder<'m> {
    session: &'m mut Session,
    shape: DecoderShape,
    cross: NamedValues,
    enc_mask: Vec<i64>,
    past: NamedValues,
    past_len: usize,
    rows: usize,
}

impl<'m> CachedDecoder<'m> {
    /// `cross`: per-row cross K/V (already repeated per beam); `enc_mask`: `rows × E`.
    pub fn new(
        session: &'m mut Session,
        shape: DecoderShape,
        cross: NamedValues,
        enc_mask: Vec<i64>,
        rows: usize,
    ) -> Result<Self> {
        let past = empty_past(rows, &shape)?;
        Ok(CachedDecoder {
            session,
            shape,
            cross,
            enc_mask,
            past,
            past_len: 0,
            rows,
        })
    }
}

fn is_identity(src: &[usize]) -> bool {
    src.iter().enumerate().all(|(i, &s)| i == s)
}

impl Step for CachedDecoder<'_> {
    fn rows(&self) -> usize {
        self.rows
    }

    fn vocab(&self) -> usize {
        self.shape.vocab
    }

    fn step(&mut self, tokens: &[i64], t: usize, reorder: Option<&[usize]>) -> Result<Vec<f32>> {
        if let Some(src) = reorder.filter(|s| !is_identity(s)) {
            // Beam search moved histories between rows: gather the cache rows (HF `reorder_cache`).
            for (_, v) in self.past.iter_mut() {
                *v = gather_rows(v, src)?;
            }
        }
        let (logits, present) = run_decoder(
            self.session,
            tokens,
            self.rows,
            t,
            self.past_len,
            &self.past,
            &self.cross,
            &self.enc_mask,
            &self.shape,
        )?;
        self.past = present;
        self.past_len += t;
        Ok(logits)
    }
}

/// Reference decoding without a cache: the whole sequence is fed at every step.
pub struct RefeedDecoder<'m> {
    session: &'m mut Session,
    shape: DecoderShape,
    cross: NamedValues,
    enc_mask: Vec<i64>,
    history: Vec<Vec<i64>>,
}

impl<'m> RefeedDecoder<'m> {
    pub fn new(
        session: &'m mut Session,
        shape: DecoderShape,
        cross: NamedValues,
        enc_mask: Vec<i64>,
        rows: usize,
    ) -> Self {
        RefeedDecoder {
            session,
            shape,
            cross,
            enc_mask,
            history: vec![Vec::new(); rows],
        }
    }
}

impl Step for RefeedDecoder<'_> {
    fn rows(&self) -> usize {
        self.history.len()
    }

    fn vocab(&self) -> usize {
        self.shape.vocab
    }

    fn step(&mut self, tokens: &[i64], t: usize, reorder: Option<&[usize]>) -> Result<Vec<f32>> {
        if let Some(src) = reorder {
            self.history = src.iter().map(|&s| self.history[s].clone()).collect();
        }
        for (r, chunk) in tokens.chunks(t).enumerate() {
            self.history[r].extend_from_slice(chunk);
        }
        let rows = self.history.len();
        let len = self.history[0].len();
        let flat: Vec<i64> = self.history.iter().flatten().copied().collect();
        let past = empty_past(rows, &self.shape)?;
        let (logits, _) = run_decoder(
            self.session,
            &flat,
            rows,
            len,
            0,
            &past,
            &self.cross,
            &self.enc_mask,
            &self.shape,
        )?;
        Ok(logits)
    }
}
