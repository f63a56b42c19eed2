//! A pure-Rust engine for the task layer's tests: [`FakeBackend`] is a tensor backend of the one
//! graph driver ([`GraphDriver`], which native ONNX Runtime and onnxruntime-web also run under)
//! whose graphs are small deterministic math instead of BLIP's networks, so the task layer and
//! the driver (decoding, batching, the KV cache's padding and positions, ranking, error paths)
//! run without ONNX Runtime or a converted package. [`FakeGraphs`] counts the driver's calls and
//! fails on demand; [`fake_blip`] puts it behind a [`Blip`] with a 12-token word-level tokenizer.
//!
//! The math is public ([`image_features`], [`token_feature`], [`context`], [`next_token_logits`])
//! so that tests compute expected results on their own, from first principles, and compare.
//! Next-token logits depend on the whole real history of a row and on its image. The fake
//! decoder keeps each row's tokens in its K/V tensors (the token id, and a mark that a decoder
//! run wrote it), so a driver that loses, reorders or leaks a token (beams, joined or selected
//! rows) gives other logits; it refuses a mask that reads padding and position ids that are not
//! the row's own length.

use std::collections::BTreeMap;
use std::path::PathBuf;

use blip_package::io::{
    self, ATTENTION_MASK, CROSS_GROUPS, CROSS_SLOTS, ENCODER_ATTENTION_MASK, ENCODER_HIDDEN_STATES,
    IMAGE_EMBEDS, INPUT_IDS, ITM_LOGITS, LAST_HIDDEN_STATE, LOGITS, PIXEL_VALUES, POSITION_IDS,
    TEXT_EMBEDS,
};
use blip_package::{
    CROSS_KV, DECODER, FORMAT, FORMAT_VERSION, Head, ITM, Manifest, ModelDims, Package, Preprocess,
    Producer, Source, TEXT_ENCODER, Tokens, VISION_ENCODER, VQA_QUESTION_ENCODER,
};
use blip_preprocess::{BlipTokenizer, TextBatch};
use ndarray::{Array2, Array3, ArrayView2, ArrayView3};

use blip_tasks::driver::{self, CrossKv, GraphDriver, KvCache, TensorBackend};
use blip_tasks::{Blip, DecoderFeed, Graphs, Result, TaskError, VisionOutput};

pub const PAD: i64 = 0;
pub const UNK: i64 = 1;
pub const CLS: i64 = 2;
/// [SEP], which is also BLIP's EOS.
pub const SEP: i64 = 3;
pub const EOS: i64 = SEP;
/// [DEC], the decoder's BOS.
pub const DEC: i64 = 4;
pub const ENC: i64 = 5;
/// The words, ids 6 onwards.
pub const WORDS: [&str; 6] = ["a", "cat", "dog", "on", "mat", "sits"];
pub const VOCAB: usize = 6 + WORDS.len();
pub const IMAGE_SIZE: usize = 4;
/// Floats of one preprocessed image (`3 × S × S`).
pub const PIXELS: usize = 3 * IMAGE_SIZE * IMAGE_SIZE;
/// Image tokens: 2 × 2 patches + [CLS].
pub const IMAGE_TOKENS: usize = 5;
/// Hidden size of every state, and the ITC embedding width.
pub const HIDDEN: usize = 4;

/// Per-image features: the means of `HIDDEN` equal chunks of the pixels.
pub fn image_features(pixels: &[f32]) -> [f32; HIDDEN] {
    let chunk = pixels.len() / HIDDEN;
    std::array::from_fn(|d| pixels[d * chunk..(d + 1) * chunk].iter().sum::<f32>() / chunk as f32)
}

/// A token's feature `d`, in `[-1, 1]` (distinct for every word).
pub fn token_feature(id: i64, d: usize) -> f32 {
    ((id * 5 + d as i64 * 3).rem_euclid(7) as f32 - 3.0) / 3.0
}

