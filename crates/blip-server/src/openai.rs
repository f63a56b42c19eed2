//! The OpenAI-compatible routes: `/v1/models`, `/v1/chat/completions`, `/v1/embeddings`,
//! `/v1/rerank`. Bodies are read by `blip-openai` into the request layer; the work runs through
//! the same admission and engine jobs as `/v1/caption`, `/v1/vqa`, `/v1/embed` and `/v1/itm`, so
//! the answers are those routes' answers. Errors take OpenAI's shape (`{"error": {...}}`).

use std::sync::Arc;

use axum::extract::{Path as UrlPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use blip_openai::OpenAiError;
use blip_openai::chat::{ChatRequest, Generated};
use blip_openai::embeddings::{EmbeddingsRequest, EmbeddingsTask};
use blip_openai::image::ImageSource;
use blip_openai::rerank::{RerankRequest, RerankTask};
use blip_package::Head;
use blip_preprocess::{BlipTokenizer, FirstToken};
use blip_runtime::CaptionOptions;
use blip_runtime::request::{self, ModelLimits};
use serde_json::Value;

use crate::admission;
use crate::engine::{self, Done, Pixels, VqaMode, Work};
use crate::error::{ApiError, ErrorBody, ErrorParam};
use crate::input::{self, RawImage};
use crate::routes::{St, image_bytes, prepare, stack, text_bytes};
use crate::state::{AppState, Served};

pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/rerank", post(rerank))
}

/// Error responses of these routes in OpenAI's shape: the server's `{"error", "error_type"}`
/// becomes `{"error": {"message", "type", "param", "code"}}`, whoever raised it (a handler, the
/// body reader, the key check).
pub async fn openai_errors(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    if resp.status().as_u16() < 400 {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let bytes =
        match http_body_util::BodyExt::collect(http_body_util::Limited::new(body, 65536)).await {
            Ok(c) => c.to_bytes(),
            Err(_) => Default::default(),
        };
    let Ok(ours) = serde_json::from_slice::<ErrorBody>(&bytes) else {
        return Response::from_parts(parts, axum::body::Body::from(bytes));
    };
    let mut e = OpenAiError::new(parts.status.as_u16(), &ours.error_type, ours.error);
    if let Some(ErrorParam(p)) = parts.extensions.remove::<ErrorParam>() {
        e = e.with_param(p);
    }
    let body = serde_json::to_vec(&e.envelope()).unwrap_or_default();
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(body))
}

/// The model id of each served package: `--served-model-name` in --package order, else the
/// package folder's name.
fn model_ids(state: &AppState) -> Vec<(String, &Served)> {
    state
        .served
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let id = state
                .args
                .served_model_names
                .get(i)
                .cloned()
                .unwrap_or_else(|| {
                    s.package
                        .dir
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_else(|| s.head.name().to_string())
                });
            (id, s)
        })
        .collect()
}

fn model_card(id: &str, served: &Served) -> Value {
    serde_json::json!({
        "id": id,
        "object": "model",
        "created": 0,
        "owned_by": "blip-onnx",
        "blip": {"head": served.head.name(), "precision": served.package.manifest.precision},
    })
}

/// The request's `model` must be one this server serves (as vLLM: 404 otherwise).
fn check_model(state: &AppState, id: &str) -> Result<(), ApiError> {
    let ids = model_ids(state);
    if ids.iter().any(|(m, _)| m == id) {
        return Ok(());
    }
    let known: Vec<&str> = ids.iter().map(|(m, _)| m.as_str()).collect();
    Err(ApiError {
        param: Some("model".into()),
        ..ApiError::not_found(format!(
            "model {id:?} is not served here; GET /v1/models lists {known:?}"
        ))
    })
}

async fn models(State(state): St) -> Json<Value> {
    let data: Vec<Value> = model_ids(&state)
        .iter()
        .map(|(id, s)| model_card(id, s))
        .collect();
    Json(serde_json::json!({"object": "list", "data": data}))
}

async fn model(State(state): St, UrlPath(id): UrlPath<String>) -> Result<Json<Value>, ApiError> {
    model_ids(&state)
        .iter()
        .find(|(m, _)| *m == id)
        .map(|(m, s)| Json(model_card(m, s)))
        .ok_or_else(|| ApiError::not_found(format!("model {id:?} is not served here")))
}

/// The encoded image a request names: decoded inline data, or fetched under the URL rules.
async fn load_image(
    state: &AppState,
    (field, source): &(String, ImageSource),
) -> Result<RawImage, ApiError> {
    match source {
        ImageSource::Data(uri) => input::decode_image(uri, field),
        ImageSource::Url(url) => state.image_urls.fetch(field, url).await,
    }
}

