//! The defaults every front end shares (CLI flags, HTTP API, Python, the browser), defined once.
//! Decoding defaults live in [`crate::CaptionOptions::default`] and [`crate::VqaOptions::default`];
//! these are the settings those types leave to the caller.

/// Nucleus sampling: `top_p`, `top_k` (0: off), `temperature`, `seed`.
pub const SAMPLE_TOP_P: f32 = 0.9;
pub const SAMPLE_TOP_K: usize = 0;
pub const SAMPLE_TEMPERATURE: f32 = 1.0;
pub const SAMPLE_SEED: u64 = 0;
/// Search: hits returned, and ITC candidates reranked with ITM (BLIP's evaluation uses 128 / 256;
/// 16 keeps a query interactive).
pub const SEARCH_K: usize = 10;
pub const RERANK: usize = 16;
/// VQA rank mode: answers kept after the first-token ranking (LAVIS: 128).
pub const VQA_RANK_K: usize = 128;
/// Zero-shot tagging: labels kept per image when neither `top_k` nor `threshold` is given.
pub const TAG_TOP_K: usize = 5;