/// What a decoder row reads of its image: the mean of the encoder states at unmasked positions
/// (`states`: `E × HIDDEN`, `mask`: `E`).
pub fn context(states: ArrayView2<'_, f32>, mask: &[i64]) -> f32 {
    let (mut sum, mut n) = (0.0, 0);
    for (row, &m) in states.outer_iter().zip(mask) {
        if m == 1 {
            sum += row.sum();
            n += row.len();
        }
    }
    sum / n.max(1) as f32
}

/// The decoder: logits over the vocabulary after the (real, unpadded) `history` of a row that
/// reads an image of `context`.
pub fn next_token_logits(history: &[i64], context: f32) -> Vec<f32> {
    // A rolling hash of the whole history: every earlier token and its place matter.
    let h = history.iter().fold(17u64, |h, &t| {
        h.wrapping_mul(1_000_003).wrapping_add(t as u64 + 1)
    });
    (0..VOCAB)
        .map(|v| {
            // splitmix64 of (history, token): a pseudo-random score in [0, 4).
            let mut z = h ^ (v as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            let mut x = (z % 1000) as f32 / 250.0;
            // The image moves a third of the tokens up and a third down.
            x += 2.0 * context * ((v % 3) as f32 - 1.0);
            // Stutter: repeating the last token is tempting (repetition_penalty has work to do).
            if history.last() == Some(&(v as i64)) {
                x += 1.0;
            }
            // Captions end: EOS grows likelier with length; other special tokens are rare.
            if v as i64 == EOS {
                x += 0.5 * history.len() as f32 - 2.0;
            } else if (v as i64) < 6 {
                x -= 2.0;
            }
            x
        })
        .collect()
}

fn normalized(v: &[f32]) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-6);
    v.iter().map(|x| x / norm).collect()
}

/// Sum of the token features of a row's unmasked tokens.
fn text_vector(ids: &[i64], mask: &[i64]) -> [f32; HIDDEN] {
    std::array::from_fn(|d| {
        ids.iter()
            .zip(mask)
            .filter(|(_, m)| **m == 1)
            .map(|(&id, _)| token_feature(id, d))
            .sum()
    })
}

fn engine(graph: &str, message: String) -> TaskError {
    TaskError::Engine {
        graph: graph.into(),
        message,
    }
}

/// A tensor of the fake engine: its dims and its values, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct FakeTensor {
    pub dims: Vec<usize>,
    pub data: FakeData,
}

#[derive(Debug, Clone, PartialEq)]
pub enum FakeData {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

impl FakeTensor {
    fn f32(dims: Vec<usize>, data: Vec<f32>) -> FakeTensor {
        FakeTensor {
            dims,
            data: FakeData::F32(data),
        }
    }
}

/// A run's named inputs, read by name with their shapes checked.
struct Feeds<'a> {
    graph: &'a str,
    inputs: &'a [(&'a str, &'a FakeTensor)],
}

impl<'a> Feeds<'a> {
    fn get(&self, name: &str) -> Result<&'a FakeTensor> {
        self.inputs
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, t)| *t)
            .ok_or_else(|| engine(self.graph, format!("no input {name}")))
    }

    fn f32(&self, name: &str, rank: usize) -> Result<(&'a [usize], &'a [f32])> {
        match self.get(name)? {
            FakeTensor {
                dims,
                data: FakeData::F32(v),
            } if dims.len() == rank && dims.iter().product::<usize>() == v.len() => Ok((dims, v)),
            t => Err(engine(
                self.graph,
                format!("{name} {:?} is not {rank}-D float", t.dims),
            )),
        }
    }

    fn i64(&self, name: &str, rank: usize) -> Result<(&'a [usize], &'a [i64])> {
        match self.get(name)? {
            FakeTensor {
                dims,
                data: FakeData::I64(v),
            } if dims.len() == rank && dims.iter().product::<usize>() == v.len() => Ok((dims, v)),
            t => Err(engine(
                self.graph,
                format!("{name} {:?} is not {rank}-D int64", t.dims),
            )),
        }
    }
}

