//! `POST /v1/chat/completions`: one image (an `image_url` part) and an optional question.
//!
//! An image with no text is captioned (the caption head, BLIP's caption prompt); an image with a
//! question is answered (the VQA head). BLIP follows no instructions, so `system`/`developer`
//! messages and earlier assistant turns are read past; the question is the text of the last
//! user message. Unset decoding options keep BLIP's defaults (beam 3), as every other door.

use std::collections::BTreeMap;

use blip_tasks::request::{CaptionRequest, RequestError};
use blip_tasks::{CaptionOptions, VqaOptions};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::image::ImageSource;

/// Most choices one request may ask for (`n`).
pub const MAX_CHOICES: usize = 8;
/// Most stop strings, as OpenAI.
pub const MAX_STOP: usize = 4;

/// Request fields that are read and deliberately ignored (bookkeeping that changes no answer).
const IGNORED: [&str; 5] = [
    "user",
    "metadata",
    "store",
    "service_tier",
    "parallel_tool_calls",
];
/// OpenAI fields BLIP cannot honour: refused by name unless sent with their no-op value.
const UNSUPPORTED: [&str; 14] = [
    "frequency_penalty",
    "presence_penalty",
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "response_format",
    "modalities",
    "audio",
    "prediction",
    "reasoning_effort",
];

