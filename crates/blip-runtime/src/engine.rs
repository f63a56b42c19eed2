//! The native engine: one package's graphs as ONNX Runtime sessions behind [`Graphs`]. The cross
//! K/V and the KV cache stay ORT values between steps (a step's `present.*` outputs are the next
//! step's `past_key_values.*` inputs, without copying).

use std::borrow::Cow;
use std::collections::HashMap;

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
use blip_tasks::{
    CacheRows, CrossRows, DecoderFeed, Graphs, LogitPositions, TaskError, VisionOutput,
    encoder_mask, is_identity,
};
use ndarray::{Array2, Array3, ArrayView3};
use ort::session::{Session, SessionInputValue, SessionOutputs};
use ort::value::{DynValue, Tensor, TensorRef};

use crate::{OrtLibrary, Result, SessionOptions};

type TaskResult<T> = blip_tasks::Result<T>;

/// Named graph values: the KV cache or the cross-attention K/V, in decoder input order.
pub type NamedValues = Vec<(String, DynValue)>;

pub(crate) fn infer_err(graph: &str) -> impl Fn(ort::Error) -> TaskError + '_ {
    move |e| TaskError::Engine {
        graph: graph.to_string(),
        message: e.to_string(),
    }
}

/// Seconds per graph run, labelled `graph` (the package role). Recorded through the `metrics`
/// facade: nothing unless the process installs a recorder, as `blip-onnx serve` does for `/metrics`.
pub const GRAPH_DURATION: &str = "blip_graph_duration_seconds";

/// Runs one graph, recording its duration under [`GRAPH_DURATION`].
fn timed<T>(graph: &str, run: impl FnOnce() -> T) -> T {
    let start = std::time::Instant::now();
    let out = run();
    metrics::histogram!(GRAPH_DURATION, "graph" => graph.to_owned())
        .record(start.elapsed().as_secs_f64());
    out
}

fn shape_err(graph: &str, message: String) -> TaskError {
    TaskError::Engine {
        graph: graph.to_string(),
        message,
    }
}

fn to_array3(v: &DynValue, graph: &str) -> TaskResult<Array3<f32>> {
    let (shape, data) = v.try_extract_tensor::<f32>().map_err(infer_err(graph))?;
    let dims: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
    if dims.len() != 3 {
        return Err(shape_err(
            graph,
            format!("output has shape {dims:?}, not 3-D"),
        ));
    }
    Array3::from_shape_vec((dims[0], dims[1], dims[2]), data.to_vec())
        .map_err(|e| shape_err(graph, e.to_string()))
}

fn to_array2(v: &DynValue, graph: &str) -> TaskResult<Array2<f32>> {
    let (shape, data) = v.try_extract_tensor::<f32>().map_err(infer_err(graph))?;
    if shape.len() != 2 {
        return Err(shape_err(
            graph,
            format!("output has shape {shape:?}, not 2-D"),
        ));
    }
    Array2::from_shape_vec((shape[0] as usize, shape[1] as usize), data.to_vec())
        .map_err(|e| shape_err(graph, e.to_string()))
}

/// Selects rows of a float tensor.
fn gather_rows(v: &DynValue, rows: &[usize]) -> TaskResult<DynValue> {
    let (shape, data) = v.try_extract_tensor::<f32>().map_err(infer_err(DECODER))?;
    let dims: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
    let row: usize = dims[1..].iter().product();
    let mut out = Vec::with_capacity(row * rows.len());
    for &r in rows {
        let chunk = data
            .get(r * row..(r + 1) * row)
            .ok_or_else(|| shape_err(DECODER, format!("reorder names row {r} of {}", dims[0])))?;
        out.extend_from_slice(chunk);
    }
    let mut new_dims = dims;
    new_dims[0] = rows.len();
    Ok(Tensor::from_array((new_dims, out))
        .map_err(infer_err(DECODER))?
        .into_dyn())
}