/// The fake's graphs, as a [`TensorBackend`]: every graph BLIP's packages have, as small math on
/// named tensors.
#[derive(Debug, Default)]
pub struct FakeBackend;

impl FakeBackend {
    /// Token `t` of image `i` is its features plus `t / 4`; the embedding its normalised features.
    fn vision(&self, feeds: &Feeds) -> Result<Vec<(String, FakeTensor)>> {
        let (dims, pixels) = feeds.f32(PIXEL_VALUES, 4)?;
        let n = dims[0];
        let features: Vec<[f32; HIDDEN]> = pixels.chunks(PIXELS).map(image_features).collect();
        let hidden = Array3::from_shape_fn((n, IMAGE_TOKENS, HIDDEN), |(i, t, d)| {
            features[i][d] + 0.25 * t as f32
        });
        let embeds = features.iter().flat_map(|f| normalized(f)).collect();
        Ok(vec![
            (
                LAST_HIDDEN_STATE.into(),
                FakeTensor::f32(
                    vec![n, IMAGE_TOKENS, HIDDEN],
                    hidden.into_raw_vec_and_offset().0,
                ),
            ),
            (
                IMAGE_EMBEDS.into(),
                FakeTensor::f32(vec![n, HIDDEN], embeds),
            ),
        ])
    }

    fn text(feeds: &Feeds) -> Result<(usize, usize, Vec<i64>, Vec<i64>)> {
        let (dims, ids) = feeds.i64(INPUT_IDS, 2)?;
        let (mdims, mask) = feeds.i64(ATTENTION_MASK, 2)?;
        if dims != mdims {
            return Err(engine(feeds.graph, format!("ids {dims:?}, mask {mdims:?}")));
        }
        Ok((dims[0], dims[1], ids.to_vec(), mask.to_vec()))
    }

    /// The normalised sum of the token features of each text.
    fn text_embeds(&self, feeds: &Feeds) -> Result<Vec<(String, FakeTensor)>> {
        let (rows, cols, ids, mask) = Self::text(feeds)?;
        let flat = (0..rows)
            .flat_map(|r| {
                let row = r * cols..(r + 1) * cols;
                normalized(&text_vector(&ids[row.clone()], &mask[row]))
            })
            .collect();
        Ok(vec![(
            TEXT_EMBEDS.into(),
            FakeTensor::f32(vec![rows, HIDDEN], flat),
        )])
    }

    /// The image states' mean over tokens, per row (`[rows, HIDDEN]`), checked against `rows`.
    fn image_means(feeds: &Feeds, rows: usize, what: &str) -> Result<Array2<f32>> {
        let (dims, states) = feeds.f32(ENCODER_HIDDEN_STATES, 3)?;
        if dims[0] != rows || dims[2] != HIDDEN {
            return Err(engine(
                feeds.graph,
                format!("{} images for {rows} {what}", dims[0]),
            ));
        }
        let view = ArrayView3::from_shape((dims[0], dims[1], dims[2]), states)
            .map_err(|e| engine(feeds.graph, e.to_string()))?;
        view.mean_axis(ndarray::Axis(1))
            .ok_or_else(|| engine(feeds.graph, "no image tokens".into()))
    }

    /// `[0.5 - m, m]` with `m` the text's (unnormalised) feature sum · the image's mean state:
    /// unlike ITC it sees the images' scale, so a rerank can reorder ITC's candidates.
    fn itm(&self, feeds: &Feeds) -> Result<Vec<(String, FakeTensor)>> {
        let (rows, cols, ids, mask) = Self::text(feeds)?;
        let mean = Self::image_means(feeds, rows, "texts")?;
        let logits = Array2::from_shape_fn((rows, 2), |(r, c)| {
            let row = r * cols..(r + 1) * cols;
            let m: f32 = text_vector(&ids[row.clone()], &mask[row])
                .iter()
                .zip(mean.row(r))
                .map(|(a, b)| a * b)
                .sum();
            if c == 1 { m } else { 0.5 - m }
        });
        Ok(vec![(
            ITM_LOGITS.into(),
            FakeTensor::f32(vec![rows, 2], logits.into_raw_vec_and_offset().0),
        )])
    }

