//! The one graph driver: BLIP's graph wiring — which graph takes which named tensors, the cross
//! K/V and KV cache carried between decoder steps, beam reorder, joining and splitting decode
//! batches — written once over a small [`TensorBackend`]. Native ONNX Runtime (blip-runtime) and
//! onnxruntime-web (blip-web) are backends of it: they make, run, read and gather tensors, and
//! know nothing of BLIP.

use blip_package::io::{
    self, ATTENTION_MASK, CROSS_GROUPS, CROSS_SLOTS, ENCODER_ATTENTION_MASK, ENCODER_HIDDEN_STATES,
    IMAGE_EMBEDS, INPUT_IDS, ITM_LOGITS, LAST_HIDDEN_STATE, LOGITS, PIXEL_VALUES, POSITION_IDS,
    TEXT_EMBEDS,
};
use blip_package::{
    CROSS_KV, DECODER, DecoderShape, ITM, Package, TEXT_ENCODER, VISION_ENCODER,
    VQA_QUESTION_ENCODER,
};
use blip_preprocess::TextBatch;
use ndarray::{Array2, Array3, ArrayView3};

use crate::{
    CacheRows, CrossRows, DecoderFeed, Graphs, LogitPositions, Result, TaskError, VisionOutput,
    encoder_mask, is_identity,
};

/// What an inference engine does with tensors. Values stay inside the engine between runs (the
/// cross K/V are 42.5 MB per image at base/384²); only what the task layer reads crosses to the
/// host. `graph` arguments are package roles, for error messages.
#[allow(async_fn_in_trait)]
pub trait TensorBackend {
    /// A tensor held by the engine.
    type Value;
    /// The named outputs of one run.
    type Outputs;

    fn f32(&self, graph: &str, data: &[f32], dims: &[usize]) -> Result<Self::Value>;
    /// [`TensorBackend::f32`] of values the host no longer needs (an engine may keep them
    /// without copying: joined cross K/V are tens of MB per image).
    fn f32_owned(&self, graph: &str, data: Vec<f32>, dims: &[usize]) -> Result<Self::Value> {
        self.f32(graph, &data, dims)
    }
    fn i64(&self, graph: &str, data: &[i64], dims: &[usize]) -> Result<Self::Value>;

    /// Runs the package's graph `graph` on named inputs (a missing graph is
    /// [`blip_package::PackageError::NoSuchGraph`]).
    async fn run(&mut self, graph: &str, inputs: &[(&str, &Self::Value)]) -> Result<Self::Outputs>;

    /// Output `name` of a run, taken out of it; `None` when the graph has no such output.
    fn take(&self, outputs: &mut Self::Outputs, name: &str) -> Option<Self::Value>;

    fn dims(&self, value: &Self::Value) -> Vec<usize>;

    /// Calls `read` with a float tensor's values, row-major, as the host sees them (borrowed
    /// where the engine's memory is the host's, copied where it is not).
    fn with_f32<R>(
        &self,
        graph: &str,
        value: &Self::Value,
        read: impl FnOnce(&[f32]) -> Result<R>,
    ) -> Result<R>;

    /// A float tensor's values, row-major, on the host.
    fn read_f32(&self, graph: &str, value: &Self::Value) -> Result<Vec<f32>> {
        self.with_f32(graph, value, |data| Ok(data.to_vec()))
    }

    /// The last of `t` positions of each row of `[rows, t, width]` floats, on the host (engines
    /// whose reads cross a boundary copy only these).
    fn read_last_positions(&self, graph: &str, value: &Self::Value) -> Result<Vec<f32>> {
        let dims = self.dims(value);
        self.with_f32(graph, value, |data| last_positions(graph, &dims, data))
    }

    /// Rows `rows` (first axis) of a float tensor, in that order.
    fn gather_rows(&self, graph: &str, value: &Self::Value, rows: &[usize]) -> Result<Self::Value> {
        let dims = self.dims(value);
        let (dims, data) =
            self.with_f32(graph, value, |data| gather_rows(graph, &dims, data, rows))?;
        self.f32_owned(graph, data, &dims)
    }
}

/// The last of `t` positions of each row of `[rows, t, width]` values.
fn last_positions(graph: &str, dims: &[usize], data: &[f32]) -> Result<Vec<f32>> {
    let [rows, t, width] = dims[..] else {
        return Err(shape_err(
            graph,
            format!("{dims:?} is not [rows, t, width]"),
        ));
    };
    Ok((0..rows)
        .flat_map(|r| &data[(r * t + t - 1) * width..(r * t + t) * width])
        .copied()
        .collect())
}

