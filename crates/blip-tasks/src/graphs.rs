//! The seam between BLIP's task logic and an inference engine: one package's graphs, with host
//! arrays at the edges and engine-resident values for what must not travel (the cross-attention
//! K/V are 42.5 MB per image at base/384², the self-attention cache grows every step).
//!
//! Methods are async so that engines whose runs are asynchronous (onnxruntime-web) implement the
//! same trait as native ONNX Runtime, whose futures are ready when first polled.

use std::future::Future;

use blip_preprocess::TextBatch;
use ndarray::{Array2, Array3, ArrayView3};

use crate::{Result, TaskError};

/// Outputs of the vision encoder for a batch of images.
#[derive(Debug, Clone)]
pub struct VisionOutput {
    /// `[n, tokens, D]`
    pub hidden: Array3<f32>,
    /// `[n, V, E]`: each image's V L2-normalised ITC vectors (retrieval packages only; V = 1 for
    /// BLIP, the learned queries for BLIP-2). Scored by [`crate::itc_similarity`].
    pub embeds: Option<Array3<f32>>,
}

/// Which positions' logits a decoder run returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitPositions {
    /// The last fed position of every row: `rows × vocab` (a decoding step).
    Last,
    /// Every fed position: `rows × t × vocab` (scoring whole answers).
    All,
}

/// One decoder run: `tokens` (`rows × t`) after the cache's positions.
#[derive(Debug, Clone, Copy)]
pub struct DecoderFeed<'a> {
    pub tokens: &'a [i64],
    pub t: usize,
    /// Padding mask over cached + fed positions (`rows × (past + t)`); `None`: no padding.
    pub attention_mask: Option<&'a [i64]>,
    /// Gathers the cache rows before feeding: row `r` continues row `reorder[r]` (beam search).
    pub reorder: Option<&'a [usize]>,
    pub logits: LogitPositions,
}

/// The graphs of one package on one engine.
///
/// `Cross` holds the decoder's cross-attention K/V (and encoder mask), once per image, for a set
/// of rows; `Cache` the self-attention KV cache. Both stay inside the engine; reordering beams
/// happens there too.
// Engines run their futures on one thread (the native engine's are ready at once, the browser's
// are not Send): no Send bound on the futures.
#[allow(async_fn_in_trait)]
pub trait Graphs {
    type Cross;
    type Cache;

    /// Vision encoder on `n` preprocessed images (`n × 3 × S × S`, laid end to end).
    async fn vision(&mut self, pixels: &[f32], n: usize) -> Result<VisionOutput>;

    /// ITC text embeddings (`[n, E]`, normalised) of a [CLS]-first batch.
    async fn text_embeds(&mut self, batch: &TextBatch) -> Result<Array2<f32>>;

    /// ITM logits `[n, 2]` for row-aligned ([ENC]-first) texts and image states.
    async fn itm_logits(
        &mut self,
        batch: &TextBatch,
        image: ArrayView3<'_, f32>,
    ) -> Result<Array2<f32>>;

    /// VQA question states `[n, L, D]` for ([ENC]-first) questions and row-aligned image states.
    async fn question_states(
        &mut self,
        batch: &TextBatch,
        image: ArrayView3<'_, f32>,
    ) -> Result<Array3<f32>>;

    /// Cross-attention K/V of every decoder layer for `states` (`[n, E, D]`), each row read by
    /// `repeat` consecutive decoder rows (one per beam), which share it ([`crate::CrossRows`]);
    /// `enc_mask` (`n × E`) masks encoder positions (`None`: attend to all).
    async fn cross_kv(
        &mut self,
        states: ArrayView3<'_, f32>,
        enc_mask: Option<&[i64]>,
        repeat: usize,
    ) -> Result<Self::Cross>;

    /// An empty self-attention cache for `rows` decoder rows.
    async fn new_cache(&mut self, rows: usize) -> Result<Self::Cache>;

    /// One cache holding the rows of `parts` in order (shorter caches padded, the padding masked):
    /// requests join a running decode batch this way ([`crate::DecodeBatch`]). Engines that serve
    /// one caller at a time (the browser) need not batch across requests.
    async fn join_caches(&mut self, parts: Vec<Self::Cache>) -> Result<Self::Cache> {
        let _ = parts;
        Err(not_batching("join_caches"))
    }

    /// The cache of `rows` only (finished requests leave a decode batch this way).
    async fn select_cache_rows(
        &mut self,
        cache: Self::Cache,
        rows: &[usize],
    ) -> Result<Self::Cache> {
        let _ = (cache, rows);
        Err(not_batching("select_cache_rows"))
    }

    /// One cross K/V holding the rows (and images) of `parts` in order (shorter encoder sequences
    /// padded and masked).
    async fn join_cross(&mut self, parts: Vec<Self::Cross>) -> Result<Self::Cross> {
        let _ = parts;
        Err(not_batching("join_cross"))
    }

    /// The cross K/V of `rows` only (images no row reads any more are dropped).
    async fn select_cross_rows(
        &mut self,
        cross: Self::Cross,
        rows: &[usize],
    ) -> Result<Self::Cross> {
        let _ = (cross, rows);
        Err(not_batching("select_cross_rows"))
    }

    /// Runs the decoder on `feed` and appends the fed positions to `cache`; returns the logits
    /// `feed.logits` asks for, row-major.
    async fn decode(
        &mut self,
        cross: &Self::Cross,
        cache: &mut Self::Cache,
        feed: DecoderFeed<'_>,
    ) -> Result<Vec<f32>>;
}

fn not_batching(what: &str) -> TaskError {
    TaskError::Engine {
        graph: blip_package::DECODER.into(),
        message: format!("this engine does not batch decoding across requests ({what})"),
    }
}

/// Polls a future that must already be complete: native engines' graph futures are, so the
/// blocking API wraps the async task layer without an executor.
pub fn ready<T>(future: impl Future<Output = T>) -> T {
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => v,
        std::task::Poll::Pending => {
            unreachable!("a native engine's future was not ready. This is a bug.")
        }
    }
}