    /// Position `l` of question `i`: the image's mean state plus token `l`'s features (padding
    /// included, as the real encoder computes states there too).
    fn question_states(&self, feeds: &Feeds) -> Result<Vec<(String, FakeTensor)>> {
        let (rows, cols, ids, _) = Self::text(feeds)?;
        let mean = Self::image_means(feeds, rows, "questions")?;
        let states = Array3::from_shape_fn((rows, cols, HIDDEN), |(i, l, d)| {
            mean[[i, d]] + token_feature(ids[i * cols + l], d)
        });
        Ok(vec![(
            LAST_HIDDEN_STATE.into(),
            FakeTensor::f32(vec![rows, cols, HIDDEN], states.into_raw_vec_and_offset().0),
        )])
    }

    /// One layer of one head: the encoder states themselves as K and V (`[n, 1, E, HIDDEN]`).
    fn cross_kv(&self, feeds: &Feeds) -> Result<Vec<(String, FakeTensor)>> {
        let (dims, states) = feeds.f32(ENCODER_HIDDEN_STATES, 3)?;
        if dims[2] != HIDDEN {
            return Err(engine(
                CROSS_KV,
                format!("states of width {}, not {HIDDEN}", dims[2]),
            ));
        }
        let kv = FakeTensor::f32(vec![dims[0], 1, dims[1], HIDDEN], states.to_vec());
        Ok(vec![
            (io::cross_key(0), kv.clone()),
            (io::cross_value(0), kv),
        ])
    }

    /// The decoder. Its one-layer, one-head K/V holds each position's token id (feature 0) and
    /// a 1 where a decoder run wrote it (feature 1; padding a driver adds is all zeros).
    fn decoder(&self, feeds: &Feeds) -> Result<Vec<(String, FakeTensor)>> {
        let (dims, tokens) = feeds.i64(INPUT_IDS, 2)?;
        let (rows, t) = (dims[0], dims[1]);
        let (_, positions) = feeds.i64(POSITION_IDS, 2)?;
        let (mdims, mask) = feeds.i64(ATTENTION_MASK, 2)?;
        let (pdims, past) = feeds.f32(&io::past_key(0), 4)?;
        let past_len = pdims[2];
        let width = past_len + t;
        if pdims[0] != rows || mdims[..] != [rows, width] || positions.len() != rows * t {
            return Err(engine(
                DECODER,
                format!(
                    "ids {dims:?}, past {pdims:?}, mask {mdims:?}, {} positions",
                    positions.len()
                ),
            ));
        }
        let (edims, enc_mask) = feeds.i64(ENCODER_ATTENTION_MASK, 2)?;
        let (gdims, _) = feeds.i64(CROSS_GROUPS, 2)?;
        let (_, slots) = feeds.i64(CROSS_SLOTS, 1)?;
        let (cdims, cross) = feeds.f32(&io::cross_key(0), 4)?;
        let (images, enc_len) = (cdims[0], cdims[2]);
        if edims[..] != [images, enc_len] || slots.len() != rows {
            return Err(engine(
                DECODER,
                format!(
                    "cross K/V {cdims:?}, encoder mask {edims:?}, {} slots",
                    slots.len()
                ),
            ));
        }
        let group = gdims[1].max(1);
        let mut logits = Vec::with_capacity(rows * t * VOCAB);
        let mut present = Vec::with_capacity(rows * width * HIDDEN);
        for r in 0..rows {
            let row_mask = &mask[r * width..(r + 1) * width];
            let mut row: Vec<i64> = Vec::with_capacity(width);
            let cached = past[r * past_len * HIDDEN..(r + 1) * past_len * HIDDEN].chunks(HIDDEN);
            for (p, (kv, &m)) in cached.zip(row_mask).enumerate() {
                let (id, written) = (kv[0], kv[1]);
                if m == 1 && written != 1.0 {
                    return Err(engine(
                        DECODER,
                        format!("the attention mask of row {r} reads padding at position {p}"),
                    ));
                }
                row.push(id as i64);
            }
            row.extend_from_slice(&tokens[r * t..(r + 1) * t]);
            // Each row continues from its own length: the real positions before it.
            let real = row_mask[..past_len].iter().filter(|&&m| m == 1).count();
            for j in 0..t {
                if positions[r * t + j] != (real + j) as i64 {
                    return Err(engine(
                        DECODER,
                        format!(
                            "row {r} is fed position ids {:?} after {real} real positions",
                            &positions[r * t..(r + 1) * t]
                        ),
                    ));
                }
            }
            // Each row reads its image through the shared-K/V slots, as the decoder graph does.
            let image = slots[r] as usize / group;
            if image >= images {
                return Err(engine(
                    DECODER,
                    format!("slot {} of {images} images", slots[r]),
                ));
            }
            let states = ArrayView2::from_shape(
                (enc_len, HIDDEN),
                &cross[image * enc_len * HIDDEN..][..enc_len * HIDDEN],
            )
            .map_err(|e| engine(DECODER, e.to_string()))?;
            let ctx = context(states, &enc_mask[image * enc_len..(image + 1) * enc_len]);
            for p in past_len..width {
                let history: Vec<i64> = (0..=p)
                    .filter(|&i| row_mask[i] == 1)
                    .map(|i| row[i])
                    .collect();
                logits.extend(next_token_logits(&history, ctx));
            }
            for &id in &row {
                present.extend([id as f32, 1.0, 0.0, 0.0]);
            }
        }
        let kv = FakeTensor::f32(vec![rows, 1, width, HIDDEN], present);
        Ok(vec![
            (LOGITS.into(), FakeTensor::f32(vec![rows, t, VOCAB], logits)),
            (io::present_key(0), kv.clone()),
            (io::present_value(0), kv),
        ])
    }
}