/// Rows `rows` (first axis) of `dims`-shaped values, in that order: their dims and values.
fn gather_rows(
    graph: &str,
    dims: &[usize],
    data: &[f32],
    rows: &[usize],
) -> Result<(Vec<usize>, Vec<f32>)> {
    let row: usize = dims.iter().skip(1).product();
    let mut out = Vec::with_capacity(row * rows.len());
    for &r in rows {
        let chunk = data.get(r * row..(r + 1) * row).ok_or_else(|| {
            shape_err(graph, format!("row {r} of {}", dims.first().unwrap_or(&0)))
        })?;
        out.extend_from_slice(chunk);
    }
    let mut new_dims = dims.to_vec();
    if let Some(d) = new_dims.first_mut() {
        *d = rows.len();
    }
    Ok((new_dims, out))
}

fn shape_err(graph: &str, message: String) -> TaskError {
    TaskError::Engine {
        graph: graph.to_string(),
        message,
    }
}

/// Engine values by graph input name, in the decoder's input order.
pub type NamedValues<V> = Vec<(String, V)>;

/// Takes value `name` out of `values` (for backends whose run outputs are [`NamedValues`]).
pub fn take_named<V>(values: &mut NamedValues<V>, name: &str) -> Option<V> {
    let at = values.iter().position(|(n, _)| n == name)?;
    Some(values.swap_remove(at).1)
}

/// Cross-attention K/V and the encoder mask, once per image, as engine values; `rows` says which
/// image each decoder row reads.
pub struct CrossKv<V> {
    values: NamedValues<V>,
    /// `images × E`.
    enc_mask: Vec<i64>,
    rows: CrossRows,
    /// Entries along the K/V's first axis, as the engine reports them.
    held: usize,
}

impl<V> CrossKv<V> {
    /// Which image each decoder row reads.
    pub fn rows(&self) -> &CrossRows {
        &self.rows
    }

    /// Entries held along the K/V's first axis (one per image, however many beams read it).
    pub fn held(&self) -> usize {
        self.held
    }
}

/// The self-attention KV cache: its values, and which of their positions are real
/// ([`CacheRows`]: the masks and position ids of padded rows).
pub struct KvCache<V> {
    past: NamedValues<V>,
    rows: CacheRows,
}

impl<V> KvCache<V> {
    /// Which cached positions of each row are real.
    pub fn rows(&self) -> &CacheRows {
        &self.rows
    }
}

/// One package's graphs on one backend.
pub struct GraphDriver<B> {
    backend: B,
    shape: DecoderShape,
    image_size: usize,
}

impl<B: TensorBackend> GraphDriver<B> {
    pub fn new(backend: B, package: &Package) -> GraphDriver<B> {
        GraphDriver {
            backend,
            shape: DecoderShape::of(package),
            image_size: package.manifest.preprocess.image_size,
        }
    }