fn completion_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "chatcmpl-{:x}{:06x}",
        blip_openai::now_unix(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A generated sequence as the chat door reports it: `text_of` reads the text of a prefix, asked
/// only when the answer is streamed (one piece per token).
fn generated(
    ids: &[i64],
    prompt_len: usize,
    eos: i64,
    text: String,
    stream: bool,
    text_of: impl Fn(&[i64]) -> Result<String, ApiError>,
) -> Result<Generated, ApiError> {
    let ended_by_eos = ids.len() > prompt_len && ids.last() == Some(&eos);
    let end = ids.len() - usize::from(ended_by_eos);
    let tokens = end.saturating_sub(prompt_len);
    let prefixes = if stream {
        (prompt_len + 1..=end)
            .map(|k| text_of(&ids[..k]))
            .collect::<Result<Vec<_>, _>>()?
    } else {
        Vec::new()
    };
    Ok(Generated {
        text,
        tokens,
        ended_by_eos,
        prefixes,
    })
}

fn token_count(tokenizer: &BlipTokenizer, texts: &[&str], max: Option<usize>) -> usize {
    tokenizer
        .encode_batch(texts, FirstToken::Cls, max)
        .map(|b| (0..texts.len()).map(|r| b.row_len(r)).sum())
        .unwrap_or(0)
}

async fn chat(State(state): St, req: Request) -> Result<Response, ApiError> {
    let (body, _files): (ChatRequest, _) = input::read(req).await?;
    let task = body.task()?;
    check_model(&state, &task.model)?;
    // An image alone is captioned; with a question, answered (the package with that head).
    let head = if task.question.is_some() {
        Head::Vqa
    } else {
        Head::Caption
    };
    let served = state.served(head)?;
    state.check_ready()?;
    let deadline = state.deadline();
    let model = ModelLimits::of(&served.package);
    let eos = served.package.manifest.tokens.eos;
    let tokenizer = &served.tokenizer;
    let raw = load_image(&state, &task.image).await?;
    let n = task.n;
    let (prompt_tokens, answers) = match &task.question {
        None => {
            let prompt = CaptionOptions::default().prompt;
            let prompt_ids = tokenizer
                .prompt_ids(&prompt)
                .map_err(|e| ApiError::validation(format!("prompt: {e}")))?;
            let opts = task.caption_options(prompt_ids.len(), model)?;
            request::check_prompt_tokens(prompt_ids.len(), opts.max_length)?;
            let cost = admission::units(
                "caption",
                n,
                engine::decoder_rows(&opts.strategy),
                opts.max_length,
            );
            let held = n as u64 * image_bytes(&state, head)?;
            let _permit = state.admit(n, head, cost, held)?;
            let mut items = prepare(&state, head, vec![Ok(raw)]).await?;
            let pixels = items.remove(0)?;
            // n choices are n samples of the same image, decoded as one batch.
            let work = Work::Caption {
                pixels: Pixels {
                    data: pixels.repeat(n),
                    n,
                },
                opts: opts.clone(),
                prompt_tokens: prompt_ids.len(),
            };
            let Done::Captions(captions) = state.run(head, work, deadline).await? else {
                return Err(ApiError::validation("no caption came back"));
            };
            let plen = prompt_ids.len();
            let answers = captions
                .iter()
                .map(|c| {
                    generated(&c.ids, plen, eos, c.text.clone(), task.stream, |ids| {
                        blip_runtime::caption_text(tokenizer, ids, plen, &opts.prompt)
                            .map_err(|e| ApiError::validation(e.to_string()))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            (plen, answers)
        }
        Some(question) => {
            let opts = task.vqa_options(model)?;
            let question_tokens = token_count(
                tokenizer,
                &[question.as_str()],
                Some(opts.max_question_tokens),
            );
            let mode = VqaMode::Generate(opts);
            let questions = vec![question.clone(); n];
            let cost = admission::units("vqa", n, mode.decoder_rows(), 0);
            let held = image_bytes(&state, head)? + text_bytes(&questions);
            let _permit = state.admit(n, head, cost, held)?;
            let mut items = prepare(&state, head, vec![Ok(raw)]).await?;
            let pixels = items.remove(0)?;
            let work = Work::Vqa {
                pixels: Pixels { data: pixels, n: 1 },
                questions,
                mode,
            };
            let Done::Answers(found) = state.run(head, work, deadline).await? else {
                return Err(ApiError::validation("no answer came back"));
            };
            // Answers start from the decoder's start token.
            let answers = found
                .iter()
                .map(|a| {
                    generated(&a.ids, 1, eos, a.text.clone(), task.stream, |ids| {
                        tokenizer
                            .decode(ids)
                            .map(|t| t.trim().to_string())
                            .map_err(|e| ApiError::validation(e.to_string()))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            (question_tokens, answers)
        }
    };
    let id = completion_id();
    if !task.stream {
        return Ok(Json(task.completion(&id, prompt_tokens, &answers)).into_response());
    }
    // Server-sent events: one delta per generated token, then `[DONE]`. The pieces are sent once
    // the engine has decoded the answer (decoding runs batched on the engine thread).
    let mut sse = String::new();
    for chunk in task.chunks(&id, prompt_tokens, &answers) {
        sse.push_str("data: ");
        sse.push_str(&chunk.to_string());
        sse.push_str("\n\n");
    }
    sse.push_str("data: [DONE]\n\n");
    let mut resp = (StatusCode::OK, sse).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(resp)
}

/// Loads and preprocesses every image of a request; the first that fails fails the request
/// (OpenAI's routes have no per-item errors), naming its field.
async fn all_pixels(
    state: &AppState,
    head: Head,
    images: &[(String, ImageSource)],
) -> Result<Vec<Vec<f32>>, ApiError> {
    let mut raws = Vec::with_capacity(images.len());
    for image in images {
        raws.push(Ok(load_image(state, image).await?));
    }
    prepare(state, head, raws).await?.into_iter().collect()
}

async fn embeddings(State(state): St, req: Request) -> Result<Json<Value>, ApiError> {
    let (body, _files): (EmbeddingsRequest, _) = input::read(req).await?;
    check_model(&state, &body.model)?;
    let head = Head::Retrieval;
    let served = state.served(head)?;
    let width = blip_index::image_embedding_width(&served.package)
        .map_err(|e| ApiError::validation(e.to_string()))?;
    let task = body.task(width)?;
    state.check_ready()?;
    let deadline = state.deadline();
    let (vectors, tokens): (Vec<Vec<f32>>, usize) = match task {
        EmbeddingsTask::Texts(texts) => {
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            let tokens = token_count(
                &served.tokenizer,
                &refs,
                Some(served.package.manifest.tokens.max_text_tokens),
            );
            let cost = admission::units("embed_texts", texts.len(), 0, 0);
            let _permit = state.admit(texts.len(), head, cost, text_bytes(&texts))?;
            let Done::TextEmbeds(e) = state
                .run(head, Work::EmbedTexts { texts }, deadline)
                .await?
            else {
                return Err(ApiError::validation("no embeddings came back"));
            };
            (e.rows().into_iter().map(|r| r.to_vec()).collect(), tokens)
        }
        EmbeddingsTask::Images(images) => {
            let n = images.len();
            let cost = admission::units("embed_images", n, 0, 0);
            let _permit = state.admit(n, head, cost, n as u64 * image_bytes(&state, head)?)?;
            let (pixels, _slots) = stack(
                all_pixels(&state, head, &images)
                    .await?
                    .into_iter()
                    .map(Ok)
                    .collect(),
            );
            let Done::ImageEmbeds { embeds, .. } = state
                .run(head, Work::EmbedImages { pixels }, deadline)
                .await?
            else {
                return Err(ApiError::validation("no embeddings came back"));
            };
            let embeds = blip_runtime::one_vector_per_image(embeds)
                .map_err(|e| ApiError::validation(e.to_string()))?;
            (embeds.rows().into_iter().map(|r| r.to_vec()).collect(), 0)
        }
    };
    let response = body.response(&vectors, tokens);
    serde_json::to_value(response)
        .map(Json)
        .map_err(|e| ApiError::validation(e.to_string()))
}

async fn rerank(State(state): St, req: Request) -> Result<Json<Value>, ApiError> {
    let (body, _files): (RerankRequest, _) = input::read(req).await?;
    check_model(&state, &body.model)?;
    let head = Head::Retrieval;
    let served = state.served(head)?;
    let task = body.task()?;
    state.check_ready()?;
    let deadline = state.deadline();
    let max_tokens = Some(served.package.manifest.tokens.max_text_tokens);
    let (scores, tokens) = match task {
        RerankTask::ImageQuery { image, texts } => {
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            let tokens = token_count(&served.tokenizer, &refs, max_tokens);
            let cost = admission::units("itm", texts.len(), 0, 0);
            let held = image_bytes(&state, head)? + text_bytes(&texts);
            let _permit = state.admit(1, head, cost, held)?;
            let pixels = all_pixels(&state, head, &[image]).await?.remove(0);
            let work = Work::Itm {
                pixels: Pixels { data: pixels, n: 1 },
                texts,
            };
            let Done::Itm(scores) = state.run(head, work, deadline).await? else {
                return Err(ApiError::validation("no ITM scores came back"));
            };
            (scores.iter().map(|s| s.match_probability).collect(), tokens)
        }
        RerankTask::TextQuery { text, images } => {
            let n = images.len();
            let tokens = token_count(&served.tokenizer, &[text.as_str()], max_tokens);
            let cost = admission::units("itm", n, 0, 0);
            let held = n as u64 * image_bytes(&state, head)? + text.len() as u64;
            let _permit = state.admit(n, head, cost, held)?;
            let mut scores = Vec::with_capacity(n);
            for pixels in all_pixels(&state, head, &images).await? {
                let work = Work::Itm {
                    pixels: Pixels { data: pixels, n: 1 },
                    texts: vec![text.clone()],
                };
                let Done::Itm(s) = state.run(head, work, deadline).await? else {
                    return Err(ApiError::validation("no ITM scores came back"));
                };
                scores.push(s.first().map_or(0.0, |s| s.match_probability));
            }
            (scores, tokens)
        }
    };
    serde_json::to_value(body.response(&scores, tokens))
        .map(Json)
        .map_err(|e| ApiError::validation(e.to_string()))
}
