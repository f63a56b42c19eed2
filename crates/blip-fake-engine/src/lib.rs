//! A pure-Rust engine for the task layer's tests: [`FakeGraphs`] implements [`Graphs`] with small
//! deterministic math instead of BLIP's networks, so the task layer (decoding, batching, ranking,
//! error paths) runs without ONNX Runtime or a converted package. [`fake_blip`] puts it behind a
//! [`Blip`] with a 12-token word-level tokenizer.
//!
//! The math is public ([`image_features`], [`token_feature`], [`context`], [`next_token_logits`])
//! so that tests compute expected results on their own, from first principles, and compare.
//! Next-token logits depend on the whole real history of a row and on its image, and the cache
//! keeps each row's tokens with left padding and a mask as the native engine does: a cache that
//! loses, reorders or leaks a token (beams, joined or selected rows) gives other logits.

use std::collections::BTreeMap;
use std::path::PathBuf;

use blip_package::{
    CROSS_KV, DECODER, FORMAT, FORMAT_VERSION, Head, ITM, Manifest, ModelDims, Package, Preprocess,
    Producer, Source, Tokens, VISION_ENCODER, VQA_QUESTION_ENCODER,
};
use blip_preprocess::{BlipTokenizer, TextBatch};
use ndarray::{Array2, Array3, ArrayView2, ArrayView3, Axis};