    pub fn decoder_shape(&self) -> DecoderShape {
        self.shape
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    fn output(&self, out: &mut B::Outputs, graph: &str, name: &str) -> Result<B::Value> {
        self.backend
            .take(out, name)
            .ok_or_else(|| shape_err(graph, format!("no output {name}")))
    }

    fn read_array3(&self, graph: &str, v: &B::Value) -> Result<Array3<f32>> {
        let dims = self.backend.dims(v);
        let [a, b, c] = dims[..] else {
            return Err(shape_err(
                graph,
                format!("output has shape {dims:?}, not 3-D"),
            ));
        };
        Array3::from_shape_vec((a, b, c), self.backend.read_f32(graph, v)?)
            .map_err(|e| shape_err(graph, e.to_string()))
    }

    fn read_array2(&self, graph: &str, v: &B::Value) -> Result<Array2<f32>> {
        let dims = self.backend.dims(v);
        let [a, b] = dims[..] else {
            return Err(shape_err(
                graph,
                format!("output has shape {dims:?}, not 2-D"),
            ));
        };
        Array2::from_shape_vec((a, b), self.backend.read_f32(graph, v)?)
            .map_err(|e| shape_err(graph, e.to_string()))
    }

    fn states(&self, graph: &str, states: ArrayView3<'_, f32>) -> Result<B::Value> {
        let states = states.as_standard_layout();
        let dims = states.shape().to_vec();
        let data = states
            .as_slice()
            .ok_or_else(|| shape_err(graph, "states are not contiguous".into()))?;
        self.backend.f32(graph, data, &dims)
    }

    /// Runs an image-grounded text graph (`itm` or `vqa_question_encoder`) on row-aligned text
    /// and image states; returns its output `name`.
    async fn grounded(
        &mut self,
        graph: &str,
        batch: &TextBatch,
        image: ArrayView3<'_, f32>,
        name: &str,
    ) -> Result<B::Value> {
        let shape = [batch.rows, batch.cols];
        let ids = self.backend.i64(graph, &batch.ids, &shape)?;
        let mask = self.backend.i64(graph, &batch.mask, &shape)?;
        let states = self.states(graph, image)?;
        let mut out = self
            .backend
            .run(
                graph,
                &[
                    (INPUT_IDS, &ids),
                    (ATTENTION_MASK, &mask),
                    (ENCODER_HIDDEN_STATES, &states),
                ],
            )
            .await?;
        self.output(&mut out, graph, name)
    }

    fn empty_past(&self, rows: usize) -> Result<NamedValues<B::Value>> {
        let s = self.shape;
        let mut past = Vec::with_capacity(2 * s.layers);
        for i in 0..s.layers {
            for name in [io::past_key(i), io::past_value(i)] {
                let empty = self
                    .backend
                    .f32(DECODER, &[], &[rows, s.heads, 0, s.head_dim])?;
                past.push((name, empty));
            }
        }
        Ok(past)
    }

    /// Stacks 4-D float values `[rows, H, S, hd]` along rows, padding each to `len` positions on
    /// axis 2 with zeros (in front when `pad_front`, else behind).
    fn stack_padded(
        &self,
        parts: &[&B::Value],
        len: usize,
        pad_front: bool,
        graph: &str,
    ) -> Result<B::Value> {
        let mut out = Vec::new();
        let mut rows = 0;
        let mut inner = None;
        for v in parts {
            let dims = self.backend.dims(v);
            let [r, h, s, hd] = dims[..] else {
                return Err(shape_err(graph, format!("cannot stack a {dims:?} value")));
            };
            if *inner.get_or_insert((h, hd)) != (h, hd) || s > len {
                return Err(shape_err(
                    graph,
                    format!("cannot stack a {dims:?} value into length {len}"),
                ));
            }
            let pad = vec![0.0f32; (len - s) * hd];
            if s * hd == 0 {
                out.extend(std::iter::repeat_n(0.0, r * h * len * hd));
            } else {
                self.backend.with_f32(graph, v, |data| {
                    for block in data.chunks(s * hd).take(r * h) {
                        if pad_front {
                            out.extend_from_slice(&pad);
                        }
                        out.extend_from_slice(block);
                        if !pad_front {
                            out.extend_from_slice(&pad);
                        }
                    }
                    Ok(())
                })?;
            }
            rows += r;
        }
        let (h, hd) = inner.unwrap_or((0, 0));
        self.backend.f32_owned(graph, out, &[rows, h, len, hd])
    }

    fn held(&self, values: &NamedValues<B::Value>) -> usize {
        values
            .first()
            .and_then(|(_, v)| self.backend.dims(v).first().copied())
            .unwrap_or(0)
    }
}

/// Rows `rows` of a row-major `[n, width]` mask.
fn mask_rows(mask: &[i64], width: usize, rows: &[usize]) -> Vec<i64> {
    rows.iter()
        .flat_map(|&r| mask[r * width..(r + 1) * width].iter().copied())
        .collect()
}

impl<B: TensorBackend> Graphs for GraphDriver<B> {
    type Cross = CrossKv<B::Value>;
    type Cache = KvCache<B::Value>;

    async fn vision(&mut self, pixels: &[f32], n: usize) -> Result<VisionOutput> {
        let s = self.image_size;
        if pixels.len() != n * 3 * s * s {
            return Err(TaskError::Input(format!(
                "{} pixel values for {n} images of 3 × {s} × {s}",
                pixels.len()
            )));
        }
        let input = self.backend.f32(VISION_ENCODER, pixels, &[n, 3, s, s])?;
        let mut out = self
            .backend
            .run(VISION_ENCODER, &[(PIXEL_VALUES, &input)])
            .await?;
        let hidden = self.output(&mut out, VISION_ENCODER, LAST_HIDDEN_STATE)?;
        let hidden = self.read_array3(VISION_ENCODER, &hidden)?;
        // BLIP's graph gives one vector per image (`[n, E]`), BLIP-2's one per query.
        let embeds = match self.backend.take(&mut out, IMAGE_EMBEDS) {
            Some(v) if self.backend.dims(&v).len() == 2 => Some(
                self.read_array2(VISION_ENCODER, &v)?
                    .insert_axis(ndarray::Axis(1)),
            ),
            Some(v) => Some(self.read_array3(VISION_ENCODER, &v)?),
            None => None,
        };
        Ok(VisionOutput { hidden, embeds })
    }