impl TensorBackend for FakeBackend {
    type Value = FakeTensor;
    type Outputs = driver::NamedValues<FakeTensor>;

    fn f32(&self, _graph: &str, data: &[f32], dims: &[usize]) -> Result<FakeTensor> {
        Ok(FakeTensor::f32(dims.to_vec(), data.to_vec()))
    }

    fn f32_owned(&self, _graph: &str, data: Vec<f32>, dims: &[usize]) -> Result<FakeTensor> {
        Ok(FakeTensor::f32(dims.to_vec(), data))
    }

    fn i64(&self, _graph: &str, data: &[i64], dims: &[usize]) -> Result<FakeTensor> {
        Ok(FakeTensor {
            dims: dims.to_vec(),
            data: FakeData::I64(data.to_vec()),
        })
    }

    async fn run(&mut self, graph: &str, inputs: &[(&str, &FakeTensor)]) -> Result<Self::Outputs> {
        let feeds = Feeds { graph, inputs };
        match graph {
            VISION_ENCODER => self.vision(&feeds),
            TEXT_ENCODER => self.text_embeds(&feeds),
            ITM => self.itm(&feeds),
            VQA_QUESTION_ENCODER => self.question_states(&feeds),
            CROSS_KV => self.cross_kv(&feeds),
            DECODER => self.decoder(&feeds),
            other => Err(engine(other, "the fake has no such graph".into())),
        }
    }

    fn take(&self, outputs: &mut Self::Outputs, name: &str) -> Option<FakeTensor> {
        driver::take_named(outputs, name)
    }

    fn dims(&self, value: &FakeTensor) -> Vec<usize> {
        value.dims.clone()
    }

    fn with_f32<R>(
        &self,
        graph: &str,
        value: &FakeTensor,
        read: impl FnOnce(&[f32]) -> Result<R>,
    ) -> Result<R> {
        match &value.data {
            FakeData::F32(v) => read(v),
            FakeData::I64(_) => Err(engine(graph, "reading int64 values as float".into())),
        }
    }
}

