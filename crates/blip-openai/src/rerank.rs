//! `POST /v1/rerank` in the Jina/Cohere shape: a query and documents, scored by ITM.
//!
//! ITM scores an image against a text, so one side is an image and the other texts: a text query
//! against image documents (`{"image": "data:..."}`, as jina-reranker-m0), or an image query
//! (`{"image": ...}`) against text documents (strings or `{"text": ...}`).

use blip_tasks::request::{RequestError, limits};
use serde::{Deserialize, Serialize};

use crate::image::ImageSource;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RerankRequest {
    pub model: String,
    pub query: Item,
    pub documents: Vec<Item>,
    pub top_n: Option<usize>,
    #[serde(default = "yes")]
    pub return_documents: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum Item {
    Text(String),
    Object {
        #[serde(skip_serializing_if = "Option::is_none")]
        text: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        image: Option<String>,
    },
}

enum Side {
    Text(String),
    Image(ImageSource),
}

fn side(field: &str, item: &Item) -> Result<Side, RequestError> {
    match item {
        Item::Text(t)
        | Item::Object {
            text: Some(t),
            image: None,
        } => {
            blip_tasks::request::check_text(field, t)?;
            Ok(Side::Text(t.clone()))
        }
        Item::Object {
            text: None,
            image: Some(i),
        } => ImageSource::parse(&format!("{field}.image"), i).map(Side::Image),
        Item::Object { .. } => Err(RequestError::new(
            field,
            "give a string, {\"text\": ...} or {\"image\": ...} (one of them)",
        )),
    }
}

/// One image scored against several texts, or one text against several images.
#[derive(Debug, Clone)]
pub enum RerankTask {
    ImageQuery {
        image: (String, ImageSource),
        texts: Vec<String>,
    },
    TextQuery {
        text: String,
        images: Vec<(String, ImageSource)>,
    },
}

impl RerankRequest {
    pub fn task(&self) -> Result<RerankTask, RequestError> {
        if self.documents.is_empty() {
            return Err(RequestError::new("documents", "is empty"));
        }
        if self.documents.len() > limits::MAX_RERANK {
            return Err(RequestError::new(
                "documents",
                format!(
                    "{} documents; at most {}",
                    self.documents.len(),
                    limits::MAX_RERANK
                ),
            ));
        }
        if self.top_n == Some(0) {
            return Err(RequestError::new("top_n", "must be at least 1"));
        }
        let query = side("query", &self.query)?;
        let mut texts = Vec::new();
        let mut images = Vec::new();
        for (i, d) in self.documents.iter().enumerate() {
            let field = format!("documents[{i}]");
            match (side(&field, d)?, &query) {
                (Side::Text(t), Side::Image(_)) => texts.push(t),
                (Side::Image(s), Side::Text(_)) => images.push((format!("{field}.image"), s)),
                (Side::Text(_), Side::Text(_)) => {
                    return Err(RequestError::new(
                        field,
                        "a text against a text query: ITM scores images against texts (give image documents, or an image query)",
                    ));
                }
                (Side::Image(_), Side::Image(_)) => {
                    return Err(RequestError::new(
                        field,
                        "an image against an image query: ITM scores images against texts",
                    ));
                }
            }
        }
        Ok(match query {
            Side::Image(s) => RerankTask::ImageQuery {
                image: ("query.image".into(), s),
                texts,
            },
            Side::Text(text) => RerankTask::TextQuery { text, images },
        })
    }

    /// Results best first (ties by document order), cut to `top_n`.
    pub fn response(&self, scores: &[f32], tokens: usize) -> RerankResponse {
        let mut order: Vec<usize> = (0..scores.len()).collect();
        order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
        order.truncate(self.top_n.unwrap_or(scores.len()));
        RerankResponse {
            model: self.model.clone(),
            results: order
                .into_iter()
                .map(|index| RerankResult {
                    index,
                    relevance_score: scores[index],
                    document: self
                        .return_documents
                        .then(|| self.documents.get(index).cloned())
                        .flatten(),
                })
                .collect(),
            usage: RerankUsage {
                total_tokens: tokens,
            },
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RerankResult {
    pub index: usize,
    /// ITM match probability.
    pub relevance_score: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub document: Option<Item>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RerankUsage {
    pub total_tokens: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RerankResponse {
    pub model: String,
    pub results: Vec<RerankResult>,
    pub usage: RerankUsage,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(v: serde_json::Value) -> RerankRequest {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn sides_and_order() {
        let r = req(
            serde_json::json!({"model": "m", "query": {"image": "data:image/png;base64,AA"},
            "documents": ["a", {"text": "b"}, "c"], "top_n": 2}),
        );
        assert!(
            matches!(r.task().unwrap(), RerankTask::ImageQuery { texts, .. } if texts == ["a", "b", "c"])
        );
        let out = r.response(&[0.2, 0.9, 0.9], 3);
        let idx: Vec<usize> = out.results.iter().map(|x| x.index).collect();
        assert_eq!(idx, [1, 2]);
        let bad = req(
            serde_json::json!({"model": "m", "query": "a", "documents": [{"image": "data:image/png;base64,AA"}, "b"]}),
        );
        assert_eq!(bad.task().unwrap_err().field, "documents[1]");
    }
}