/// Cross-attention K/V and the encoder mask, once per image, as ORT values; `rows` says which
/// image each decoder row reads.
pub struct OrtCross {
    values: NamedValues,
    /// `images × E`.
    enc_mask: Vec<i64>,
    rows: CrossRows,
}

impl OrtCross {
    /// Which image each decoder row reads.
    pub fn rows(&self) -> &CrossRows {
        &self.rows
    }

    /// Entries held along the K/V's first axis (one per image, however many beams read it).
    pub fn held(&self) -> usize {
        self.values
            .first()
            .and_then(|(_, v)| v.shape().first().copied())
            .map_or(0, |d| d as usize)
    }
}

/// The self-attention KV cache: its values, and which of their positions are real
/// ([`CacheRows`], the bookkeeping every engine shares).
pub struct OrtCache {
    past: NamedValues,
    rows: CacheRows,
}

/// Stacks 4-D float tensors `[rows, H, S, hd]` along rows, padding each to `len` positions on
/// axis 2 with zeros (in front when `pad_front`, else behind).
fn stack_padded(
    parts: &[&DynValue],
    len: usize,
    pad_front: bool,
    graph: &str,
) -> TaskResult<DynValue> {
    let mut out = Vec::new();
    let mut rows = 0;
    let mut inner = None;
    for v in parts {
        let (shape, data) = v.try_extract_tensor::<f32>().map_err(infer_err(graph))?;
        let dims: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
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
            for block in data.chunks(s * hd).take(r * h) {
                if pad_front {
                    out.extend_from_slice(&pad);
                }
                out.extend_from_slice(block);
                if !pad_front {
                    out.extend_from_slice(&pad);
                }
            }
        }
        rows += r;
    }
    let (h, hd) = inner.unwrap_or((0, 0));
    Ok(Tensor::from_array(([rows, h, len, hd], out))
        .map_err(infer_err(graph))?
        .into_dyn())
}

/// Rows `rows` of a row-major `[n, width]` mask.
fn mask_rows(mask: &[i64], width: usize, rows: &[usize]) -> Vec<i64> {
    rows.iter()
        .flat_map(|&r| mask[r * width..(r + 1) * width].iter().copied())
        .collect()
}

/// One package's graphs on native ONNX Runtime.
pub struct OrtGraphs {
    package: Package,
    shape: DecoderShape,
    sessions: HashMap<String, Session>,
}

impl OrtGraphs {
    /// Opens every graph the package lists.
    pub fn open(
        library: &OrtLibrary,
        package: &Package,
        opts: &SessionOptions,
    ) -> Result<OrtGraphs> {
        // One thread per graph: creating a session (parsing, optimizing, pre-packing weights) is
        // single-threaded work, so the graphs of a package open side by side.
        let opened: Vec<(String, Result<Session>)> = std::thread::scope(|scope| {
            let opening: Vec<_> = package
                .manifest
                .graphs
                .keys()
                .map(|role| {
                    let job = scope.spawn(move || library.package_session(package, role, opts));
                    (role, job)
                })
                .collect();
            opening
                .into_iter()
                .map(|(role, job)| {
                    let session = job
                        .join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                    (role.clone(), session)
                })
                .collect()
        });
        let mut sessions = HashMap::new();
        for (role, session) in opened {
            sessions.insert(role, session?);
        }
        Ok(OrtGraphs {
            package: package.clone(),
            shape: DecoderShape::of(package),
            sessions,
        })
    }

    pub fn decoder_shape(&self) -> DecoderShape {
        self.shape
    }

    fn session(&mut self, role: &str) -> TaskResult<&mut Session> {
        let package = &self.package;
        self.sessions.get_mut(role).ok_or_else(|| {
            TaskError::Package(blip_package::PackageError::NoSuchGraph {
                path: package.dir.clone(),
                graph: role.to_string(),
                head: package.manifest.head,
            })
        })
    }

