//! The browser engine: one package's graphs as onnxruntime-web sessions behind [`Graphs`],
//! mirroring blip-runtime's native engine. Cross K/V and the KV cache stay `ort.Tensor`s on the
//! JS side (a step's `present.*` outputs are the next step's `past_key_values.*` inputs); beam
//! reorder gathers their rows there.

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
use js_sys::{BigInt64Array, Float32Array, Object, Reflect};
use ndarray::{Array2, Array3, ArrayView3};
use wasm_bindgen::JsValue;

use crate::shim;

type Result<T> = blip_tasks::Result<T>;

fn engine_err(graph: &str) -> impl Fn(JsValue) -> TaskError + '_ {
    move |e| TaskError::Engine {
        graph: graph.to_string(),
        message: shim::message(&e),
    }
}

fn shape_err(graph: &str, message: String) -> TaskError {
    TaskError::Engine {
        graph: graph.to_string(),
        message,
    }
}

fn dims_u32(dims: &[usize]) -> Vec<u32> {
    dims.iter().map(|&d| d as u32).collect()
}

fn f32_tensor(data: &[f32], dims: &[usize]) -> JsValue {
    shim::tensor("float32", &Float32Array::from(data).into(), &dims_u32(dims))
}

fn i64_tensor(data: &[i64], dims: &[usize]) -> JsValue {
    shim::tensor("int64", &BigInt64Array::from(data).into(), &dims_u32(dims))
}

/// A float output as (dims, values), copied into wasm memory.
fn read_f32(results: &JsValue, name: &str, graph: &str) -> Result<(Vec<usize>, Vec<f32>)> {
    let t = shim::output(results, name).map_err(engine_err(graph))?;
    let data = shim::tensor_data(&t).map_err(engine_err(graph))?;
    let dims = shim::tensor_dims(&t).to_vec();
    Ok((
        dims.into_iter().map(|d| d as usize).collect(),
        data.to_vec(),
    ))
}

fn read_array3(results: &JsValue, name: &str, graph: &str) -> Result<Array3<f32>> {
    let (dims, data) = read_f32(results, name, graph)?;
    if dims.len() != 3 {
        return Err(shape_err(
            graph,
            format!("{name} has shape {dims:?}, not 3-D"),
        ));
    }
    Array3::from_shape_vec((dims[0], dims[1], dims[2]), data)
        .map_err(|e| shape_err(graph, e.to_string()))
}

fn read_array2(results: &JsValue, name: &str, graph: &str) -> Result<Array2<f32>> {
    let (dims, data) = read_f32(results, name, graph)?;
    if dims.len() != 2 {
        return Err(shape_err(
            graph,
            format!("{name} has shape {dims:?}, not 2-D"),
        ));
    }
    Array2::from_shape_vec((dims[0], dims[1]), data).map_err(|e| shape_err(graph, e.to_string()))
}

/// Feeds by name, in the order given.
fn feeds(pairs: &[(&str, &JsValue)]) -> Result<Object> {
    let obj = Object::new();
    for (name, v) in pairs {
        Reflect::set(&obj, &JsValue::from_str(name), v).map_err(engine_err("feeds"))?;
    }
    Ok(obj)
}

/// Cross-attention K/V (`ort.Tensor`s) and the encoder mask, once per image; `rows` says which
/// image each decoder row reads.
pub struct WebCross {
    values: Vec<(String, JsValue)>,
    /// `images × E`.
    enc_mask: Vec<i64>,
    rows: CrossRows,
}

/// The self-attention KV cache: its `ort.Tensor`s, and which of their positions are real
/// ([`CacheRows`], the bookkeeping the native engine shares: the same masks and position ids).
pub struct WebCache {
    past: Vec<(String, JsValue)>,
    rows: CacheRows,
}

/// One package's graphs on onnxruntime-web.
pub struct WebGraphs {
    package: Package,
    shape: DecoderShape,
    sessions: HashMap<String, JsValue>,
}