#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<Message>,
    /// Generated tokens at most (the prompt not counted).
    pub max_tokens: Option<usize>,
    /// OpenAI's newer name for `max_tokens`.
    pub max_completion_tokens: Option<usize>,
    /// 0: greedy; above 0: sampling at this temperature.
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub seed: Option<u64>,
    pub n: Option<usize>,
    pub stop: Option<Stop>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    /// Extensions with vLLM's and transformers' names: top-k sampling, beam width, penalties,
    /// generated tokens at least.
    pub top_k: Option<usize>,
    pub num_beams: Option<usize>,
    pub length_penalty: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub min_tokens: Option<usize>,
    /// Everything else: checked against the ignored and unsupported lists.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Message {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Part {
    Text { text: String },
    ImageUrl { image_url: ImageUrl },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ImageUrl {
    Object {
        url: String,
        #[allow(dead_code)]
        detail: Option<String>,
    },
    /// vLLM also takes the URL as a bare string.
    Bare(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// What a chat request asks of BLIP, checked.
#[derive(Debug, Clone)]
pub struct ChatTask {
    pub model: String,
    /// The image and the request field that named it (`messages[0].content[1].image_url`).
    pub image: (String, ImageSource),
    /// The question: `None` captions the image.
    pub question: Option<String>,
    /// The decoding knobs, in the request layer's terms (lengths set per task below).
    knobs: CaptionRequest,
    max_new_tokens: Option<usize>,
    min_new_tokens: Option<usize>,
    pub n: usize,
    pub stop: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
}

impl ChatRequest {
    /// The task this request asks for, or the first field that cannot be taken (named with
    /// OpenAI's field names).
    pub fn task(&self) -> Result<ChatTask, RequestError> {
        for (key, value) in &self.other {
            refuse_unsupported(key, value)?;
        }
        let (image, question) = read_messages(&self.messages)?;
        let sampling = self.temperature.is_some_and(|t| t != 0.0)
            || self.top_p.is_some()
            || self.top_k.is_some();
        if let Some(t) = self.temperature
            && !(t.is_finite() && (0.0..=2.0).contains(&t))
        {
            return Err(RequestError::new(
                "temperature",
                format!("{t} is out of range: 0 (greedy) to 2"),
            ));
        }
        if sampling && self.num_beams.is_some_and(|b| b > 1) {
            return Err(RequestError::new(
                "num_beams",
                "beam search does not sample: drop temperature/top_p/top_k, or num_beams",
            ));
        }
        let beams = match (self.num_beams, self.temperature) {
            (Some(b), _) => Some(b),
            // temperature 0 asks for the most likely tokens: greedy.
            (None, Some(0.0)) => Some(1),
            _ => None,
        };
        let n = self.n.unwrap_or(1);
        if n == 0 || n > MAX_CHOICES {
            return Err(RequestError::new(
                "n",
                format!("{n} is out of range: 1 to {MAX_CHOICES}"),
            ));
        }
        if n > 1 && !sampling {
            return Err(RequestError::new(
                "n",
                "several choices need sampling (temperature above 0): greedy and beam search \
                 give one answer",
            ));
        }
        let stop = match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        if stop.len() > MAX_STOP {
            return Err(RequestError::new(
                "stop",
                format!("{} strings; at most {MAX_STOP}", stop.len()),
            ));
        }
        if let Some(i) = stop.iter().position(|s| s.is_empty()) {
            return Err(RequestError::new(format!("stop[{i}]"), "is empty"));
        }
        let max_new_tokens = match (self.max_tokens, self.max_completion_tokens) {
            (Some(_), Some(_)) => {
                return Err(RequestError::new(
                    "max_completion_tokens",
                    "give max_tokens or max_completion_tokens, not both",
                ));
            }
            (a, b) => a.or(b),
        };
        if max_new_tokens == Some(0) {
            return Err(RequestError::new("max_tokens", "must be at least 1"));
        }
        if let (Some(min), Some(max)) = (self.min_tokens, max_new_tokens)
            && min > max
        {
            return Err(RequestError::new(
                "min_tokens",
                format!("{min} is over max_tokens {max}"),
            ));
        }
        Ok(ChatTask {
            model: self.model.clone(),
            image,
            question,
            knobs: CaptionRequest {
                prompt: None,
                beams,
                sample: Some(sampling),
                top_p: self.top_p,
                top_k: self.top_k,
                temperature: self.temperature.filter(|t| *t > 0.0),
                seed: self.seed,
                max_length: None,
                min_length: None,
                length_penalty: self.length_penalty,
                repetition_penalty: self.repetition_penalty,
            },
            max_new_tokens,
            min_new_tokens: self.min_tokens,
            n,
            stop,
            stream: self.stream.unwrap_or(false),
            include_usage: self
                .stream_options
                .as_ref()
                .is_some_and(|o| o.include_usage),
        })
    }
}

fn refuse_unsupported(key: &str, value: &Value) -> Result<(), RequestError> {
    let no_op = match value {
        Value::Null | Value::Bool(false) => true,
        Value::Number(x) => x.as_f64() == Some(0.0),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::String(s) => key == "tool_choice" && s == "none",
        Value::Bool(true) => false,
    };
    if IGNORED.contains(&key) || no_op && UNSUPPORTED.contains(&key) {
        Ok(())
    } else if UNSUPPORTED.contains(&key) {
        Err(RequestError::new(
            key,
            "is not supported: BLIP captions and answers about one image (see the README's \
             OpenAI section for the fields it takes)",
        ))
    } else {
        Err(RequestError::new(key, "unknown field"))
    }
}

/// The one image and the question (the last user message's text) of a conversation.
fn read_messages(
    messages: &[Message],
) -> Result<((String, ImageSource), Option<String>), RequestError> {
    let Some(last) = messages.last() else {
        return Err(RequestError::new("messages", "is empty"));
    };
    if last.role != "user" {
        return Err(RequestError::new(
            format!("messages[{}].role", messages.len() - 1),
            format!("the last message must be the user's, not {:?}", last.role),
        ));
    }
    let mut image: Option<(String, ImageSource)> = None;
    let mut question = String::new();
    for (i, m) in messages.iter().enumerate() {
        match m.role.as_str() {
            "user" => {}
            "system" | "developer" | "assistant" => continue,
            other => {
                return Err(RequestError::new(
                    format!("messages[{i}].role"),
                    format!("{other:?} is not taken: system, developer, user or assistant"),
                ));
            }
        }
        let is_last = i + 1 == messages.len();
        let parts: Vec<Part> = match &m.content {
            None => Vec::new(),
            Some(Content::Text(t)) => vec![Part::Text { text: t.clone() }],
            Some(Content::Parts(p)) => p.clone(),
        };
        for (j, part) in parts.into_iter().enumerate() {
            match part {
                Part::Text { text } if is_last => {
                    if !question.is_empty() && !text.trim().is_empty() {
                        question.push(' ');
                    }
                    question.push_str(text.trim());
                }
                Part::Text { .. } => {}
                Part::ImageUrl { image_url } => {
                    let field = format!("messages[{i}].content[{j}].image_url");
                    if image.is_some() {
                        return Err(RequestError::new(
                            field,
                            "a second image: BLIP answers about one image per request",
                        ));
                    }
                    let url = match image_url {
                        ImageUrl::Object { url, .. } | ImageUrl::Bare(url) => url,
                    };
                    let source = ImageSource::parse(&format!("{field}.url"), &url)?;
                    image = Some((field, source));
                }
            }
        }
    }
    let image = image.ok_or_else(|| {
        RequestError::new(
            "messages",
            "no image: BLIP needs one image_url content part in a user message",
        )
    })?;
    let question = (!question.is_empty()).then_some(question);
    if let Some(q) = &question {
        blip_tasks::request::check_text(&format!("messages[{}].content", messages.len() - 1), q)?;
    }
    Ok((image, question))
}

/// The request layer names lengths in BLIP's terms (prompt included); the chat door names them
/// in OpenAI's (generated tokens).
fn openai_field(e: RequestError) -> RequestError {
    let field = match e.field.as_str() {
        "max_length" => "max_tokens",
        "min_length" => "min_tokens",
        "beams" => "num_beams",
        other => other,
    };
    RequestError {
        field: field.into(),
        ..e
    }
}

impl ChatTask {
    /// Caption options for a caption whose prompt is `prompt_tokens` tokens long (BLIP's lengths
    /// count the prompt). Unset lengths keep BLIP's defaults; a short `max_tokens` lowers the
    /// default minimum with it.
    pub fn caption_request(&self, prompt_tokens: usize) -> CaptionRequest {
        let d = CaptionOptions::default();
        let max_length = self.max_new_tokens.map(|m| prompt_tokens + m);
        let min_length = match (self.min_new_tokens, max_length) {
            (Some(m), _) => Some(prompt_tokens + m),
            (None, Some(max)) => Some(d.min_length.min(max)),
            (None, None) => None,
        };
        CaptionRequest {
            max_length,
            min_length,
            ..self.knobs.clone()
        }
    }

    /// Resolves [`ChatTask::caption_request`] with the request layer's rules.
    pub fn caption_options(
        &self,
        prompt_tokens: usize,
        model: blip_tasks::request::ModelLimits,
    ) -> Result<CaptionOptions, RequestError> {
        self.caption_request(prompt_tokens)
            .resolve(model)
            .map_err(openai_field)
    }

    /// Answer-decoding options: BLIP's VQA defaults (beam 3, at most 10 tokens with the start
    /// token), the request's knobs over them, checked by the same rules as captions.
    pub fn vqa_options(
        &self,
        model: blip_tasks::request::ModelLimits,
    ) -> Result<VqaOptions, RequestError> {
        let d = VqaOptions::default();
        if self.knobs.repetition_penalty.is_some() {
            return Err(RequestError::new(
                "repetition_penalty",
                "answers are decoded without a repetition penalty (BLIP's VQA)",
            ));
        }
        // The answer decoder starts from one token ([DEC]); BLIP's lengths count it.
        let max_length = self.max_new_tokens.map_or(d.max_length, |m| 1 + m);
        let min_length = self
            .min_new_tokens
            .map_or(d.min_length.min(max_length), |m| 1 + m);
        let beams = match &d.strategy {
            blip_tasks::Strategy::Beam { num_beams, .. } => *num_beams,
            _ => 1,
        };
        let resolved = CaptionRequest {
            prompt: Some(String::new()),
            beams: self.knobs.beams.or(Some(beams)),
            max_length: Some(max_length),
            min_length: Some(min_length),
            ..self.knobs.clone()
        }
        .resolve(model)
        .map_err(openai_field)?;
        Ok(VqaOptions {
            strategy: resolved.strategy,
            max_length: resolved.max_length,
            min_length: resolved.min_length,
            ..d
        })
    }
}

/// `text` cut before the first stop string; whether one was found.
pub fn apply_stop(text: &str, stop: &[String]) -> (String, bool) {
    match stop.iter().filter_map(|s| text.find(s.as_str())).min() {
        Some(at) => (text[..at].to_string(), true),
        None => (text.to_string(), false),
    }
}

/// Why a choice ended, as OpenAI says it.
pub fn finish_reason(ended_by_eos: bool, stopped: bool) -> &'static str {
    if ended_by_eos || stopped {
        "stop"
    } else {
        "length"
    }
}

/// The streamed pieces of `final_text`, one per generated token: `prefixes[k]` is the text of the
/// first `k + 1` tokens. Each piece extends the text so far only where the prefix agrees with the
/// final text (detokenizing can rewrite an earlier character, e.g. around punctuation); the last
/// piece completes it, so the pieces always join to exactly `final_text`.
pub fn token_deltas(final_text: &str, prefixes: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(prefixes.len());
    let mut sent = 0;
    for (k, p) in prefixes.iter().enumerate() {
        let upto = if k + 1 == prefixes.len() {
            final_text.len()
        } else if final_text.starts_with(p.as_str()) && p.len() > sent {
            p.len()
        } else {
            sent
        };
        out.push(final_text[sent..upto].to_string());
        sent = upto;
    }
    if prefixes.is_empty() && !final_text.is_empty() {
        out.push(final_text.to_string());
    }
    out
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

impl Usage {
    pub fn new(prompt_tokens: usize, completion_tokens: usize) -> Usage {
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AssistantMessage {
    pub role: String,
    pub content: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Choice {
    pub index: usize,
    pub message: AssistantMessage,
    pub finish_reason: String,
    pub logprobs: Option<Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChatCompletion {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<Choice>,
    pub usage: Usage,
}

/// One generated answer, as the door hands it over.
#[derive(Debug, Clone)]
pub struct Generated {
    /// The answer text (stop strings not yet applied).
    pub text: String,
    /// Tokens generated (the end token not counted).
    pub tokens: usize,
    pub ended_by_eos: bool,
    /// The text after each generated token (for streaming).
    pub prefixes: Vec<String>,
}

impl ChatTask {
    /// The completion for `answers` (one per choice) read from a prompt of `prompt_tokens`.
    pub fn completion(
        &self,
        id: &str,
        prompt_tokens: usize,
        answers: &[Generated],
    ) -> ChatCompletion {
        let choices = answers
            .iter()
            .enumerate()
            .map(|(index, g)| {
                let (content, stopped) = apply_stop(&g.text, &self.stop);
                Choice {
                    index,
                    message: AssistantMessage {
                        role: "assistant".into(),
                        content,
                    },
                    finish_reason: finish_reason(g.ended_by_eos, stopped).into(),
                    logprobs: None,
                }
            })
            .collect();
        ChatCompletion {
            id: id.into(),
            object: "chat.completion".into(),
            created: crate::now_unix(),
            model: self.model.clone(),
            choices,
            usage: Usage::new(prompt_tokens, answers.iter().map(|g| g.tokens).sum()),
        }
    }

    /// The stream of chunk bodies (each sent as `data: <json>`; the door sends `data: [DONE]`
    /// after them): a role chunk per choice, one content delta per generated token, a final
    /// chunk with the finish reason, and the usage chunk when `stream_options.include_usage`.
    pub fn chunks(&self, id: &str, prompt_tokens: usize, answers: &[Generated]) -> Vec<Value> {
        let created = crate::now_unix();
        let chunk = |choices: Value, usage: Option<&Usage>| {
            let mut c = serde_json::json!({
                "id": id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": self.model,
                "choices": choices,
            });
            if self.include_usage {
                c["usage"] = serde_json::to_value(usage).unwrap_or(Value::Null);
            }
            c
        };
        let mut out = Vec::new();
        for (index, g) in answers.iter().enumerate() {
            let (content, stopped) = apply_stop(&g.text, &self.stop);
            out.push(chunk(
                serde_json::json!([{"index": index, "delta": {"role": "assistant", "content": ""},
                                     "logprobs": null, "finish_reason": null}]),
                None,
            ));
            // A stop string cuts the stream where it cuts the answer.
            let prefixes: Vec<String> = g
                .prefixes
                .iter()
                .map(|p| apply_stop(p, &self.stop).0)
                .collect();
            for piece in token_deltas(&content, &prefixes) {
                if piece.is_empty() {
                    continue;
                }
                out.push(chunk(
                    serde_json::json!([{"index": index, "delta": {"content": piece},
                                         "logprobs": null, "finish_reason": null}]),
                    None,
                ));
            }
            out.push(chunk(
                serde_json::json!([{"index": index, "delta": {}, "logprobs": null,
                                     "finish_reason": finish_reason(g.ended_by_eos, stopped)}]),
                None,
            ));
        }
        if self.include_usage {
            let usage = Usage::new(prompt_tokens, answers.iter().map(|g| g.tokens).sum());
            out.push(chunk(serde_json::json!([]), Some(&usage)));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(body: Value) -> Result<ChatTask, RequestError> {
        serde_json::from_value::<ChatRequest>(body)
            .expect("parses")
            .task()
    }

    fn image_message(text: Option<&str>) -> Value {
        let mut parts = vec![serde_json::json!({"type": "image_url",
            "image_url": {"url": "data:image/png;base64,AAAA"}})];
        if let Some(t) = text {
            parts.push(serde_json::json!({"type": "text", "text": t}));
        }
        serde_json::json!({"role": "user", "content": parts})
    }

    #[test]
    fn image_alone_captions_and_a_question_asks() {
        let t =
            request(serde_json::json!({"model": "m", "messages": [image_message(None)]})).unwrap();
        assert!(t.question.is_none());
        let t = request(serde_json::json!({"model": "m",
            "messages": [{"role": "system", "content": "be brief"}, image_message(Some(" what color? "))]}))
        .unwrap();
        assert_eq!(t.question.as_deref(), Some("what color?"));
        assert_eq!(t.image.0, "messages[1].content[0].image_url");
    }

    #[test]
    fn refusals_name_the_field() {
        let m = serde_json::json!([image_message(None)]);
        let cases = [
            (
                serde_json::json!({"model": "m", "messages": m, "logprobs": true}),
                "logprobs",
            ),
            (
                serde_json::json!({"model": "m", "messages": m, "tools": [{"type": "function"}]}),
                "tools",
            ),
            (
                serde_json::json!({"model": "m", "messages": m, "frobnicate": 1}),
                "frobnicate",
            ),
            (
                serde_json::json!({"model": "m", "messages": m, "n": 2}),
                "n",
            ),
            (
                serde_json::json!({"model": "m", "messages": m, "n": 9, "temperature": 1.0}),
                "n",
            ),
            (
                serde_json::json!({"model": "m", "messages": m, "temperature": 1.0, "num_beams": 3}),
                "num_beams",
            ),
            (
                serde_json::json!({"model": "m", "messages": m, "temperature": -1.0}),
                "temperature",
            ),
            (
                serde_json::json!({"model": "m", "messages": m, "stop": ["a", ""]}),
                "stop[1]",
            ),
            (
                serde_json::json!({"model": "m", "messages": m, "max_tokens": 0}),
                "max_tokens",
            ),
            (
                serde_json::json!({"model": "m", "messages": []}),
                "messages",
            ),
            (
                serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
                "messages",
            ),
            (
                serde_json::json!({"model": "m", "messages": [image_message(None), image_message(None)]}),
                "messages[1].content[0].image_url",
            ),
            (
                serde_json::json!({"model": "m", "messages": [image_message(None), {"role": "assistant", "content": "x"}]}),
                "messages[1].role",
            ),
        ];
        for (body, field) in cases {
            let e = request(body.clone()).expect_err(&body.to_string());
            assert_eq!(e.field, field, "{body}: {e}");
        }
        // No-op values of unsupported fields are taken (clients send defaults).
        request(
            serde_json::json!({"model": "m", "messages": m, "logprobs": false,
            "frequency_penalty": 0, "presence_penalty": 0.0, "user": "u"}),
        )
        .unwrap();
    }

    #[test]
    fn lengths_count_generated_tokens() {
        let limits = blip_tasks::request::ModelLimits { positions: 512 };
        let t = request(
            serde_json::json!({"model": "m", "messages": [image_message(None)],
            "max_tokens": 3, "temperature": 0}),
        )
        .unwrap();
        let o = t.caption_options(4, limits).unwrap();
        assert_eq!((o.max_length, o.min_length), (7, 5));
        assert!(matches!(o.strategy, blip_tasks::Strategy::Greedy));
        let v = t.vqa_options(limits).unwrap();
        assert_eq!((v.max_length, v.min_length), (4, 1));
        // Unset: BLIP's defaults, as the other doors.
        let t =
            request(serde_json::json!({"model": "m", "messages": [image_message(None)]})).unwrap();
        let o = t.caption_options(4, limits).unwrap();
        let d = CaptionOptions::default();
        assert_eq!(
            (o.max_length, o.min_length, &o.strategy),
            (d.max_length, d.min_length, &d.strategy)
        );
        let e = request(
            serde_json::json!({"model": "m", "messages": [image_message(None)], "max_tokens": 600}),
        )
        .unwrap()
        .caption_options(4, limits)
        .unwrap_err();
        assert_eq!(e.field, "max_tokens");
    }

    #[test]
    fn deltas_join_to_the_answer() {
        let p = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            token_deltas("a red cat", &p(&["a", "a red", "a red cat"])),
            ["a", " red", " cat"]
        );
        // A prefix the final text rewrites ("cat ." → "cat.") sends nothing until it agrees.
        let d = token_deltas("a cat.", &p(&["a", "a cat", "a cat ."]));
        assert_eq!(d.concat(), "a cat.");
        assert_eq!(d.len(), 3);
        let (cut, stopped) = apply_stop("a red cat on a mat", &["on".into()]);
        assert_eq!((cut.as_str(), stopped), ("a red cat ", true));
    }
}