    /// Runs an image-grounded text graph (`itm` or `vqa_question_encoder`) on row-aligned text and image states.
    fn grounded(
        &mut self,
        role: &str,
        batch: &TextBatch,
        image: ArrayView3<'_, f32>,
    ) -> TaskResult<SessionOutputs<'_>> {
        let image = image.as_standard_layout().into_owned();
        let session = self.session(role)?;
        let shape = [batch.rows, batch.cols];
        let ids =
            TensorRef::from_array_view((shape, batch.ids.as_slice())).map_err(infer_err(role))?;
        let mask =
            TensorRef::from_array_view((shape, batch.mask.as_slice())).map_err(infer_err(role))?;
        let states = Tensor::from_array(image).map_err(infer_err(role))?;
        timed(role, || {
            session.run(
                ort::inputs![INPUT_IDS => ids, ATTENTION_MASK => mask, ENCODER_HIDDEN_STATES => states],
            )
        })
        .map_err(infer_err(role))
    }

    fn empty_past(&self, rows: usize) -> TaskResult<NamedValues> {
        let s = self.shape;
        let mut past = Vec::with_capacity(2 * s.layers);
        for i in 0..s.layers {
            for name in [io::past_key(i), io::past_value(i)] {
                let t =
                    Tensor::<f32>::from_array(([rows, s.heads, 0, s.head_dim], Vec::<f32>::new()))
                        .map_err(infer_err(DECODER))?;
                past.push((name, t.into_dyn()));
            }
        }
        Ok(past)
    }
}

impl Graphs for OrtGraphs {
    type Cross = OrtCross;
    type Cache = OrtCache;

    async fn vision(&mut self, pixels: &[f32], n: usize) -> TaskResult<VisionOutput> {
        let s = self.package.manifest.preprocess.image_size;
        if pixels.len() != n * 3 * s * s {
            return Err(TaskError::Input(format!(
                "{} pixel values for {n} images of 3 × {s} × {s}",
                pixels.len()
            )));
        }
        let session = self.session(VISION_ENCODER)?;
        let input = TensorRef::from_array_view(([n, 3, s, s], pixels))
            .map_err(infer_err(VISION_ENCODER))?;
        let outputs = timed(VISION_ENCODER, || {
            session.run(ort::inputs![PIXEL_VALUES => input])
        })
        .map_err(infer_err(VISION_ENCODER))?;
        let hidden = to_array3(&outputs[LAST_HIDDEN_STATE], VISION_ENCODER)?;
        let embeds = match outputs.get(IMAGE_EMBEDS) {
            Some(v) => Some(to_array2(v, VISION_ENCODER)?),
            None => None,
        };
        Ok(VisionOutput { hidden, embeds })
    }

    async fn text_embeds(&mut self, batch: &TextBatch) -> TaskResult<Array2<f32>> {
        let session = self.session(TEXT_ENCODER)?;
        let shape = [batch.rows, batch.cols];
        let ids = TensorRef::from_array_view((shape, batch.ids.as_slice()))
            .map_err(infer_err(TEXT_ENCODER))?;
        let mask = TensorRef::from_array_view((shape, batch.mask.as_slice()))
            .map_err(infer_err(TEXT_ENCODER))?;
        let out = timed(TEXT_ENCODER, || {
            session.run(ort::inputs![INPUT_IDS => ids, ATTENTION_MASK => mask])
        })
        .map_err(infer_err(TEXT_ENCODER))?;
        to_array2(&out[TEXT_EMBEDS], TEXT_ENCODER)
    }

    async fn itm_logits(
        &mut self,
        batch: &TextBatch,
        image: ArrayView3<'_, f32>,
    ) -> TaskResult<Array2<f32>> {
        let out = self.grounded(ITM, batch, image)?;
        to_array2(&out[ITM_LOGITS], ITM)
    }

    async fn question_states(
        &mut self,
        batch: &TextBatch,
        image: ArrayView3<'_, f32>,
    ) -> TaskResult<Array3<f32>> {
        let out = self.grounded(VQA_QUESTION_ENCODER, batch, image)?;
        to_array3(&out[LAST_HIDDEN_STATE], VQA_QUESTION_ENCODER)
    }