impl WebGraphs {
    /// `sessions`: one `ort.InferenceSession` per role the package lists.
    pub fn new(package: &Package, sessions: HashMap<String, JsValue>) -> WebGraphs {
        WebGraphs {
            package: package.clone(),
            shape: DecoderShape::of(package),
            sessions,
        }
    }

    fn session(&self, role: &str) -> Result<&JsValue> {
        self.sessions.get(role).ok_or_else(|| {
            TaskError::Package(blip_package::PackageError::NoSuchGraph {
                path: self.package.dir.clone(),
                graph: role.to_string(),
                head: self.package.manifest.head,
            })
        })
    }

    async fn run(&self, role: &str, inputs: &[(&str, &JsValue)]) -> Result<JsValue> {
        let session = self.session(role)?;
        shim::run(session, &feeds(inputs)?)
            .await
            .map_err(engine_err(role))
    }

    /// An image-grounded text graph (`itm` or `vqa_question_encoder`).
    async fn grounded(
        &self,
        role: &str,
        batch: &TextBatch,
        image: ArrayView3<'_, f32>,
    ) -> Result<JsValue> {
        let shape = [batch.rows, batch.cols];
        let image = image.as_standard_layout();
        let dims = image.shape().to_vec();
        let states = f32_tensor(image.as_slice().unwrap_or_default(), &dims);
        self.run(
            role,
            &[
                (INPUT_IDS, &i64_tensor(&batch.ids, &shape)),
                (ATTENTION_MASK, &i64_tensor(&batch.mask, &shape)),
                (ENCODER_HIDDEN_STATES, &states),
            ],
        )
        .await
    }
}

impl Graphs for WebGraphs {
    type Cross = WebCross;
    type Cache = WebCache;

    async fn vision(&mut self, pixels: &[f32], n: usize) -> Result<VisionOutput> {
        let s = self.package.manifest.preprocess.image_size;
        if pixels.len() != n * 3 * s * s {
            return Err(TaskError::Input(format!(
                "{} pixel values for {n} images of 3 × {s} × {s}",
                pixels.len()
            )));
        }
        let out = self
            .run(
                VISION_ENCODER,
                &[(PIXEL_VALUES, &f32_tensor(pixels, &[n, 3, s, s]))],
            )
            .await?;
        let hidden = read_array3(&out, LAST_HIDDEN_STATE, VISION_ENCODER)?;
        let embeds = if shim::has_output(&out, IMAGE_EMBEDS) {
            Some(read_array2(&out, IMAGE_EMBEDS, VISION_ENCODER)?)
        } else {
            None
        };
        Ok(VisionOutput { hidden, embeds })
    }

    async fn text_embeds(&mut self, batch: &TextBatch) -> Result<Array2<f32>> {
        let shape = [batch.rows, batch.cols];
        let out = self
            .run(
                TEXT_ENCODER,
                &[
                    (INPUT_IDS, &i64_tensor(&batch.ids, &shape)),
                    (ATTENTION_MASK, &i64_tensor(&batch.mask, &shape)),
                ],
            )
            .await?;
        read_array2(&out, TEXT_EMBEDS, TEXT_ENCODER)
    }

    async fn itm_logits(
        &mut self,
        batch: &TextBatch,
        image: ArrayView3<'_, f32>,
    ) -> Result<Array2<f32>> {
        let out = self.grounded(ITM, batch, image).await?;
        read_array2(&out, ITM_LOGITS, ITM)
    }

    async fn question_states(
        &mut self,
        batch: &TextBatch,
        image: ArrayView3<'_, f32>,
    ) -> Result<Array3<f32>> {
        let out = self.grounded(VQA_QUESTION_ENCODER, batch, image).await?;
        read_array3(&out, LAST_HIDDEN_STATE, VQA_QUESTION_ENCODER)
    }

