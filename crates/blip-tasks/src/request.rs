//! The request layer: what a BLIP request may ask, its defaults and its validation, defined once.
//!
//! Every door (CLI flags, the HTTP API, Python keyword arguments, the browser's options) decodes its
//! own syntax into these types and calls `resolve`, which applies the library's defaults and returns
//! the engine's options or a [`RequestError`] naming the field, the item and the rule. The limits
//! on how much work one request may ask for ([`limits`]) live here too, so a hostile request is
//! refused before any graph runs, with the same words at every door.

use serde::{Deserialize, Serialize};

use crate::defaults;
use crate::generate::Strategy;
use crate::tasks::{CaptionOptions, VqaOptions};

/// How much one request may ask for. Each bound is checked before any tokenizer or graph runs.
pub mod limits {
    /// Beams of a beam search (BLIP evaluates with 3; every beam is a decoder row per step).
    pub const MAX_BEAMS: usize = 16;
    /// Bytes of one text (a search query, an ITM or embedding text, a question, an answer). BLIP
    /// reads at most 35 tokens of a retrieval text and of a question; 2 048 bytes holds far more.
    pub const MAX_TEXT_BYTES: usize = 2048;
    /// Bytes of a caption prompt.
    pub const MAX_PROMPT_BYTES: usize = 2048;
    /// Texts in one embedding or ITM request.
    pub const MAX_TEXTS: usize = 256;
    /// Questions about one image in one VQA request.
    pub const MAX_QUESTIONS: usize = 32;
    /// Candidate answers of a VQA rank-mode request (VQAv2's answer list has 3 128).
    pub const MAX_ANSWERS: usize = 4096;
    /// Answers kept after the first-token ranking in VQA rank mode (LAVIS: 128).
    pub const MAX_RANK_K: usize = 256;
    /// Questions × kept answers of one rank-mode request: each is a full decoder pass.
    pub const MAX_RANK_ROWS: usize = 2048;
    /// Hits one search returns.
    pub const MAX_SEARCH_K: usize = 1000;
    /// Candidates one search reranks with ITM.
    pub const MAX_RERANK: usize = 256;
    /// Labels of one zero-shot tagging request (each is one text embedding).
    pub const MAX_LABELS: usize = 1024;
}

/// A request option that cannot be taken: which field (and item), and what it must be.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct RequestError {
    /// The field as the request named it, with the item where there is one: `beams`,
    /// `texts[3]`, `answers`.
    pub field: String,
    /// What is wrong and what it must be.
    pub problem: String,
}

