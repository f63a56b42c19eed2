//! BLIP's tasks, engine-free: preprocessing and tokenization ([`blip_preprocess`]), decoding as a
//! state machine ([`generate::Generation`]: greedy, beam, sampling), and captioning, retrieval with
//! ITM rerank and VQA (generation and rank mode) over any engine's [`Graphs`]. Nothing here names an
//! inference engine, and the crate builds for `wasm32-unknown-unknown`: native ONNX Runtime
//! (`blip-runtime`) and the browser run the same code.

mod batch;
mod cache_rows;
mod cross_rows;
pub mod defaults;
pub mod driver;
pub mod generate;
mod graphs;
mod input;
pub mod itc;
pub mod request;
pub mod tag;
mod tasks;

pub use batch::DecodeBatch;
pub use blip_package::{Package, PackageError};
pub use blip_preprocess::PreprocessError;
pub use cache_rows::{CacheRows, DecoderStep, is_identity};
pub use cross_rows::{CrossFeed, CrossRows, encoder_mask};
pub use generate::{Generated, Generation, GenerationConfig, StepInput, Strategy};
pub use graphs::{DecoderFeed, Graphs, LogitPositions, VisionOutput, ready};
pub use input::{ImageInput, unique_inputs};
pub use itc::{itc_similarities, itc_similarity, one_vector_per_image};
pub use request::{ModelLimits, RequestError};
pub use tag::{TAG_PROMPT, Tag, TagOptions, tag_prompt, zero_shot_tags};
pub use tasks::{
    Answer, Blip, CandidateStates, Caption, CaptionOptions, Hit, ItmScore, RankedAnswers,
    VqaOptions, caption_text, match_probability,
};

#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error(transparent)]
    Package(#[from] PackageError),
    #[error(transparent)]
    Preprocess(#[from] PreprocessError),
    /// A graph run failed inside the engine.
    #[error("running {graph}: {message}")]
    Engine { graph: String, message: String },
    /// The request itself is invalid (names what and which item).
    #[error("{0}")]
    Input(String),
}

pub type Result<T> = std::result::Result<T, TaskError>;