    async fn text_embeds(&mut self, batch: &TextBatch) -> Result<Array2<f32>> {
        let shape = [batch.rows, batch.cols];
        let ids = self.backend.i64(TEXT_ENCODER, &batch.ids, &shape)?;
        let mask = self.backend.i64(TEXT_ENCODER, &batch.mask, &shape)?;
        let mut out = self
            .backend
            .run(TEXT_ENCODER, &[(INPUT_IDS, &ids), (ATTENTION_MASK, &mask)])
            .await?;
        let embeds = self.output(&mut out, TEXT_ENCODER, TEXT_EMBEDS)?;
        self.read_array2(TEXT_ENCODER, &embeds)
    }

    async fn itm_logits(
        &mut self,
        batch: &TextBatch,
        image: ArrayView3<'_, f32>,
    ) -> Result<Array2<f32>> {
        let logits = self.grounded(ITM, batch, image, ITM_LOGITS).await?;
        self.read_array2(ITM, &logits)
    }

    async fn question_states(
        &mut self,
        batch: &TextBatch,
        image: ArrayView3<'_, f32>,
    ) -> Result<Array3<f32>> {
        let graph = VQA_QUESTION_ENCODER;
        let states = self
            .grounded(graph, batch, image, LAST_HIDDEN_STATE)
            .await?;
        self.read_array3(graph, &states)
    }

    async fn cross_kv(
        &mut self,
        states: ArrayView3<'_, f32>,
        enc_mask: Option<&[i64]>,
        repeat: usize,
    ) -> Result<Self::Cross> {
        let (n, e) = (states.shape()[0], states.shape()[1]);
        let enc_mask = encoder_mask(enc_mask, n, e)?;
        let input = self.states(CROSS_KV, states)?;
        let mut out = self
            .backend
            .run(CROSS_KV, &[(ENCODER_HIDDEN_STATES, &input)])
            .await?;
        let mut values = Vec::with_capacity(2 * self.shape.layers);
        for i in 0..self.shape.layers {
            for name in [io::cross_key(i), io::cross_value(i)] {
                let v = self.output(&mut out, CROSS_KV, &name)?;
                values.push((name, v));
            }
        }
        Ok(CrossKv {
            held: self.held(&values),
            values,
            enc_mask,
            rows: CrossRows::repeated(n, repeat),
        })
    }

    async fn new_cache(&mut self, rows: usize) -> Result<Self::Cache> {
        Ok(KvCache {
            past: self.empty_past(rows)?,
            rows: CacheRows::new(rows),
        })
    }

    async fn join_caches(&mut self, parts: Vec<Self::Cache>) -> Result<Self::Cache> {
        let joined = CacheRows::join(&parts.iter().map(|c| &c.rows).collect::<Vec<_>>());
        let (past_len, rows) = (joined.past_len(), joined.rows());
        let mut past = Vec::with_capacity(2 * self.shape.layers);
        let names = parts.first().map_or(&[][..], |c| &c.past[..]);
        for (i, (name, _)) in names.iter().enumerate() {
            let values: Vec<&B::Value> = parts.iter().map(|c| &c.past[i].1).collect();
            let stacked = self.stack_padded(&values, past_len, true, DECODER)?;
            past.push((name.clone(), stacked));
        }
        if past.is_empty() {
            past = self.empty_past(rows)?;
        }
        Ok(KvCache { past, rows: joined })
    }

    async fn select_cache_rows(
        &mut self,
        cache: Self::Cache,
        rows: &[usize],
    ) -> Result<Self::Cache> {
        let kept = cache.rows.select(rows)?;
        let mut past = cache.past;
        for (_, v) in past.iter_mut() {
            *v = self.backend.gather_rows(DECODER, v, rows)?;
        }
        Ok(KvCache { past, rows: kept })
    }

    async fn join_cross(&mut self, parts: Vec<Self::Cross>) -> Result<Self::Cross> {
        let lens: Vec<usize> = parts
            .iter()
            .map(|c| c.enc_mask.len() / c.rows.images().max(1))
            .collect();
        let enc_len = lens.iter().copied().max().unwrap_or(0);
        let mut values = Vec::with_capacity(2 * self.shape.layers);
        let names = parts.first().map_or(&[][..], |c| &c.values[..]);
        for (i, (name, _)) in names.iter().enumerate() {
            let vs: Vec<&B::Value> = parts.iter().map(|c| &c.values[i].1).collect();
            values.push((
                name.clone(),
                self.stack_padded(&vs, enc_len, false, CROSS_KV)?,
            ));
        }
        let mut enc_mask = Vec::new();
        for (c, &e) in parts.iter().zip(&lens) {
            for row in c.enc_mask.chunks(e.max(1)).take(c.rows.images()) {
                enc_mask.extend_from_slice(row);
                enc_mask.extend(std::iter::repeat_n(0, enc_len - e));
            }
        }
        Ok(CrossKv {
            held: self.held(&values),
            values,
            enc_mask,
            rows: CrossRows::joined(parts.iter().map(|c| &c.rows)),
        })
    }