impl RequestError {
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> RequestError {
        RequestError {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

/// What `resolve` needs to know of the model.
#[derive(Debug, Clone, Copy)]
pub struct ModelLimits {
    /// The text decoder's positions (`max_position_embeddings`).
    pub positions: usize,
}

impl ModelLimits {
    pub fn of(package: &blip_package::Package) -> ModelLimits {
        ModelLimits {
            positions: package.manifest.model.max_position_embeddings,
        }
    }
}

/// Caption decoding options as a request gives them: every field optional, the library's default
/// for each one left out ([`CaptionOptions::default`], [`defaults`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptionRequest {
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

/// The option names of [`CaptionRequest`], as every door spells them (snake case).
pub const CAPTION_FIELDS: [&str; 11] = [
    "prompt",
    "beams",
    "sample",
    "top_p",
    "top_k",
    "temperature",
    "seed",
    "max_length",
    "min_length",
    "length_penalty",
    "repetition_penalty",
];

fn in_range(field: &str, v: f32, ok: bool, rule: &str) -> Result<f32, RequestError> {
    if v.is_finite() && ok {
        Ok(v)
    } else {
        Err(RequestError::new(
            field,
            format!("{v} is out of range: {rule}"),
        ))
    }
}

impl CaptionRequest {
    /// The decoding options this request asks for, or the first field that cannot be taken.
    pub fn resolve(&self, model: ModelLimits) -> Result<CaptionOptions, RequestError> {
        let d = CaptionOptions::default();
        let (default_beams, default_length_penalty) = match &d.strategy {
            Strategy::Beam {
                num_beams,
                length_penalty,
                ..
            } => (*num_beams, *length_penalty),
            _ => (1, 1.0),
        };
        let prompt = self.prompt.clone().unwrap_or(d.prompt);
        if prompt.len() > limits::MAX_PROMPT_BYTES {
            return Err(RequestError::new(
                "prompt",
                format!(
                    "{} bytes; at most {}",
                    prompt.len(),
                    limits::MAX_PROMPT_BYTES
                ),
            ));
        }
        let beams = self.beams.unwrap_or(default_beams);
        let sample = self.sample.unwrap_or(false);
        let strategy = if sample {
            let top_p = self.top_p.unwrap_or(defaults::SAMPLE_TOP_P);
            let temperature = self.temperature.unwrap_or(defaults::SAMPLE_TEMPERATURE);
            Strategy::Sample {
                temperature: in_range(
                    "temperature",
                    temperature,
                    temperature > 0.0,
                    "must be above 0",
                )?,
                top_k: self.top_k.unwrap_or(defaults::SAMPLE_TOP_K),
                top_p: in_range(
                    "top_p",
                    top_p,
                    top_p > 0.0 && top_p <= 1.0,
                    "must be above 0 and at most 1",
                )?,
                seed: self.seed.unwrap_or(defaults::SAMPLE_SEED),
            }
        } else {
            match beams {
                1 => Strategy::Greedy,
                b if (2..=limits::MAX_BEAMS).contains(&b) => Strategy::Beam {
                    num_beams: b,
                    length_penalty: in_range(
                        "length_penalty",
                        self.length_penalty.unwrap_or(default_length_penalty),
                        true,
                        "must be a finite number",
                    )?,
                    early_stopping: false,
                },
                b => {
                    return Err(RequestError::new(
                        "beams",
                        format!("{b} is out of range: 1 (greedy) to {}", limits::MAX_BEAMS),
                    ));
                }
            }
        };
        let max_length = self.max_length.unwrap_or(d.max_length);
        if max_length < 2 || max_length > model.positions {
            return Err(RequestError::new(
                "max_length",
                format!(
                    "{max_length} is out of range: 2 to {} (the model's positions)",
                    model.positions
                ),
            ));
        }
        let min_length = self.min_length.unwrap_or(d.min_length);
        if min_length > max_length {
            return Err(RequestError::new(
                "min_length",
                format!("{min_length} is over max_length {max_length}"),
            ));
        }
        let repetition_penalty = self.repetition_penalty.unwrap_or(d.repetition_penalty);
        Ok(CaptionOptions {
            prompt,
            strategy,
            max_length,
            min_length,
            repetition_penalty: in_range(
                "repetition_penalty",
                repetition_penalty,
                repetition_penalty > 0.0,
                "must be above 0",
            )?,
            no_cache: false,
        })
    }
}

/// A prompt of `tokens` tokens must leave room for the caption: fewer than `max_length`.
pub fn check_prompt_tokens(tokens: usize, max_length: usize) -> Result<(), RequestError> {
    if tokens >= max_length {
        return Err(RequestError::new(
            "prompt",
            format!("{tokens} tokens, not shorter than max_length {max_length}"),
        ));
    }
    Ok(())
}

/// Checks a list of texts: `1..=max` items, each non-empty and at most
/// [`limits::MAX_TEXT_BYTES`]. `field` names the list (`texts`, `questions`, `answers`).
pub fn check_texts(field: &str, texts: &[String], max: usize) -> Result<(), RequestError> {
    if texts.is_empty() {
        return Err(RequestError::new(field, "is empty: give at least one"));
    }
    if texts.len() > max {
        return Err(RequestError::new(
            field,
            format!("{} items; at most {max} in one request", texts.len()),
        ));
    }
    for (i, t) in texts.iter().enumerate() {
        check_text(&format!("{field}[{i}]"), t)?;
    }
    Ok(())
}

/// One text: not blank, at most [`limits::MAX_TEXT_BYTES`].
pub fn check_text(field: &str, text: &str) -> Result<(), RequestError> {
    if text.trim().is_empty() {
        return Err(RequestError::new(field, "is empty"));
    }
    if text.len() > limits::MAX_TEXT_BYTES {
        return Err(RequestError::new(
            field,
            format!("{} bytes; at most {}", text.len(), limits::MAX_TEXT_BYTES),
        ));
    }
    Ok(())
}

/// Questions about one image as a request gives them: generation, or LAVIS's rank mode over
/// `answers`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VqaRequest {
    #[serde(default)]
    pub questions: Vec<String>,
    /// Rank these answers instead of generating.
    pub answers: Option<Vec<String>>,
    /// Rank mode: answers kept after the first-token ranking (default 128).
    pub k: Option<usize>,
    /// Generation: mask the question padding in cross-attention.
    pub mask_question_padding: Option<bool>,
}

/// What a VQA request resolves to.
#[derive(Debug, Clone)]
pub enum VqaMode {
    Generate(VqaOptions),
    /// Rank `answers`, keeping `k` (at most the number of answers) after the first token.
    Rank {
        answers: Vec<String>,
        k: usize,
    },
}

impl VqaMode {
    /// Decoder rows per question: one generated answer, or a pass per kept answer.
    pub fn decoder_rows(&self) -> usize {
        match self {
            VqaMode::Generate(_) => 1,
            VqaMode::Rank { k, .. } => *k,
        }
    }
}

impl VqaRequest {
    pub fn resolve(&self) -> Result<VqaMode, RequestError> {
        check_texts("questions", &self.questions, limits::MAX_QUESTIONS)?;
        match &self.answers {
            None => {
                let d = VqaOptions::default();
                Ok(VqaMode::Generate(VqaOptions {
                    mask_question_padding: self
                        .mask_question_padding
                        .unwrap_or(d.mask_question_padding),
                    ..d
                }))
            }
            Some(answers) => {
                check_texts("answers", answers, limits::MAX_ANSWERS)?;
                let k = self.k.unwrap_or(defaults::VQA_RANK_K);
                if k == 0 || k > limits::MAX_RANK_K {
                    return Err(RequestError::new(
                        "k",
                        format!("{k} is out of range: 1 to {}", limits::MAX_RANK_K),
                    ));
                }
                let k = k.min(answers.len());
                let rows = k * self.questions.len();
                if rows > limits::MAX_RANK_ROWS {
                    return Err(RequestError::new(
                        "k",
                        format!(
                            "{} questions × {k} kept answers = {rows} decoder passes; at most {} \
                             (lower `k` or ask fewer questions at once)",
                            self.questions.len(),
                            limits::MAX_RANK_ROWS
                        ),
                    ));
                }
                Ok(VqaMode::Rank {
                    answers: answers.clone(),
                    k,
                })
            }
        }
    }
}

/// A text search over an index as a request gives it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    pub text: String,
    /// Hits returned (default 10).
    pub k: Option<usize>,
    /// Candidates reranked with ITM (default 16; 0: ITC only).
    pub rerank: Option<usize>,
}

/// A resolved search: the query, hits to return and candidates to rerank.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchOptions {
    pub k: usize,
    pub rerank: usize,
}

