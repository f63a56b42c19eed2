//! The OpenAI-compatible dialect, decoded into blip-onnx's request layer.
//!
//! Tools that already speak OpenAI's API (the `openai` clients, LiteLLM, LangChain, Open WebUI,
//! Immich-style captioners, Batch API jobs) send chat completions with `image_url` parts,
//! embeddings and rerank requests. This crate reads those bodies into the same requests every
//! other door builds ([`blip_tasks::request`]), so the defaults and validation rules stay the
//! request layer's; and it writes the answers back in OpenAI's shapes. No IO here: the server
//! (`serve`) and the CLI (`batch`) run the tasks.
//!
//! Layout: [`chat`] (chat completions: request, task, response and stream chunks), [`embeddings`],
//! [`rerank`] (the Jina/Cohere shape), [`batch`] (Batch API lines), [`error`] (OpenAI's error
//! object), [`image`] (where an `image_url` points).

pub mod batch;
pub mod chat;
pub mod embeddings;
pub mod error;
pub mod image;
pub mod rerank;

pub use error::{ErrorEnvelope, OpenAiError};

/// Seconds since the Unix epoch (`created` fields).
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
