//! Request and response bodies of the HTTP API (the OpenAPI schemas come from these types).
//! Optional fields left out take the library's defaults (`CaptionOptions`, `VqaOptions`), so the
//! server answers exactly as `blip-onnx caption` / `vqa` do with the same settings.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::ItemError;

/// Caption images. Every option of `blip-onnx caption`; `beams: 1` is greedy, `sample: true` is
/// nucleus sampling.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CaptionBody {
    /// Images as base64 or `data:image/...;base64,` URIs (multipart: file parts).
    #[serde(default)]
    pub images: Vec<String>,
    /// Prompt the caption starts with (stripped from the text); "" for none. Default "a picture of ".
    pub prompt: Option<String>,
    /// Beam width (default 3); 1 is greedy.
    pub beams: Option<usize>,
    /// Nucleus sampling instead of beam search.
    pub sample: Option<bool>,
    pub top_p: Option<f32>,
    /// 0 disables top-k.
    pub top_k: Option<usize>,
    pub temperature: Option<f32>,
    pub seed: Option<u64>,
    /// Tokens at most, prompt included (default 20).
    pub max_length: Option<usize>,
    /// Tokens at least, prompt included (default 5).
    pub min_length: Option<usize>,
    pub length_penalty: Option<f32>,
    pub repetition_penalty: Option<f32>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct CaptionOk {
    pub caption: String,
    /// Generated token ids, prompt included.
    pub tokens: Vec<i64>,
    /// Beam search score (null for greedy and sampling).
    pub score: Option<f32>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(untagged)]
pub enum CaptionItem {
    Ok(CaptionOk),
    Err(ItemError),
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CaptionResponse {
    /// One per image, in order.
    pub results: Vec<CaptionItem>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    #[default]
    Float,
    /// Little-endian f32 bytes, base64.
    Base64,
}

/// ITC embeddings of images and/or texts (retrieval package).
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmbedBody {
    #[serde(default)]
    pub images: Vec<String>,
    #[serde(default)]
    pub texts: Vec<String>,
    pub encoding: Option<Encoding>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(untagged)]
pub enum Embedding {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct EmbeddingOk {
    pub embedding: Embedding,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(untagged)]
pub enum EmbedItem {
    Ok(EmbeddingOk),
    Err(ItemError),
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EmbedResponse {
    pub images: Vec<EmbedItem>,
    pub texts: Vec<EmbedItem>,
    /// Embedding width.
    pub dim: usize,
}

/// One image against several texts.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ItmBody {
    /// The image (base64 / data URI; multipart: a file part).
    pub image: Option<String>,
    #[serde(default)]
    pub texts: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ItmItem {
    pub text: String,
    /// Softmax of the ITM logits: probability that the text matches the image.
    pub match_probability: f32,
    pub itm_logits: [f32; 2],
    pub itc_similarity: f32,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ItmResponse {
    pub results: Vec<ItmItem>,
}

/// Questions about one image: generated answers, or rank mode over `answers`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VqaBody {
    pub image: Option<String>,
    #[serde(default)]
    pub questions: Vec<String>,
    /// Rank these answers instead of generating (LAVIS's VQAv2 evaluation).
    pub answers: Option<Vec<String>>,
    /// Rank mode: answers kept after the first-token ranking (default 128).
    pub k: Option<usize>,
    /// Generation: mask the question padding in cross-attention.
    pub mask_question_padding: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RankedAnswer {
    pub answer: String,
    pub score: f32,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VqaResult {
    pub question: String,
    pub answer: String,
    /// Rank mode: the first-token top-k candidates with their scores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidates: Option<Vec<RankedAnswer>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VqaResponse {
    pub results: Vec<VqaResult>,
}

/// Text search over the served index.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchBody {
    pub text: String,
    /// Hits returned (default 10).
    pub k: Option<usize>,
    /// Candidates reranked with ITM, score = ITM logit + ITC similarity (default 16; 0: ITC only).
    pub rerank: Option<usize>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SearchHit {
    pub rank: usize,
    pub id: String,
    pub score: f32,
    pub itc: f32,
    /// ITM "match" logit (null when not reranked).
    pub itm: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
    /// Where the image is served.
    pub image_url: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SearchResponse {
    pub hits: Vec<SearchHit>,
    /// Images in the index.
    pub images: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IndexImage {
    pub id: String,
    /// base64 / data URI.
    pub image: String,
    #[serde(default)]
    pub metadata: Option<serde_json::Value>,
}

/// Images to add to the index (multipart: file parts, id = `id` field or the file name).
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IndexAddRequest {
    #[serde(default)]
    pub images: Vec<IndexImage>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct IndexAddResult {
    pub id: String,
    pub added: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ItemError>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct IndexAddResponse {
    pub results: Vec<IndexAddResult>,
    /// Images in the index afterwards.
    pub images: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct IndexDeleteResponse {
    pub deleted: String,
    pub images: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Status {
    pub status: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PackageInfo {
    pub path: String,
    pub head: String,
    pub precision: String,
    pub image_size: usize,
    /// Precision of each graph, by role.
    pub graphs: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Limits {
    /// Images per vision batch: --max-batch-images, lowered to fit half of the memory budget.
    pub max_batch_images: usize,
    /// --memory-budget in bytes: one batch's working set and the admitted inputs, half each
    /// (the process's memory beyond its loaded packages).
    pub memory_budget: u64,
    /// The engine's estimated working set per batched image (BLIP's default decoding).
    pub working_bytes_per_image: u64,
    pub header_read_timeout_s: f64,
    pub body_read_timeout_s: f64,
    pub idle_timeout_s: f64,
    pub max_batch_wait_ms: u64,
    pub max_concurrent_requests: usize,
    pub max_queue: usize,
    pub payload_limit: usize,
    pub max_image_pixels: u64,
    pub request_timeout_s: f64,
    pub shutdown_grace_s: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct IndexInfo {
    pub path: String,
    pub images: usize,
    /// What the index keeps per image for ITM rerank: `f16` or `int8` vision states (no vision
    /// run at query time), or `none` (rerank encodes the candidates' stored images).
    pub rerank_states: String,
}

/// The kernel dynamic INT8 matrix products take on the server's CPU, and why.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Int8PathInfo {
    /// `u8s8-vnni`, `u8u8` or `u8s8`.
    pub path: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Info {
    pub version: String,
    pub packages: Vec<PackageInfo>,
    pub execution_provider: String,
    /// Which INT8 kernel this CPU runs (it matters for INT8 packages' speed and accuracy).
    pub int8_path: Int8PathInfo,
    pub threads: usize,
    pub api_key_required: bool,
    pub limits: Limits,
    pub index: Option<IndexInfo>,
}