/// Calls of the driver so far, per [`Graphs`] method.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Calls {
    pub vision: usize,
    /// Images the vision graph encoded.
    pub images: usize,
    pub text_embeds: usize,
    pub itm: usize,
    pub question_states: usize,
    pub cross_kv: usize,
    pub new_cache: usize,
    pub decode: usize,
    pub join_caches: usize,
    pub select_cache_rows: usize,
    pub join_cross: usize,
    pub select_cross_rows: usize,
}

/// Cross-attention K/V on the fake engine.
pub type FakeCross = CrossKv<FakeTensor>;
/// The KV cache on the fake engine.
pub type FakeCache = KvCache<FakeTensor>;

/// The graph driver over the fake backend: counts its calls and fails on demand.
pub struct FakeGraphs {
    pub driver: GraphDriver<FakeBackend>,
    pub calls: Calls,
    /// Rows of every decoder run, in order (a batched step shows as a run wider than a request).
    pub decode_rows: Vec<usize>,
    /// The decoder run (0-based, counting every run so far) that fails.
    pub fail_decode_at: Option<usize>,
    /// Every vision run fails.
    pub fail_vision: bool,
}

impl FakeGraphs {
    pub fn new(package: &Package) -> FakeGraphs {
        FakeGraphs {
            driver: GraphDriver::new(FakeBackend, package),
            calls: Calls::default(),
            decode_rows: Vec::new(),
            fail_decode_at: None,
            fail_vision: false,
        }
    }
}

impl Default for FakeGraphs {
    fn default() -> FakeGraphs {
        FakeGraphs::new(&package(Head::Caption))
    }
}

impl Graphs for FakeGraphs {
    type Cross = FakeCross;
    type Cache = FakeCache;

    async fn vision(&mut self, pixels: &[f32], n: usize) -> Result<VisionOutput> {
        self.calls.vision += 1;
        self.calls.images += n;
        if self.fail_vision {
            return Err(engine(VISION_ENCODER, "injected failure".into()));
        }
        self.driver.vision(pixels, n).await
    }

    async fn text_embeds(&mut self, batch: &TextBatch) -> Result<Array2<f32>> {
        self.calls.text_embeds += 1;
        self.driver.text_embeds(batch).await
    }

    async fn itm_logits(
        &mut self,
        batch: &TextBatch,
        image: ArrayView3<'_, f32>,
    ) -> Result<Array2<f32>> {
        self.calls.itm += 1;
        self.driver.itm_logits(batch, image).await
    }

    async fn question_states(
        &mut self,
        batch: &TextBatch,
        image: ArrayView3<'_, f32>,
    ) -> Result<Array3<f32>> {
        self.calls.question_states += 1;
        self.driver.question_states(batch, image).await
    }

    async fn cross_kv(
        &mut self,
        states: ArrayView3<'_, f32>,
        enc_mask: Option<&[i64]>,
        repeat: usize,
    ) -> Result<FakeCross> {
        self.calls.cross_kv += 1;
        self.driver.cross_kv(states, enc_mask, repeat).await
    }

    async fn new_cache(&mut self, rows: usize) -> Result<FakeCache> {
        self.calls.new_cache += 1;
        self.driver.new_cache(rows).await
    }

    async fn join_caches(&mut self, parts: Vec<FakeCache>) -> Result<FakeCache> {
        self.calls.join_caches += 1;
        self.driver.join_caches(parts).await
    }

    async fn select_cache_rows(&mut self, cache: FakeCache, rows: &[usize]) -> Result<FakeCache> {
        self.calls.select_cache_rows += 1;
        self.driver.select_cache_rows(cache, rows).await
    }

    async fn join_cross(&mut self, parts: Vec<FakeCross>) -> Result<FakeCross> {
        self.calls.join_cross += 1;
        self.driver.join_cross(parts).await
    }