    async fn cross_kv(
        &mut self,
        states: ArrayView3<'_, f32>,
        enc_mask: Option<&[i64]>,
        repeat: usize,
    ) -> TaskResult<OrtCross> {
        let (n, e) = (states.shape()[0], states.shape()[1]);
        let enc_mask = encoder_mask(enc_mask, n, e)?;
        let states = states.as_standard_layout().into_owned();
        let layers = self.shape.layers;
        let session = self.session(CROSS_KV)?;
        let input = Tensor::from_array(states).map_err(infer_err(CROSS_KV))?;
        let mut out = timed(CROSS_KV, || {
            session.run(ort::inputs![ENCODER_HIDDEN_STATES => input])
        })
        .map_err(infer_err(CROSS_KV))?;
        let mut values = Vec::with_capacity(2 * layers);
        for i in 0..layers {
            for name in [io::cross_key(i), io::cross_value(i)] {
                let v = out
                    .remove(&name)
                    .ok_or_else(|| shape_err(CROSS_KV, format!("no output {name}")))?;
                values.push((name, v));
            }
        }
        Ok(OrtCross {
            values,
            enc_mask,
            rows: CrossRows::repeated(n, repeat),
        })
    }

    async fn new_cache(&mut self, rows: usize) -> TaskResult<OrtCache> {
        Ok(OrtCache {
            past: self.empty_past(rows)?,
            rows: CacheRows::new(rows),
        })
    }

    async fn join_caches(&mut self, parts: Vec<OrtCache>) -> TaskResult<OrtCache> {
        let joined = CacheRows::join(&parts.iter().map(|c| &c.rows).collect::<Vec<_>>());
        let (past_len, rows) = (joined.past_len(), joined.rows());
        let mut past = Vec::with_capacity(2 * self.shape.layers);
        for (i, (name, _)) in parts
            .first()
            .map_or(&[][..], |c| &c.past[..])
            .iter()
            .enumerate()
        {
            let values: Vec<&DynValue> = parts.iter().map(|c| &c.past[i].1).collect();
            past.push((
                name.clone(),
                stack_padded(&values, past_len, true, DECODER)?,
            ));
        }
        if past.is_empty() {
            past = self.empty_past(rows)?;
        }
        Ok(OrtCache { past, rows: joined })
    }

    async fn select_cache_rows(&mut self, cache: OrtCache, rows: &[usize]) -> TaskResult<OrtCache> {
        let kept = cache.rows.select(rows)?;
        let mut past = cache.past;
        for (_, v) in past.iter_mut() {
            *v = gather_rows(v, rows)?;
        }
        Ok(OrtCache { past, rows: kept })
    }

    async fn join_cross(&mut self, parts: Vec<OrtCross>) -> TaskResult<OrtCross> {
        let lens: Vec<usize> = parts
            .iter()
            .map(|c| c.enc_mask.len() / c.rows.images().max(1))
            .collect();
        let enc_len = lens.iter().copied().max().unwrap_or(0);
        let mut values = Vec::with_capacity(2 * self.shape.layers);
        for (i, (name, _)) in parts
            .first()
            .map_or(&[][..], |c| &c.values[..])
            .iter()
            .enumerate()
        {
            let vs: Vec<&DynValue> = parts.iter().map(|c| &c.values[i].1).collect();
            values.push((name.clone(), stack_padded(&vs, enc_len, false, CROSS_KV)?));
        }
        let mut enc_mask = Vec::new();
        for (c, &e) in parts.iter().zip(&lens) {
            for row in c.enc_mask.chunks(e.max(1)).take(c.rows.images()) {
                enc_mask.extend_from_slice(row);
                enc_mask.extend(std::iter::repeat_n(0, enc_len - e));
            }
        }
        Ok(OrtCross {
            values,
            enc_mask,
            rows: CrossRows::joined(parts.iter().map(|c| &c.rows)),
        })
    }