use blip_tasks::{
    Blip, CrossRows, DecoderFeed, Graphs, LogitPositions, Result, TaskError, VisionOutput,
    encoder_mask,
};

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
/// The token a joined cache puts in front of a shorter row: masked out, never read (a mask bug
/// would feed it to the hash and change the logits).
const FILL: i64 = -1;

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
fn text_vector(batch: &TextBatch, r: usize) -> [f32; HIDDEN] {
    let ids = batch.row_ids(r);
    let mask = &batch.mask[r * batch.cols..(r + 1) * batch.cols];
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

/// Rows `rows` of a row-major `[n, width]` array.
fn gather<T: Copy>(data: &[T], width: usize, rows: &[usize]) -> Vec<T> {
    rows.iter()
        .flat_map(|&r| data[r * width..(r + 1) * width].iter().copied())
        .collect()
}

fn check_rows(rows: &[usize], n: usize, what: &str) -> Result<()> {
    match rows.iter().find(|&&r| r >= n) {
        Some(r) => Err(TaskError::Input(format!(
            "{what}: row {r} selected from {n}"
        ))),
        None => Ok(()),
    }
}

/// Graph runs so far, per graph.
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

/// The fake engine: counts its runs and fails on demand.
#[derive(Debug, Default)]
pub struct FakeGraphs {
    pub calls: Calls,
    /// Rows of every decoder run, in order (a batched step shows as a run wider than a request).
    pub decode_rows: Vec<usize>,
    /// The decoder run (0-based, counting every run so far) that fails.
    pub fail_decode_at: Option<usize>,
    /// Every vision run fails.
    pub fail_vision: bool,
}

/// The encoder states (`images × enc_len × HIDDEN`, shorter ones padded behind when joined) and
/// their mask, and which image each decoder row reads. The real engine holds cross K/V instead;
/// the decoder only ever reads [`context`] of them.
pub struct FakeCross {
    rows: CrossRows,
    enc_len: usize,
    states: Vec<f32>,
    enc_mask: Vec<i64>,
}

impl FakeCross {
    /// [`context`] of image `i`.
    pub fn context(&self, i: usize) -> f32 {
        let e = self.enc_len;
        let states =
            ArrayView2::from_shape((e, HIDDEN), &self.states[i * e * HIDDEN..][..e * HIDDEN])
                .expect("image states are enc_len × HIDDEN");
        context(states, &self.enc_mask[i * e..(i + 1) * e])
    }
}

/// The self-attention cache: every row's tokens, rows shorter than `past_len` padded in front
/// with a masked `FILL` token (as the native engine left-pads its K/V).
pub struct FakeCache {
    rows: usize,
    past_len: usize,
    tokens: Vec<i64>,
    mask: Vec<i64>,
}

impl Graphs for FakeGraphs {
    type Cross = FakeCross;
    type Cache = FakeCache;

    /// Token `t` of image `i` is its features plus `t / 4`; the embedding its normalised features.
    async fn vision(&mut self, pixels: &[f32], n: usize) -> Result<VisionOutput> {
        self.calls.vision += 1;
        self.calls.images += n;
        if self.fail_vision {
            return Err(engine(VISION_ENCODER, "injected failure".into()));
        }
        if pixels.len() != n * PIXELS {
            return Err(TaskError::Input(format!(
                "{} pixels for {n} images of {PIXELS}",
                pixels.len()
            )));
        }
        let features: Vec<[f32; HIDDEN]> = pixels.chunks(PIXELS).map(image_features).collect();
        let hidden = Array3::from_shape_fn((n, IMAGE_TOKENS, HIDDEN), |(i, t, d)| {
            features[i][d] + 0.25 * t as f32
        });
        let embeds = features.iter().flat_map(|f| normalized(f)).collect();
        Ok(VisionOutput {
            hidden,
            embeds: Some(Array2::from_shape_vec((n, HIDDEN), embeds).expect("n × HIDDEN")),
        })
    }

    /// The normalised sum of the token features of each text.
    async fn text_embeds(&mut self, batch: &TextBatch) -> Result<Array2<f32>> {
        self.calls.text_embeds += 1;
        let flat = (0..batch.rows)
            .flat_map(|r| normalized(&text_vector(batch, r)))
            .collect();
        Ok(Array2::from_shape_vec((batch.rows, HIDDEN), flat).expect("rows × HIDDEN"))
    }

    /// `[0.5 - m, m]` with `m` the text's (unnormalised) feature sum · the image's mean state:
    /// unlike ITC it sees the images' scale, so a rerank can reorder ITC's candidates.
    async fn itm_logits(
        &mut self,
        batch: &TextBatch,
        image: ArrayView3<'_, f32>,
    ) -> Result<Array2<f32>> {
        self.calls.itm += 1;
        if image.shape()[0] != batch.rows {
            return Err(engine(
                ITM,
                format!("{} images for {} texts", image.shape()[0], batch.rows),
            ));
        }
        let mean = image.mean_axis(Axis(1)).expect("image tokens");
        Ok(Array2::from_shape_fn((batch.rows, 2), |(r, c)| {
            let m: f32 = text_vector(batch, r)
                .iter()
                .zip(mean.row(r))
                .map(|(a, b)| a * b)
                .sum();
            if c == 1 { m } else { 0.5 - m }
        }))
    }

    /// Position `l` of question `i`: the image's mean state plus token `l`'s features (padding
    /// included, as the real encoder computes states there too).
    async fn question_states(
        &mut self,
        batch: &TextBatch,
        image: ArrayView3<'_, f32>,
    ) -> Result<Array3<f32>> {
        self.calls.question_states += 1;
        if image.shape()[0] != batch.rows {
            return Err(engine(
                VQA_QUESTION_ENCODER,
                format!("{} images for {} questions", image.shape()[0], batch.rows),
            ));
        }
        let mean = image.mean_axis(Axis(1)).expect("image tokens");
        Ok(Array3::from_shape_fn(
            (batch.rows, batch.cols, HIDDEN),
            |(i, l, d)| mean[[i, d]] + token_feature(batch.ids[i * batch.cols + l], d),
        ))
    }

    async fn cross_kv(
        &mut self,
        states: ArrayView3<'_, f32>,
        enc_mask: Option<&[i64]>,
        repeat: usize,
    ) -> Result<FakeCross> {
        self.calls.cross_kv += 1;
        let [n, e, d] = states.shape() else {
            unreachable!("a 3-D view")
        };
        if *d != HIDDEN {
            return Err(engine(
                CROSS_KV,
                format!("states of width {d}, not {HIDDEN}"),
            ));
        }
        Ok(FakeCross {
            rows: CrossRows::repeated(*n, repeat),
            enc_len: *e,
            states: states.iter().copied().collect(),
            enc_mask: encoder_mask(enc_mask, *n, *e)?,
        })
    }

    async fn new_cache(&mut self, rows: usize) -> Result<FakeCache> {
        self.calls.new_cache += 1;
        Ok(FakeCache {
            rows,
            past_len: 0,
            tokens: Vec::new(),
            mask: Vec::new(),
        })
    }

    /// Left-pads the shorter caches to the longest, padding masked (the native engine's rule).
    async fn join_caches(&mut self, parts: Vec<FakeCache>) -> Result<FakeCache> {
        self.calls.join_caches += 1;
        let past_len = parts.iter().map(|c| c.past_len).max().unwrap_or(0);
        let mut out = FakeCache {
            rows: parts.iter().map(|c| c.rows).sum(),
            past_len,
            tokens: Vec::new(),
            mask: Vec::new(),
        };
        for c in &parts {
            let pad = past_len - c.past_len;
            for r in 0..c.rows {
                let row = r * c.past_len..(r + 1) * c.past_len;
                out.tokens.extend(std::iter::repeat_n(FILL, pad));
                out.tokens.extend_from_slice(&c.tokens[row.clone()]);
                out.mask.extend(std::iter::repeat_n(0, pad));
                out.mask.extend_from_slice(&c.mask[row]);
            }
        }
        Ok(out)
    }

    async fn select_cache_rows(&mut self, cache: FakeCache, rows: &[usize]) -> Result<FakeCache> {
        self.calls.select_cache_rows += 1;
        check_rows(rows, cache.rows, "select_cache_rows")?;
        Ok(FakeCache {
            rows: rows.len(),
            past_len: cache.past_len,
            tokens: gather(&cache.tokens, cache.past_len, rows),
            mask: gather(&cache.mask, cache.past_len, rows),
        })
    }

    /// Pads the shorter encoder sequences behind with zero states, masked.
    async fn join_cross(&mut self, parts: Vec<FakeCross>) -> Result<FakeCross> {
        self.calls.join_cross += 1;
        let enc_len = parts.iter().map(|c| c.enc_len).max().unwrap_or(0);
        let (mut states, mut enc_mask) = (Vec::new(), Vec::new());
        for c in &parts {
            let pad = enc_len - c.enc_len;
            for i in 0..c.rows.images() {
                states.extend_from_slice(&c.states[i * c.enc_len * HIDDEN..][..c.enc_len * HIDDEN]);
                states.extend(std::iter::repeat_n(0.0, pad * HIDDEN));
                enc_mask.extend_from_slice(&c.enc_mask[i * c.enc_len..(i + 1) * c.enc_len]);
                enc_mask.extend(std::iter::repeat_n(0, pad));
            }
        }
        Ok(FakeCross {
            rows: CrossRows::joined(parts.iter().map(|c| &c.rows)),
            enc_len,
            states,
            enc_mask,
        })
    }

    async fn select_cross_rows(&mut self, cross: FakeCross, rows: &[usize]) -> Result<FakeCross> {
        self.calls.select_cross_rows += 1;
        let (left, kept) = cross.rows.select(rows)?;
        Ok(FakeCross {
            rows: left,
            enc_len: cross.enc_len,
            states: gather(&cross.states, cross.enc_len * HIDDEN, &kept),
            enc_mask: gather(&cross.enc_mask, cross.enc_len, &kept),
        })
    }

    async fn decode(
        &mut self,
        cross: &FakeCross,
        cache: &mut FakeCache,
        feed: DecoderFeed<'_>,
    ) -> Result<Vec<f32>> {
        let run = self.calls.decode;
        self.calls.decode += 1;
        self.decode_rows.push(cache.rows);
        if self.fail_decode_at == Some(run) {
            return Err(engine(
                DECODER,
                format!("injected failure at decoder run {run}"),
            ));
        }
        let (rows, t, past) = (cache.rows, feed.t, cache.past_len);
        if cross.rows.rows() != rows || feed.tokens.len() != rows * t {
            return Err(TaskError::Input(format!(
                "decoder feed of {} tokens × {t} for a cache of {rows} rows and cross of {}",
                feed.tokens.len(),
                cross.rows.rows()
            )));
        }
        if let Some(src) = feed.reorder {
            if src.len() != rows {
                return Err(TaskError::Input(format!("reorder {src:?} for {rows} rows")));
            }
            check_rows(src, rows, "reorder")?;
            // Beam search moved histories between rows.
            cache.tokens = gather(&cache.tokens, past, src);
            cache.mask = gather(&cache.mask, past, src);
        }
        let width = past + t;
        let mask = match feed.attention_mask {
            Some(m) if m.len() == rows * width => m.to_vec(),
            Some(m) => {
                return Err(TaskError::Input(format!(
                    "decoder attention mask has {} values for {rows} × {width}",
                    m.len()
                )));
            }
            None => (0..rows)
                .flat_map(|r| {
                    let cached = cache.mask[r * past..(r + 1) * past].iter().copied();
                    cached.chain(std::iter::repeat_n(1, t))
                })
                .collect(),
        };
        let tokens: Vec<i64> = (0..rows)
            .flat_map(|r| {
                let cached = cache.tokens[r * past..(r + 1) * past].iter();
                cached.chain(&feed.tokens[r * t..(r + 1) * t]).copied()
            })
            .collect();
        // Each row reads its image through the shared-K/V slots, as the decoder graph does.
        let shared = cross.rows.feed();
        let positions = match feed.logits {
            LogitPositions::Last => width - 1..width,
            LogitPositions::All => past..width,
        };
        let mut logits = Vec::with_capacity(rows * positions.len() * VOCAB);
        for r in 0..rows {
            let ctx = cross.context(shared.slots[r] as usize / shared.group);
            let (row, row_mask) = (&tokens[r * width..][..width], &mask[r * width..][..width]);
            for p in positions.clone() {
                let history: Vec<i64> = (0..=p)
                    .filter(|&i| row_mask[i] == 1)
                    .map(|i| row[i])
                    .collect();
                logits.extend(next_token_logits(&history, ctx));
            }
        }
        cache.tokens = tokens;
        cache.mask = mask;
        cache.past_len = width;
        Ok(logits)
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
        },
        preprocess: Preprocess::blip(IMAGE_SIZE),
        tokens: tokens(),
        opset: 17,
        precision: "fp32".into(),
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
    Blip::new(package, tokenizer, FakeGraphs::default())
}