    async fn select_cross_rows(&mut self, cross: FakeCross, rows: &[usize]) -> Result<FakeCross> {
        self.calls.select_cross_rows += 1;
        self.driver.select_cross_rows(cross, rows).await
    }

    async fn decode(
        &mut self,
        cross: &FakeCross,
        cache: &mut FakeCache,
        feed: DecoderFeed<'_>,
    ) -> Result<Vec<f32>> {
        let run = self.calls.decode;
        self.calls.decode += 1;
        self.decode_rows.push(cache.rows().rows());
        if self.fail_decode_at == Some(run) {
            return Err(engine(
                DECODER,
                format!("injected failure at decoder run {run}"),
            ));
        }
        self.driver.decode(cross, cache, feed).await
    }
}

/// The fake's word-level `tokenizer.json`: the special tokens, then [`WORDS`].
pub fn tokenizer_json() -> String {
    let specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[DEC]", "[ENC]"];
    let added: Vec<String> = specials
        .iter()
        .enumerate()
        .map(|(id, t)| {
            format!(
                r#"{{"id":{id},"content":"{t}","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true}}"#
            )
        })
        .collect();
    let vocab: Vec<String> = specials
        .iter()
        .chain(&WORDS)
        .enumerate()
        .map(|(id, t)| format!(r#""{t}":{id}"#))
        .collect();
    format!(
        r#"{{"version":"1.0","truncation":null,"padding":null,"added_tokens":[{}],
        "normalizer":{{"type":"Lowercase"}},"pre_tokenizer":{{"type":"WhitespaceSplit"}},
        "post_processor":null,"decoder":null,
        "model":{{"type":"WordLevel","vocab":{{{}}},"unk_token":"[UNK]"}}}}"#,
        added.join(","),
        vocab.join(",")
    )
}

pub fn tokens() -> Tokens {
    Tokens {
        bos: DEC,
        enc: ENC,
        cls: CLS,
        sep: SEP,
        eos: EOS,
        pad: PAD,
        max_text_tokens: 35,
    }
}

/// A package manifest with the fake's dimensions (no graph files: the fake needs none).
pub fn package(head: Head) -> Package {
    let manifest = Manifest {
        format: FORMAT.into(),
        format_version: FORMAT_VERSION,
        producer: Producer {
            name: "blip-tasks fake".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        },
        source: Source {
            name: "fake".into(),
            format: "hf-safetensors".into(),
            sha256: String::new(),
            files: Vec::new(),
            interpolated_from_image_size: None,
        },
        family: blip_package::Family::Blip,
        head,
        model: ModelDims {
            vision_hidden_size: HIDDEN,
            vision_layers: 1,
            vision_heads: 1,
            patch_size: IMAGE_SIZE / 2,
            image_size: IMAGE_SIZE,
            image_tokens: IMAGE_TOKENS,
            text_hidden_size: HIDDEN,
            text_layers: 1,
            text_heads: 1,
            vocab_size: VOCAB,
            max_position_embeddings: 64,
            embed_dim: Some(HIDDEN),
            query_tokens: None,
        },
        preprocess: Preprocess::blip(IMAGE_SIZE),
        tokens: tokens(),
        opset: 17,
        precision: blip_package::Precision::Fp32,
        tokenizer: blip_package::TOKENIZER_FILE.into(),
        runtimes: Vec::new(),
        graphs: BTreeMap::new(),
    };
    Package {
        dir: PathBuf::from("fake"),
        manifest,
    }
}

/// A [`Blip`] over a fresh [`FakeGraphs`] for `head`.
pub fn fake_blip(head: Head) -> Blip<FakeGraphs> {
    let package = package(head);
    let mut tokenizer = BlipTokenizer::from_bytes(tokenizer_json().as_bytes(), "fake", tokens())
        .expect("the fake tokenizer parses");
    tokenizer.max_positions = Some(package.manifest.model.max_position_embeddings);
    let graphs = FakeGraphs::new(&package);
    Blip::new(package, tokenizer, graphs)
}
