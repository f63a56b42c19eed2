//! What JS passes and gets back, as JSON: options objects mapped onto blip-tasks' options (unknown
//! or invalid fields are errors naming the field), and results in camelCase.

use blip_tasks::request;
use blip_tasks::{Answer, Caption, Hit, RankedAnswers, Strategy, VqaOptions};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{0}")]
pub struct OptionError(pub String);

/// Parses a JSON options object (`""` or `"null"`: all defaults).
pub fn parse<T: for<'de> Deserialize<'de> + Default>(json: &str) -> Result<T, OptionError> {
    if json.trim().is_empty() || json.trim() == "null" {
        return Ok(T::default());
    }
    serde_json::from_str(json).map_err(|e| OptionError(format!("invalid options: {e}")))
}

/// `topP` → `top_p`: JS spells the request layer's fields in camelCase.
fn snake_case(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 4);
    for c in key.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// `top_p` → `topP`, `texts[1]` unchanged: a request field as JS spells it.
pub fn camel_case(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut upper = false;
    for c in field.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.push(c.to_ascii_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// Every snake_case field name in `message` in its camelCase spelling.
fn camel_message(message: &str) -> String {
    let mut out = message.to_string();
    for f in request::CAPTION_FIELDS {
        out = out.replace(&format!("`{f}`"), &format!("`{}`", camel_case(f)));
    }
    out
}

/// `caption()`'s options object (camelCase) as a request for the request layer, which applies the
/// defaults and the checks (`resolve`), as at every other door. Errors name the option as JS
/// spells it.
pub fn caption_request(json: &str) -> Result<request::CaptionRequest, OptionError> {
    if json.trim().is_empty() || json.trim() == "null" {
        return Ok(request::CaptionRequest::default());
    }
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|e| OptionError(format!("invalid options: {e}")))?;
    let serde_json::Value::Object(map) = value else {
        return Err(OptionError("invalid options: expected an object".into()));
    };
    let snake: serde_json::Map<String, serde_json::Value> =
        map.into_iter().map(|(k, v)| (snake_case(&k), v)).collect();
    serde_path_to_error::deserialize(serde_json::Value::Object(snake)).map_err(|e| {
        let path = e.path().to_string();
        let inner = camel_message(&e.inner().to_string());
        if path == "." || path.is_empty() {
            OptionError(format!("invalid options: {inner}"))
        } else {
            OptionError(format!("{}: {inner}", camel_case(&path)))
        }
    })
}

/// A request-layer error naming the option as JS spells it.
pub fn request_error(e: request::RequestError) -> OptionError {
    OptionError(format!("{}: {}", camel_case(&e.field), e.problem))
}

fn strategy(
    beams: Option<usize>,
    length_penalty: Option<f32>,
    default: &Strategy,
) -> Result<Strategy, OptionError> {
    let (default_beams, default_penalty) = match default {
        Strategy::Beam {
            num_beams,
            length_penalty,
            ..
        } => (*num_beams, *length_penalty),
        _ => (1, 1.0),
    };
    match beams.unwrap_or(default_beams) {
        0 => Err(OptionError("beams must be at least 1".into())),
        1 => Ok(Strategy::Greedy),
        num_beams => Ok(Strategy::Beam {
            num_beams,
            length_penalty: length_penalty.unwrap_or(default_penalty),
            early_stopping: false,
        }),
    }
}

/// `answer()`'s options; unset fields keep BLIP's VQA defaults.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AnswerRequest {
    pub beams: Option<usize>,
    pub max_length: Option<usize>,
    pub min_length: Option<usize>,
    pub max_question_tokens: Option<usize>,
    #[serde(default)]
    pub mask_question_padding: bool,
}

impl AnswerRequest {
    pub fn options(&self) -> Result<VqaOptions, OptionError> {
        let d = VqaOptions::default();
        Ok(VqaOptions {
            strategy: strategy(self.beams, None, &d.strategy)?,
            max_length: self.max_length.unwrap_or(d.max_length),
            min_length: self.min_length.unwrap_or(d.min_length),
            max_question_tokens: self.max_question_tokens.unwrap_or(d.max_question_tokens),
            mask_question_padding: self.mask_question_padding,
        })
    }
}

/// `rankAnswers()`'s options: `k` (the request layer's, LAVIS: 128) and the question's token
/// budget.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RankAnswersRequest {
    pub k: Option<usize>,
    #[serde(default = "RankAnswersRequest::default_max_question_tokens")]
    pub max_question_tokens: usize,
}

impl RankAnswersRequest {
    fn default_max_question_tokens() -> usize {
        VqaOptions::default().max_question_tokens
    }
}

impl Default for RankAnswersRequest {
    fn default() -> Self {
        RankAnswersRequest {
            k: None,
            max_question_tokens: Self::default_max_question_tokens(),
        }
    }
}

/// `rankImages()`'s options, as `blip-onnx search`: the best `k`, the ITC top `rerank` re-scored
/// by ITM (0: ITC only); both the request layer's, defaults included.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RankImagesRequest {
    pub k: Option<usize>,
    pub rerank: Option<usize>,
    /// The images' ITC embeddings from `embedImages` (computed when absent).
    pub embeddings: Option<Vec<Vec<f32>>>,
}

