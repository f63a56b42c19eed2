//! BLIP inputs as tensors: [`ImagePreprocessor`] (decode, Pillow-exact bicubic resize, CLIP
//! normalisation) and [`BlipTokenizer`] (BERT WordPiece with BLIP's [DEC] / [ENC] conventions).

mod image;
mod text;

pub use image::{
    DEFAULT_MAX_FILE_BYTES, DEFAULT_MAX_PIXELS, ImagePreprocessor, RgbImage, resize_like_pillow,
};
pub use text::{BlipTokenizer, FirstToken, TextBatch, load_tokenizer_json};

#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    #[error("image {name}: {message}")]
    Image { name: String, message: String },
    #[error("image {name} is {width}x{height} = {} pixels, over the limit of {max_pixels} (decompression-bomb guard)", *width as u64 * *height as u64)]
    TooLarge {
        name: String,
        width: u32,
        height: u32,
        max_pixels: u64,
    },
    #[error("image {name} is {bytes} bytes, over the limit of {max_bytes} bytes")]
    FileTooLarge {
        name: String,
        bytes: u64,
        max_bytes: u64,
    },
    #[error("resize: {0}")]
    Resize(String),
    #[error("empty text")]
    EmptyText,
    /// One text of a batch is unusable; `ordinal` counts from 1.
    #[error("text {ordinal} of {count} ({snippet:?}): {message}")]
    Text {
        ordinal: usize,
        count: usize,
        snippet: String,
        message: String,
    },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
}