    async fn cross_kv(
        &mut self,
        states: ArrayView3<'_, f32>,
        enc_mask: Option<&[i64]>,
        repeat: usize,
    ) -> Result<WebCross> {
        let (n, e) = (states.shape()[0], states.shape()[1]);
        let enc_mask = encoder_mask(enc_mask, n, e)?;
        let states = states.as_standard_layout();
        let dims = states.shape().to_vec();
        let input = f32_tensor(states.as_slice().unwrap_or_default(), &dims);
        let out = self
            .run(CROSS_KV, &[(ENCODER_HIDDEN_STATES, &input)])
            .await?;
        let mut values = Vec::with_capacity(2 * self.shape.layers);
        for i in 0..self.shape.layers {
            for name in [io::cross_key(i), io::cross_value(i)] {
                let v = shim::output(&out, &name).map_err(engine_err(CROSS_KV))?;
                values.push((name, v));
            }
        }
        Ok(WebCross {
            values,
            enc_mask,
            rows: CrossRows::repeated(n, repeat),
        })
    }

    async fn new_cache(&mut self, rows: usize) -> Result<WebCache> {
        let s = self.shape;
        let mut past = Vec::with_capacity(2 * s.layers);
        for i in 0..s.layers {
            for name in [io::past_key(i), io::past_value(i)] {
                let empty = f32_tensor(&[], &[rows, s.heads, 0, s.head_dim]);
                past.push((name, empty));
            }
        }
        Ok(WebCache {
            past,
            rows: CacheRows::new(rows),
        })
    }

    async fn decode(
        &mut self,
        cross: &WebCross,
        cache: &mut WebCache,
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
            let src: Vec<u32> = src.iter().map(|&r| r as u32).collect();
            for (_, v) in cache.past.iter_mut() {
                *v = shim::gather_rows(v, &src).map_err(engine_err(DECODER))?;
            }
        }
        let step = cache.rows.step(t, feed.attention_mask)?;
        let images = cross.rows.images();
        let enc_len = cross.enc_mask.len() / images.max(1);
        let shared = cross.rows.feed();
        let ids = i64_tensor(feed.tokens, &[rows, t]);
        let positions = i64_tensor(&step.positions, &[rows, t]);
        let mask = i64_tensor(&step.attention_mask, &[rows, past_len + t]);
        let enc_mask = i64_tensor(&cross.enc_mask, &[images, enc_len]);
        let groups = i64_tensor(&shared.groups, &[images, shared.group]);
        let slots = i64_tensor(&shared.slots, &[rows]);
        let mut inputs: Vec<(&str, &JsValue)> = vec![
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
        let out = self.run(DECODER, &inputs).await?;
        let vocab = self.shape.vocab;
        let logits_t = shim::output(&out, LOGITS).map_err(engine_err(DECODER))?;
        let dims = shim::tensor_dims(&logits_t).to_vec();
        let (t_out, v_out) = (
            dims.get(1).copied().unwrap_or(0) as usize,
            dims.get(2).copied().unwrap_or(0) as usize,
        );
        if v_out != vocab || t_out != t {
            return Err(shape_err(
                DECODER,
                format!("logits are {t_out} × {v_out}, expected {t} × {vocab}"),
            ));
        }
        let data = shim::tensor_data(&logits_t).map_err(engine_err(DECODER))?;
        let logits = match feed.logits {
            LogitPositions::All => data.to_vec(),
            LogitPositions::Last => {
                // Only the last position of each row crosses into wasm.
                let mut last = Vec::with_capacity(rows * vocab);
                for r in 0..rows {
                    let at = ((r * t_out + t_out - 1) * vocab) as u32;
                    last.extend(data.subarray(at, at + vocab as u32).to_vec());
                }
                last
            }
        };
        let mut present = Vec::with_capacity(2 * self.shape.layers);
        for i in 0..self.shape.layers {
            for (output, past) in [
                (io::present_key(i), io::past_key(i)),
                (io::present_value(i), io::past_value(i)),
            ] {
                let v = shim::output(&out, &output).map_err(engine_err(DECODER))?;
                present.push((past, v));
            }
        }
        cache.past = present;
        cache.rows.advance(t, step);
        Ok(logits)
    }
}