/// One image's caption, or why that image failed.
#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", untagged)]
pub enum CaptionResult {
    Ok {
        caption: String,
        tokens: Vec<i64>,
        score: Option<f32>,
    },
    Err {
        error: String,
    },
}

impl From<blip_tasks::Result<Caption>> for CaptionResult {
    fn from(r: blip_tasks::Result<Caption>) -> Self {
        match r {
            Ok(c) => CaptionResult::Ok {
                caption: c.text,
                tokens: c.ids,
                score: c.score,
            },
            Err(e) => CaptionResult::Err {
                error: e.to_string(),
            },
        }
    }
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AnswerResult {
    pub question: String,
    pub answer: String,
    pub tokens: Vec<i64>,
}

impl AnswerResult {
    pub fn new(question: &str, a: Answer) -> Self {
        AnswerResult {
            question: question.to_string(),
            answer: a.text,
            tokens: a.ids,
        }
    }
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ScoredAnswer {
    pub answer: String,
    pub score: f32,
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RankedAnswersResult {
    pub question: String,
    pub answer: String,
    pub candidates: Vec<ScoredAnswer>,
}

impl RankedAnswersResult {
    pub fn new(question: &str, answers: &[&str], r: &RankedAnswers) -> Self {
        RankedAnswersResult {
            question: question.to_string(),
            answer: answers[r.best].to_string(),
            candidates: r
                .candidates
                .iter()
                .map(|&(i, score)| ScoredAnswer {
                    answer: answers[i].to_string(),
                    score,
                })
                .collect(),
        }
    }
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HitResult {
    pub rank: usize,
    pub index: usize,
    pub score: f32,
    pub itc: f32,
    pub itm: Option<f32>,
}

pub fn hits(hits: &[Hit]) -> Vec<HitResult> {
    hits.iter()
        .enumerate()
        .map(|(rank, h)| HitResult {
            rank: rank + 1,
            index: h.index,
            score: h.score,
            itc: h.itc,
            itm: h.itm,
        })
        .collect()
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ItmResult {
    pub text: String,
    pub match_probability: f32,
    pub itm_logits: [f32; 2],
    pub itc_similarity: f32,
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODEL: request::ModelLimits = request::ModelLimits { positions: 40 };

    fn resolve(json: &str) -> Result<blip_tasks::CaptionOptions, OptionError> {
        caption_request(json)?.resolve(MODEL).map_err(request_error)
    }

    #[test]
    fn empty_options_are_blip_defaults() {
        let o = resolve("").unwrap();
        let d = blip_tasks::CaptionOptions::default();
        assert_eq!(o.strategy, d.strategy);
        assert_eq!((o.max_length, o.min_length), (d.max_length, d.min_length));
        assert_eq!(o.prompt, d.prompt);
    }

    #[test]
    fn every_decoding_option_maps() {
        let o = resolve(
            r#"{"beams":1,"maxLength":9,"minLength":3,"prompt":"","repetitionPenalty":1.5}"#,
        )
        .unwrap();
        assert_eq!(o.strategy, Strategy::Greedy);
        assert_eq!(
            (o.max_length, o.min_length, o.repetition_penalty),
            (9, 3, 1.5)
        );
        assert_eq!(o.prompt, "");
        let o =
            resolve(r#"{"sample":true,"temperature":0.7,"topK":5,"topP":0.8,"seed":42}"#).unwrap();
        assert_eq!(
            o.strategy,
            Strategy::Sample {
                temperature: 0.7,
                top_k: 5,
                top_p: 0.8,
                seed: 42
            }
        );
        let o = resolve(r#"{"beams":5,"lengthPenalty":0.5}"#).unwrap();
        assert_eq!(
            o.strategy,
            Strategy::Beam {
                num_beams: 5,
                length_penalty: 0.5,
                early_stopping: false
            }
        );
    }

    #[test]
    fn bad_options_name_the_field_as_js_spells_it() {
        let e = resolve(r#"{"beam":3}"#).unwrap_err();
        assert!(e.0.contains("unknown field `beam`"), "{e}");
        assert!(e.0.contains("`topP`"), "{e}");
        let e = resolve(r#"{"beams":0}"#).unwrap_err();
        assert!(e.0.starts_with("beams: 0 is out of range"), "{e}");
        let e = resolve(r#"{"sample":true,"temperature":0}"#).unwrap_err();
        assert!(e.0.starts_with("temperature:"), "{e}");
        let e = resolve(r#"{"sample":true,"topP":7}"#).unwrap_err();
        assert!(e.0.starts_with("topP: 7 is out of range"), "{e}");
        let e = resolve(r#"{"maxLength":"3"}"#).unwrap_err();
        assert!(e.0.starts_with("maxLength: invalid type"), "{e}");
    }

    #[test]
    fn vqa_and_rank_defaults() {
        let o = parse::<AnswerRequest>("null").unwrap().options().unwrap();
        assert_eq!(o.strategy, VqaOptions::default().strategy);
        let r = parse::<RankAnswersRequest>(r#"{"k":4}"#).unwrap();
        assert_eq!((r.k, r.max_question_tokens), (Some(4), 35));
        // Left out, the request layer's defaults apply (`SearchRequest::resolve`).
        let r = parse::<RankImagesRequest>("{}").unwrap();
        assert_eq!((r.k, r.rerank), (None, None));
    }
}