    async fn select_cross_rows(
        &mut self,
        cross: Self::Cross,
        rows: &[usize],
    ) -> Result<Self::Cross> {
        let (left, kept) = cross.rows.select(rows)?;
        if cross.rows.keeps_all(&kept) {
            return Ok(CrossKv {
                rows: left,
                ..cross
            });
        }
        let enc_len = cross.enc_mask.len() / cross.rows.images().max(1);
        let mut values = cross.values;
        for (_, v) in values.iter_mut() {
            *v = self.backend.gather_rows(CROSS_KV, v, &kept)?;
        }
        Ok(CrossKv {
            held: self.held(&values),
            values,
            enc_mask: mask_rows(&cross.enc_mask, enc_len, &kept),
            rows: left,
        })
    }

    async fn decode(
        &mut self,
        cross: &Self::Cross,
        cache: &mut Self::Cache,
        feed: DecoderFeed<'_>,
    ) -> Result<Vec<f32>> {
        let (rows, t, past_len) = (cache.rows.rows(), feed.t, cache.rows.past_len());
        if cross.rows.rows() != rows || feed.tokens.len() != rows * t {
            return Err(TaskError::Input(format!(
                "decoder feed of {} tokens × {t} for a cache of {rows} rows and cross K/V of {}",
                feed.tokens.len(),
                cross.rows.rows()
            )));
        }
        if let Some(src) = feed.reorder.filter(|s| !is_identity(s)) {
            // Beam search moved histories between rows: gather the cache rows (HF `reorder_cache`).
            cache.rows.reorder(src)?;
            for (_, v) in cache.past.iter_mut() {
                *v = self.backend.gather_rows(DECODER, v, src)?;
            }
        }
        let step = cache.rows.step(t, feed.attention_mask)?;
        let images = cross.rows.images();
        let enc_len = cross.enc_mask.len() / images.max(1);
        let shared = cross.rows.feed();
        let b = &self.backend;
        let ids = b.i64(DECODER, feed.tokens, &[rows, t])?;
        let positions = b.i64(DECODER, &step.positions, &[rows, t])?;
        let mask = b.i64(DECODER, &step.attention_mask, &[rows, past_len + t])?;
        let enc_mask = b.i64(DECODER, &cross.enc_mask, &[images, enc_len])?;
        let groups = b.i64(DECODER, &shared.groups, &[images, shared.group])?;
        let slots = b.i64(DECODER, &shared.slots, &[rows])?;
        let mut inputs: Vec<(&str, &B::Value)> = vec![
            (INPUT_IDS, &ids),
            (POSITION_IDS, &positions),
            (ATTENTION_MASK, &mask),
            (ENCODER_ATTENTION_MASK, &enc_mask),
            (CROSS_GROUPS, &groups),
            (CROSS_SLOTS, &slots),
        ];
        for (name, v) in cache.past.iter().chain(cross.values.iter()) {
            inputs.push((name.as_str(), v));
        }
        let mut out = self.backend.run(DECODER, &inputs).await?;
        let logits = self.output(&mut out, DECODER, LOGITS)?;
        let vocab = self.shape.vocab;
        let dims = self.backend.dims(&logits);
        if dims[..] != [rows, t, vocab] {
            return Err(shape_err(
                DECODER,
                format!("logits are {dims:?}, expected [{rows}, {t}, {vocab}]"),
            ));
        }
        let logits = match feed.logits {
            LogitPositions::All => self.backend.read_f32(DECODER, &logits)?,
            LogitPositions::Last => self.backend.read_last_positions(DECODER, &logits)?,
        };
        let mut present = Vec::with_capacity(2 * self.shape.layers);
        for i in 0..self.shape.layers {
            for (output, past) in [
                (io::present_key(i), io::past_key(i)),
                (io::present_value(i), io::past_value(i)),
            ] {
                present.push((past, self.output(&mut out, DECODER, &output)?));
            }
        }
        cache.past = present;
        cache.rows.advance(t, step);
        Ok(logits)
    }
}
