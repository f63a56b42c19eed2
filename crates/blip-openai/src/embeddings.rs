//! `POST /v1/embeddings`: ITC embeddings of texts, or of images by Infinity's convention
//! (`"modality": "image"`, each input a data: URI or an allowed http(s) URL).

use base64::Engine as _;
use blip_tasks::request::{RequestError, limits};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::image::ImageSource;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingsRequest {
    pub model: String,
    pub input: Input,
    pub encoding_format: Option<EncodingFormat>,
    /// Only the model's own width is taken (BLIP's ITC projection is not Matryoshka-trained).
    pub dimensions: Option<usize>,
    /// Infinity's field: `text` (default) or `image`.
    pub modality: Option<Modality>,
    pub user: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Input {
    One(String),
    Many(Vec<String>),
    /// Token ids (OpenAI takes them); refused with a message saying to send text.
    Tokens(Value),
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EncodingFormat {
    #[default]
    Float,
    /// Little-endian f32 bytes in base64, as OpenAI's clients decode them.
    Base64,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Modality {
    #[default]
    Text,
    Image,
}

/// What to embed.
#[derive(Debug, Clone)]
pub enum EmbeddingsTask {
    Texts(Vec<String>),
    /// Each image with the field that named it (`input[2]`).
    Images(Vec<(String, ImageSource)>),
}

impl EmbeddingsRequest {
    pub fn task(&self, width: usize) -> Result<EmbeddingsTask, RequestError> {
        if let Some(d) = self.dimensions
            && d != width
        {
            return Err(RequestError::new(
                "dimensions",
                format!("{d}: this model's embeddings have {width} dimensions"),
            ));
        }
        let inputs = match &self.input {
            Input::One(s) => vec![s.clone()],
            Input::Many(v) => v.clone(),
            Input::Tokens(_) => {
                return Err(RequestError::new(
                    "input",
                    "token ids are not taken: send strings (texts, or images with \"modality\": \"image\")",
                ));
            }
        };
        match self.modality.unwrap_or_default() {
            Modality::Text => {
                blip_tasks::request::check_texts("input", &inputs, limits::MAX_TEXTS)?;
                Ok(EmbeddingsTask::Texts(inputs))
            }
            Modality::Image => {
                if inputs.is_empty() {
                    return Err(RequestError::new("input", "is empty"));
                }
                if inputs.len() > limits::MAX_TEXTS {
                    return Err(RequestError::new(
                        "input",
                        format!("{} images; at most {}", inputs.len(), limits::MAX_TEXTS),
                    ));
                }
                inputs
                    .iter()
                    .enumerate()
                    .map(|(i, s)| {
                        let field = format!("input[{i}]");
                        ImageSource::parse(&field, s).map(|src| (field, src))
                    })
                    .collect::<Result<_, _>>()
                    .map(EmbeddingsTask::Images)
            }
        }
    }

    /// The response for `vectors` (one per input, in order) and the tokens the texts took.
    pub fn response(&self, vectors: &[Vec<f32>], prompt_tokens: usize) -> EmbeddingsResponse {
        let format = self.encoding_format.unwrap_or_default();
        EmbeddingsResponse {
            object: "list".into(),
            data: vectors
                .iter()
                .enumerate()
                .map(|(index, v)| EmbeddingItem {
                    object: "embedding".into(),
                    index,
                    embedding: encode(v, format),
                })
                .collect(),
            model: self.model.clone(),
            usage: EmbeddingsUsage {
                prompt_tokens,
                total_tokens: prompt_tokens,
            },
        }
    }
}

fn encode(v: &[f32], format: EncodingFormat) -> Value {
    match format {
        EncodingFormat::Float => Value::from(v.iter().map(|x| f64::from(*x)).collect::<Vec<_>>()),
        EncodingFormat::Base64 => {
            let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            Value::from(base64::engine::general_purpose::STANDARD.encode(bytes))
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EmbeddingItem {
    pub object: String,
    pub index: usize,
    pub embedding: Value,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EmbeddingsUsage {
    pub prompt_tokens: usize,
    pub total_tokens: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EmbeddingsResponse {
    pub object: String,
    pub data: Vec<EmbeddingItem>,
    pub model: String,
    pub usage: EmbeddingsUsage,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_is_little_endian_f32() {
        let v = [1.0f32, -0.5];
        let Value::String(s) = encode(&v, EncodingFormat::Base64) else {
            panic!("not a string")
        };
        let bytes = base64::engine::general_purpose::STANDARD.decode(s).unwrap();
        let back: Vec<f32> = bytes
            .chunks(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(back, v);
    }

    #[test]
    fn inputs_are_checked() {
        let r = |v: Value| {
            serde_json::from_value::<EmbeddingsRequest>(v)
                .unwrap()
                .task(256)
        };
        assert!(
            matches!(r(serde_json::json!({"model": "m", "input": "a cat"})), Ok(EmbeddingsTask::Texts(t)) if t == ["a cat"])
        );
        assert_eq!(
            r(serde_json::json!({"model": "m", "input": ["a", " "]}))
                .unwrap_err()
                .field,
            "input[1]"
        );
        assert_eq!(
            r(serde_json::json!({"model": "m", "input": [1, 2]}))
                .unwrap_err()
                .field,
            "input"
        );
        assert_eq!(
            r(serde_json::json!({"model": "m", "input": "a", "dimensions": 3}))
                .unwrap_err()
                .field,
            "dimensions"
        );
        assert_eq!(
            r(serde_json::json!({"model": "m", "input": ["data:image/png;base64,AA", "ftp://x"], "modality": "image"}))
                .unwrap_err()
                .field,
            "input[1]"
        );
    }
}