    async fn select_cross_rows(&mut self, cross: OrtCross, rows: &[usize]) -> TaskResult<OrtCross> {
        let (left, kept) = cross.rows.select(rows)?;
        if cross.rows.keeps_all(&kept) {
            return Ok(OrtCross {
                rows: left,
                ..cross
            });
        }
        let enc_len = cross.enc_mask.len() / cross.rows.images().max(1);
        let mut values = cross.values;
        for (_, v) in values.iter_mut() {
            *v = gather_rows(v, &kept)?;
        }
        Ok(OrtCross {
            values,
            enc_mask: mask_rows(&cross.enc_mask, enc_len, &kept),
            rows: left,
        })
    }

    async fn decode(
        &mut self,
        cross: &OrtCross,
        cache: &mut OrtCache,
        feed: DecoderFeed<'_>,
    ) -> TaskResult<Vec<f32>> {
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
                *v = gather_rows(v, src)?;
            }
        }
        let step = cache.rows.step(t, feed.attention_mask)?;
        let images = cross.rows.images();
        let enc_len = cross.enc_mask.len() / images.max(1);
        let shared = cross.rows.feed();
        let mut inputs: Vec<(Cow<'_, str>, SessionInputValue<'_>)> = vec![
            (
                INPUT_IDS.into(),
                TensorRef::from_array_view(([rows, t], feed.tokens))
                    .map_err(infer_err(DECODER))?
                    .into(),
            ),
            (
                POSITION_IDS.into(),
                Tensor::from_array(([rows, t], step.positions.clone()))
                    .map_err(infer_err(DECODER))?
                    .into(),
            ),
            (
                ATTENTION_MASK.into(),
                TensorRef::from_array_view(([rows, past_len + t], step.attention_mask.as_slice()))
                    .map_err(infer_err(DECODER))?
                    .into(),
            ),
            (
                ENCODER_ATTENTION_MASK.into(),
                TensorRef::from_array_view(([images, enc_len], cross.enc_mask.as_slice()))
                    .map_err(infer_err(DECODER))?
                    .into(),
            ),
            (
                CROSS_GROUPS.into(),
                Tensor::from_array(([images, shared.group], shared.groups))
                    .map_err(infer_err(DECODER))?
                    .into(),
            ),
            (
                CROSS_SLOTS.into(),
                Tensor::from_array(([rows], shared.slots))
                    .map_err(infer_err(DECODER))?
                    .into(),
            ),
        ];
        for (name, v) in cache.past.iter().chain(cross.values.iter()) {
            inputs.push((Cow::Borrowed(name.as_str()), SessionInputValue::from(v)));
        }
        let layers = self.shape.layers;
        let vocab = self.shape.vocab;
        let session = self.session(DECODER)?;
        let mut out = timed(DECODER, || session.run(inputs)).map_err(infer_err(DECODER))?;
        let (shape, data) = out[LOGITS]
            .try_extract_tensor::<f32>()
            .map_err(infer_err(DECODER))?;
        let (t_out, v_out) = (shape[1] as usize, shape[2] as usize);
        if v_out != vocab || t_out != t {
            return Err(shape_err(
                DECODER,
                format!("logits are {t_out} × {v_out}, expected {t} × {vocab}"),
            ));
        }
        let logits = match feed.logits {
            LogitPositions::All => data.to_vec(),
            LogitPositions::Last => {
                let mut last = Vec::with_capacity(rows * vocab);
                for r in 0..rows {
                    let at = (r * t_out + t_out - 1) * vocab;
                    last.extend_from_slice(&data[at..at + vocab]);
                }
                last
            }
        };
        let mut present = Vec::with_capacity(2 * layers);
        for i in 0..layers {
            for (output, past) in [
                (io::present_key(i), io::past_key(i)),
                (io::present_value(i), io::past_value(i)),
            ] {
                let v = out
                    .remove(&output)
                    .ok_or_else(|| shape_err(DECODER, format!("no output {output}")))?;
                present.push((past, v));
            }
        }
        cache.past = present;
        cache.rows.advance(t, step);
        Ok(logits)
    }
}