impl SearchRequest {
    pub fn resolve(&self) -> Result<SearchOptions, RequestError> {
        check_text("text", &self.text)?;
        let k = self.k.unwrap_or(defaults::SEARCH_K);
        if k == 0 || k > limits::MAX_SEARCH_K {
            return Err(RequestError::new(
                "k",
                format!("{k} is out of range: 1 to {}", limits::MAX_SEARCH_K),
            ));
        }
        let rerank = self.rerank.unwrap_or(defaults::RERANK);
        if rerank > limits::MAX_RERANK {
            return Err(RequestError::new(
                "rerank",
                format!("{rerank} is out of range: 0 to {}", limits::MAX_RERANK),
            ));
        }
        Ok(SearchOptions { k, rerank })
    }
}

/// Zero-shot tagging as a request gives it: the labels, and the `top_k` best or those scoring at
/// least `threshold` (one or the other; neither: the [`defaults::TAG_TOP_K`] best).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TagRequest {
    #[serde(default)]
    pub labels: Vec<String>,
    pub top_k: Option<usize>,
    /// ITC similarity (a cosine): -1 to 1.
    pub threshold: Option<f32>,
}

impl TagRequest {
    pub fn resolve(&self) -> Result<crate::tag::TagOptions, RequestError> {
        check_texts("labels", &self.labels, limits::MAX_LABELS)?;
        // A repeated label would be scored twice and shown twice.
        let mut seen = std::collections::HashMap::new();
        for (i, l) in self.labels.iter().enumerate() {
            if let Some(first) = seen.insert(l.trim(), i) {
                return Err(RequestError::new(
                    format!("labels[{i}]"),
                    format!("repeats labels[{first}]"),
                ));
            }
        }
        match (self.top_k, self.threshold) {
            (Some(_), Some(_)) => Err(RequestError::new(
                "threshold",
                "give top_k or threshold, not both",
            )),
            (_, Some(t)) => Ok(crate::tag::TagOptions::Threshold(in_range(
                "threshold",
                t,
                (-1.0..=1.0).contains(&t),
                "from -1 to 1 (a cosine similarity)",
            )?)),
            (k, None) => {
                let k = k.unwrap_or(defaults::TAG_TOP_K);
                if k == 0 || k > limits::MAX_LABELS {
                    return Err(RequestError::new(
                        "top_k",
                        format!("{k} is out of range: 1 to {}", limits::MAX_LABELS),
                    ));
                }
                Ok(crate::tag::TagOptions::TopK(k.min(self.labels.len())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODEL: ModelLimits = ModelLimits { positions: 40 };

    fn field_of(r: CaptionRequest) -> String {
        r.resolve(MODEL).expect_err("refused").field
    }

    #[test]
    fn caption_defaults_are_the_librarys() {
        let o = CaptionRequest::default().resolve(MODEL).unwrap();
        let d = CaptionOptions::default();
        assert_eq!(o.prompt, d.prompt);
        assert_eq!(o.strategy, d.strategy);
        assert_eq!((o.max_length, o.min_length), (d.max_length, d.min_length));
        assert_eq!(o.repetition_penalty, d.repetition_penalty);
    }

    #[test]
    fn caption_rules_name_the_field() {
        let cases = [
            (
                CaptionRequest {
                    beams: Some(0),
                    ..Default::default()
                },
                "beams",
            ),
            (
                CaptionRequest {
                    beams: Some(17),
                    ..Default::default()
                },
                "beams",
            ),
            (
                CaptionRequest {
                    sample: Some(true),
                    temperature: Some(0.0),
                    ..Default::default()
                },
                "temperature",
            ),
            (
                CaptionRequest {
                    sample: Some(true),
                    top_p: Some(7.0),
                    ..Default::default()
                },
                "top_p",
            ),
            (
                CaptionRequest {
                    max_length: Some(41),
                    ..Default::default()
                },
                "max_length",
            ),
            (
                CaptionRequest {
                    max_length: Some(10),
                    min_length: Some(11),
                    ..Default::default()
                },
                "min_length",
            ),
            (
                CaptionRequest {
                    repetition_penalty: Some(0.0),
                    ..Default::default()
                },
                "repetition_penalty",
            ),
            (
                CaptionRequest {
                    length_penalty: Some(f32::NAN),
                    ..Default::default()
                },
                "length_penalty",
            ),
            (
                CaptionRequest {
                    prompt: Some("x".repeat(limits::MAX_PROMPT_BYTES + 1)),
                    ..Default::default()
                },
                "prompt",
            ),
        ];
        for (req, field) in cases {
            assert_eq!(field_of(req), field);
        }
    }

    #[test]
    fn sampling_and_beams_resolve() {
        let o = CaptionRequest {
            sample: Some(true),
            top_p: Some(1.0),
            temperature: Some(0.7),
            seed: Some(3),
            ..Default::default()
        }
        .resolve(MODEL)
        .unwrap();
        assert_eq!(
            o.strategy,
            Strategy::Sample {
                temperature: 0.7,
                top_k: 0,
                top_p: 1.0,
                seed: 3
            }
        );
        let o = CaptionRequest {
            beams: Some(1),
            ..Default::default()
        }
        .resolve(MODEL)
        .unwrap();
        assert_eq!(o.strategy, Strategy::Greedy);
    }

    #[test]
    fn vqa_rank_work_is_bounded() {
        let q = |n: usize| (0..n).map(|i| format!("q{i}")).collect::<Vec<_>>();
        let a = |n: usize| Some((0..n).map(|i| format!("a{i}")).collect::<Vec<_>>());
        let err = |r: VqaRequest| r.resolve().expect_err("refused");
        let e = err(VqaRequest {
            questions: q(1),
            answers: a(3),
            k: Some(1_000_000_000_000),
            ..Default::default()
        });
        assert_eq!(e.field, "k");
        assert!(e.problem.contains("256"), "{e}");
        let e = err(VqaRequest {
            questions: q(7),
            answers: a(limits::MAX_ANSWERS + 1),
            ..Default::default()
        });
        assert_eq!(e.field, "answers");
        let e = err(VqaRequest {
            questions: q(32),
            answers: a(200),
            k: Some(128),
            ..Default::default()
        });
        assert_eq!(e.field, "k");
        assert!(e.problem.contains("4096 decoder passes"), "{e}");
        assert_eq!(
            err(VqaRequest {
                questions: vec!["ok".into(), " ".into()],
                ..Default::default()
            })
            .field,
            "questions[1]"
        );
        // k is clamped to the answers given.
        match (VqaRequest {
            questions: q(2),
            answers: a(3),
            ..Default::default()
        })
        .resolve()
        .unwrap()
        {
            VqaMode::Rank { k, .. } => assert_eq!(k, 3),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn search_and_text_bounds() {
        let long = "a".repeat(limits::MAX_TEXT_BYTES + 1);
        let e = SearchRequest {
            text: long.clone(),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert_eq!(e.field, "text");
        assert!(e.problem.contains("2048"), "{e}");
        let e = check_texts("texts", &["fine".into(), long], 8).unwrap_err();
        assert_eq!(e.field, "texts[1]");
        let e = SearchRequest {
            text: "x".into(),
            rerank: Some(257),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert_eq!(e.field, "rerank");
    }

    #[test]
    fn tag_requests_name_the_field() {
        let labels = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let field = |r: TagRequest| r.resolve().expect_err("refused").field;
        assert_eq!(field(TagRequest::default()), "labels");
        assert_eq!(
            field(TagRequest {
                labels: labels(&["cat", " "]),
                ..Default::default()
            }),
            "labels[1]"
        );
        assert_eq!(
            field(TagRequest {
                labels: labels(&["cat", "dog", "cat"]),
                ..Default::default()
            }),
            "labels[2]"
        );
        assert_eq!(
            field(TagRequest {
                labels: vec!["x".into(); limits::MAX_LABELS + 1],
                ..Default::default()
            }),
            "labels"
        );
        for k in [0, limits::MAX_LABELS + 1] {
            assert_eq!(
                field(TagRequest {
                    labels: labels(&["cat"]),
                    top_k: Some(k),
                    ..Default::default()
                }),
                "top_k"
            );
        }
        for t in [1.5, -1.01, f32::NAN] {
            assert_eq!(
                field(TagRequest {
                    labels: labels(&["cat"]),
                    threshold: Some(t),
                    ..Default::default()
                }),
                "threshold"
            );
        }
        assert_eq!(
            field(TagRequest {
                labels: labels(&["cat"]),
                top_k: Some(1),
                threshold: Some(0.2),
            }),
            "threshold"
        );
        // The default keeps at most the labels given.
        assert_eq!(
            TagRequest {
                labels: labels(&["cat", "dog"]),
                ..Default::default()
            }
            .resolve()
            .unwrap(),
            crate::tag::TagOptions::TopK(2)
        );
    }
}
