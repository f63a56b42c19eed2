//! The HTTP routes (axum) and the OpenAPI document (utoipa) generated from them.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Path as UrlPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use base64::Engine as _;
use blip_index::Stamp;
use blip_package::Head;
use blip_runtime::CaptionOptions;
use blip_runtime::request::{self, limits};
use utoipa::OpenApi;

use crate::admission;
use crate::api::*;
use crate::config::ServeArgs;
use crate::engine::{self, Done, Pixels, VqaMode, Work};
use crate::error::{ApiError, ErrorBody, ItemError, TaskErrors};
use crate::input::{self, RawImage};
use crate::metrics as m;
use crate::state::AppState;

pub(crate) type AppResult<T> = Result<Json<T>, ApiError>;
pub(crate) type St = State<Arc<AppState>>;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "blip-onnx serve",
        description = "BLIP captioning, ITC embeddings, image-text matching, VQA and indexed text-to-image search over ONNX Runtime. Request bodies are JSON (images as base64 or data URIs) or multipart/form-data (images as file parts, other fields as form fields). Errors are always {\"error\", \"error_type\"}."
    ),
    paths(
        caption, embed, itm, vqa, search, get_image, index_add, index_delete, live, ready, info,
        metrics_text, crate::tag::tag
    ),
    components(schemas(ErrorBody, ItemError)),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The OpenAPI document, as committed in docs/openapi.json.
pub fn openapi_json() -> String {
    let mut doc = ApiDoc::openapi();
    // The version is the crate's, not utoipa's default.
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    doc.to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
        + "\n"
}

const PAGE_HTML: &str = include_str!("../assets/index.html");
const PAGE_JS: &str = include_str!("../assets/app.js");
const PAGE_CSS: &str = include_str!("../assets/style.css");

pub fn router(state: Arc<AppState>, args: &ServeArgs) -> Router {
    let v1 = Router::new()
        .route("/v1/caption", post(caption))
        .route("/v1/embed", post(embed))
        .route("/v1/itm", post(itm))
        .route("/v1/vqa", post(vqa))
        .route("/v1/tag", post(crate::tag::tag))
        .route("/v1/search", post(search))
        .route("/v1/images/{id}", get(get_image))
        .route("/v1/index", post(index_add))
        .route("/v1/index/{id}", delete(index_delete))
        .route_layer(middleware::from_fn_with_state(state.clone(), read_body))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    // OpenAI's dialect beside ours: the same body bounds and key; errors in OpenAI's shape.
    let openai = crate::openai::router()
        .route_layer(middleware::from_fn_with_state(state.clone(), read_body))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth))
        .route_layer(middleware::from_fn(crate::openai::openai_errors));
    // Swagger UI (vendored assets) reading our /openapi.json; no validator badge from outside.
    let docs = utoipa_swagger_ui::SwaggerUi::new("/docs")
        .config(utoipa_swagger_ui::Config::from("/openapi.json").validator_url("none"));
    let mut app = Router::new()
        .merge(v1)
        .merge(openai)
        .merge(docs)
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/info", get(info))
        .route("/metrics", get(metrics_text))
        .route("/openapi.json", get(openapi))
        .route("/", get(|| async { Html(PAGE_HTML) }))
        .route(
            "/app.js",
            get(|| async { ([(header::CONTENT_TYPE, "text/javascript")], PAGE_JS) }),
        )
        .route(
            "/style.css",
            get(|| async { ([(header::CONTENT_TYPE, "text/css")], PAGE_CSS) }),
        )
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(axum::extract::DefaultBodyLimit::max(args.payload_limit))
        .layer(middleware::from_fn(json_errors))
        .layer(middleware::from_fn(count_requests))
        .with_state(state);
    if let Some(origin) = &args.cors_origin {
        use tower_http::cors::{AllowOrigin, Any, CorsLayer};
        let allow = if origin == "*" {
            AllowOrigin::any()
        } else {
            match HeaderValue::from_str(origin) {
                Ok(v) => AllowOrigin::exact(v),
                Err(_) => AllowOrigin::list([]),
            }
        };
        app = app.layer(
            CorsLayer::new()
                .allow_origin(allow)
                .allow_methods([Method::GET, Method::POST, Method::DELETE])
                .allow_headers(Any),
        );
    }
    app
}

/// `blip_request_count{route,status}` and the request duration.
async fn count_requests(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let start = Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::counter!(m::REQUEST_COUNT, "route" => route.clone(), "status" => status).increment(1);
    metrics::histogram!(m::REQUEST_DURATION, "route" => route)
        .record(start.elapsed().as_secs_f64());
    resp
}

/// Reads a request's whole body before its handler runs, so that every bound on it is applied in
/// one place: a `Content-Encoding` other than identity is refused (415, naming it), a declared
/// `Content-Length` over --payload-limit is refused before any byte is read (413), a body that does
/// not arrive within --body-read-timeout is answered 408, and one that grows past the limit 413.
pub(crate) async fn read_body(State(state): St, req: Request, next: Next) -> Response {
    let limit = state.args.payload_limit;
    if let Some(encoding) = req.headers().get(header::CONTENT_ENCODING) {
        let encoding = String::from_utf8_lossy(encoding.as_bytes())
            .trim()
            .to_string();
        if !encoding.eq_ignore_ascii_case("identity") {
            return ApiError::unsupported_media(format!(
                "Content-Encoding {encoding:?} is not taken: send the body uncompressed"
            ))
            .into_response();
        }
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if let Some(n) = declared
        && n > limit as u64
    {
        return ApiError::too_large(format!(
            "the body declares {n} bytes; at most {limit} (--payload-limit)"
        ))
        .into_response();
    }
    let (parts, body) = req.into_parts();
    let limited = http_body_util::Limited::new(body, limit);
    let read = http_body_util::BodyExt::collect(limited);
    let bytes = match tokio::time::timeout(state.args.body_read_timeout(), read).await {
        Err(_) => return ApiError::body_timeout(state.args.body_read_timeout).into_response(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return ApiError::too_large(format!(
                "the body is over {limit} bytes (--payload-limit)"
            ))
            .into_response();
        }
        Ok(Err(e)) => {
            return ApiError::bad_request(format!("reading the body: {e}")).into_response();
        }
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
        .await
}

/// Every error answers `{"error", "error_type"}`: responses of status 400 and above that are not
/// JSON already (axum's path and body rejections, the router's own) are rewritten in that shape,
/// their text kept as the message.
async fn json_errors(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("application/json"));
    if status.as_u16() < 400 || is_json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text =
        match http_body_util::BodyExt::collect(http_body_util::Limited::new(body, 4096)).await {
            Ok(c) => String::from_utf8_lossy(&c.to_bytes()).trim().to_string(),
            Err(_) => String::new(),
        };
    let message = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("request refused")
            .to_string()
    } else {
        text
    };
    let mut fixed = ApiError::with_status(status, message).into_response();
    for name in [header::RETRY_AFTER, header::WWW_AUTHENTICATE, header::ALLOW] {
        if let Some(v) = parts.headers.get(&name) {
            fixed.headers_mut().insert(name, v.clone());
        }
    }
    fixed
}

/// Bearer key on /v1/* when --api-key is set (compared in constant time).
pub(crate) async fn auth(State(state): St, req: Request, next: Next) -> Response {
    if let Some(key) = &state.args.api_key {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token)
            .unwrap_or("");
        let same = given.len() == key.len()
            && given
                .bytes()
                .zip(key.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        if !same {
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(req).await
}

/// The token of an `Authorization: Bearer <token>` value; the scheme is case-insensitive
/// (RFC 9110 §11.1), so `bearer` and `BEARER` are taken too.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_start())
}

/// Checks and preprocesses a request's images for `head`: per image its pixels or its error.
pub(crate) async fn prepare(
    state: &AppState,
    head: Head,
    images: Vec<Result<RawImage, ApiError>>,
) -> Result<Vec<Result<Vec<f32>, ApiError>>, ApiError> {
    let pre = state.served(head)?.preprocessor.clone();
    Ok(input::preprocess(pre, head.name(), images).await)
}

/// The pixels of the images that decoded, laid end to end, and per image its slot or error.
pub(crate) fn stack(
    items: Vec<Result<Vec<f32>, ApiError>>,
) -> (Pixels, Vec<Result<usize, ApiError>>) {
    let mut data = Vec::new();
    let mut n = 0;
    let slots = items
        .into_iter()
        .map(|r| {
            r.map(|p| {
                data.extend_from_slice(&p);
                n += 1;
                n - 1
            })
        })
        .collect();
    (Pixels { data, n }, slots)
}

/// One image of a single-image route, or the error of that image as the response.
fn single_image(
    field: &str,
    encoded: Option<&String>,
    files: Vec<RawImage>,
) -> Result<RawImage, ApiError> {
    let mut all = input::gather(
        field,
        encoded.map(std::slice::from_ref).unwrap_or(&[]),
        files,
    );
    match all.len() {
        0 => Err(ApiError::empty(format!(
            "no image: give `{field}` (base64) or upload a file"
        ))),
        1 => all.remove(0),
        k => Err(ApiError::validation(format!(
            "{k} images given; this route takes one `{field}`"
        ))),
    }
}

/// Input bytes an image of `head`'s package holds while its request is in flight.
pub(crate) fn image_bytes(state: &AppState, head: Head) -> Result<u64, ApiError> {
    let size = state.served(head)?.package.manifest.preprocess.image_size;
    Ok(admission::input_bytes_per_image(size))
}

pub(crate) fn text_bytes(texts: &[String]) -> u64 {
    texts.iter().map(|t| t.len() as u64).sum()
}

/// The request layer's rule for a list of texts (count, blank items, bytes per text).
fn texts_check(field: &str, texts: &[String], max: usize) -> Result<(), ApiError> {
    request::check_texts(field, texts, max).map_err(ApiError::from)
}

/// A request-layer error as the API answers it: 400 `empty_input` when the request gives nothing to
/// work on (no questions, no texts, a blank query), else 422 `validation`; both name the field.
fn request_error(e: request::RequestError, nothing_given: bool) -> ApiError {
    if nothing_given {
        ApiError {
            param: Some(e.field.clone()),
            ..ApiError::empty(e.to_string())
        }
    } else {
        e.into()
    }
}

/// Decoding settings from a request, resolved by the request layer (defaults and rules there).
/// Decoding settings, and the prompt's token count.
fn caption_options(r: &CaptionBody, state: &AppState) -> Result<(CaptionOptions, usize), ApiError> {
    let model = request::ModelLimits::of(&state.served(Head::Caption)?.package);
    let options = request::CaptionRequest {
        prompt: r.prompt.clone(),
        beams: r.beams,
        sample: r.sample,
        top_p: r.top_p,
        top_k: r.top_k,
        temperature: r.temperature,
        seed: r.seed,
        max_length: r.max_length,
        min_length: r.min_length,
        length_penalty: r.length_penalty,
        repetition_penalty: r.repetition_penalty,
    }
    .resolve(model)?;
    // The prompt's tokens must leave room for the caption: refused here, before any graph runs.
    let prompt_tokens = state
        .served(Head::Caption)?
        .tokenizer
        .prompt_ids(&options.prompt)
        .map_err(|e| ApiError::validation(format!("prompt: {e}")))?
        .len();
    request::check_prompt_tokens(prompt_tokens, options.max_length)?;
    Ok((options, prompt_tokens))
}

#[utoipa::path(post, path = "/v1/caption", tag = "tasks",
    request_body(content(
        (CaptionBody = "application/json"),
        (CaptionBody = "multipart/form-data")
    )),
    responses(
        (status = 200, body = CaptionResponse, description = "One result per image; a bad image is a per-item error"),
        TaskErrors
    ),
    security((), ("bearer" = [])))]
async fn caption(State(state): St, req: Request) -> AppResult<CaptionResponse> {
    state.served(Head::Caption)?;
    state.check_ready()?;
    let deadline = state.deadline();
    let (body, files): (CaptionBody, _) = input::read(req).await?;
    let (opts, prompt_tokens) = caption_options(&body, &state)?;
    let images = input::gather("images", &body.images, files);
    if images.is_empty() {
        return Err(ApiError::empty(
            "no images: give `images` (base64) or upload files",
        ));
    }
    let cost = admission::units(
        "caption",
        images.len(),
        engine::decoder_rows(&opts.strategy),
        opts.max_length,
    );
    let held = images.len() as u64 * image_bytes(&state, Head::Caption)?;
    let _permit = state.admit(images.len(), Head::Caption, cost, held)?;
    let single = images.len() == 1;
    let items = prepare(&state, Head::Caption, images).await?;
    let (pixels, slots) = stack(items);
    let captions = if pixels.n > 0 {
        match state
            .run(
                Head::Caption,
                Work::Caption {
                    pixels,
                    opts,
                    prompt_tokens,
                },
                deadline,
            )
            .await?
        {
            Done::Captions(c) => c,
            _ => Vec::new(),
        }
    } else {
        Vec::new()
    };
    let mut results = Vec::with_capacity(slots.len());
    for slot in slots {
        results.push(
            match slot.and_then(|i| {
                captions
                    .get(i)
                    .cloned()
                    .ok_or_else(|| ApiError::validation("no caption came back"))
            }) {
                Ok(c) => CaptionItem::Ok(CaptionOk {
                    caption: c.text,
                    tokens: c.ids,
                    score: c.score,
                }),
                Err(e) if single => return Err(e),
                Err(e) => CaptionItem::Err((&e).into()),
            },
        );
    }
    Ok(Json(CaptionResponse { results }))
}

fn encode_embedding(v: &[f32], encoding: Encoding) -> Embedding {
    match encoding {
        Encoding::Float => Embedding::Float(v.to_vec()),
        Encoding::Base64 => {
            let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            Embedding::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
        }
    }
}

#[utoipa::path(post, path = "/v1/embed", tag = "tasks",
    request_body(content(
        (EmbedBody = "application/json"),
        (EmbedBody = "multipart/form-data")
    )),
    responses(
        (status = 200, body = EmbedResponse, description = "ITC embeddings (L2-normalised), images then texts"),
        TaskErrors
    ),
    security((), ("bearer" = [])))]
async fn embed(State(state): St, req: Request) -> AppResult<EmbedResponse> {
    let served = state.served(Head::Retrieval)?;
    let dim = blip_index::image_embedding_width(&served.package)
        .map_err(|e| ApiError::validation(e.to_string()))?;
    state.check_ready()?;
    let deadline = state.deadline();
    let (body, files): (EmbedBody, _) = input::read(req).await?;
    let encoding = body.encoding.unwrap_or_default();
    let images = input::gather("images", &body.images, files);
    if images.is_empty() && body.texts.is_empty() {
        return Err(ApiError::empty("give `images` and/or `texts`"));
    }
    if !body.texts.is_empty() {
        texts_check("texts", &body.texts, limits::MAX_TEXTS)?;
    }
    let single = images.len() == 1 && body.texts.is_empty();
    let cost = if images.is_empty() {
        admission::units("embed_texts", body.texts.len(), 0, 0)
    } else {
        admission::units("embed_images", images.len(), 0, 0)
    };
    let held =
        images.len() as u64 * image_bytes(&state, Head::Retrieval)? + text_bytes(&body.texts);
    let _permit = state.admit(
        images.len() + usize::from(!body.texts.is_empty()),
        Head::Retrieval,
        cost,
        held,
    )?;
    let items = prepare(&state, Head::Retrieval, images).await?;
    let (pixels, slots) = stack(items);
    let image_job = async {
        if pixels.n == 0 {
            return Ok::<_, ApiError>(None);
        }
        match state
            .run(Head::Retrieval, Work::EmbedImages { pixels }, deadline)
            .await?
        {
            Done::ImageEmbeds { embeds, .. } => blip_runtime::one_vector_per_image(embeds)
                .map(Some)
                .map_err(|e| ApiError::validation(e.to_string())),
            _ => Ok(None),
        }
    };
    let text_job = async {
        if body.texts.is_empty() {
            return Ok(None);
        }
        let texts = body.texts.clone();
        match state
            .run(Head::Retrieval, Work::EmbedTexts { texts }, deadline)
            .await?
        {
            Done::TextEmbeds(e) => Ok::<_, ApiError>(Some(e)),
            _ => Ok(None),
        }
    };
    let (image_embeds, text_embeds) = tokio::join!(image_job, text_job);
    let (image_embeds, text_embeds) = (image_embeds?, text_embeds?);
    let mut out_images = Vec::with_capacity(slots.len());
    for slot in slots {
        let row = slot.and_then(|i| {
            image_embeds
                .as_ref()
                .map(|e| e.row(i).to_vec())
                .ok_or_else(|| ApiError::validation("no embedding came back"))
        });
        out_images.push(match row {
            Ok(v) => EmbedItem::Ok(EmbeddingOk {
                embedding: encode_embedding(&v, encoding),
            }),
            Err(e) if single => return Err(e),
            Err(e) => EmbedItem::Err((&e).into()),
        });
    }
    let out_texts = text_embeds
        .map(|e| {
            e.rows()
                .into_iter()
                .map(|r| {
                    EmbedItem::Ok(EmbeddingOk {
                        embedding: encode_embedding(&r.to_vec(), encoding),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Json(EmbedResponse {
        images: out_images,
        texts: out_texts,
        dim,
    }))
}

#[utoipa::path(post, path = "/v1/itm", tag = "tasks",
    request_body(content(
        (ItmBody = "application/json"),
        (ItmBody = "multipart/form-data")
    )),
    responses(
        (status = 200, body = ItmResponse, description = "Match probability and ITC similarity per text"),
        TaskErrors
    ),
    security((), ("bearer" = [])))]
async fn itm(State(state): St, req: Request) -> AppResult<ItmResponse> {
    state.served(Head::Retrieval)?;
    state.check_ready()?;
    let deadline = state.deadline();
    let (body, files): (ItmBody, _) = input::read(req).await?;
    let image = single_image("image", body.image.as_ref(), files)?;
    request::check_texts("texts", &body.texts, limits::MAX_TEXTS)
        .map_err(|e| request_error(e, body.texts.is_empty()))?;
    let cost = admission::units("itm", body.texts.len(), 0, 0);
    let held = image_bytes(&state, Head::Retrieval)? + text_bytes(&body.texts);
    let _permit = state.admit(1, Head::Retrieval, cost, held)?;
    let mut items = prepare(&state, Head::Retrieval, vec![Ok(image)]).await?;
    let pixels = items.remove(0)?;
    let work = Work::Itm {
        pixels: Pixels { data: pixels, n: 1 },
        texts: body.texts.clone(),
    };
    let Done::Itm(scores) = state.run(Head::Retrieval, work, deadline).await? else {
        return Err(ApiError::validation("no ITM result came back"));
    };
    let results = body
        .texts
        .iter()
        .zip(scores)
        .map(|(t, s)| ItmItem {
            text: t.clone(),
            match_probability: s.match_probability,
            itm_logits: s.logits,
            itc_similarity: s.itc,
        })
        .collect();
    Ok(Json(ItmResponse { results }))
}

#[utoipa::path(post, path = "/v1/vqa", tag = "tasks",
    request_body(content(
        (VqaBody = "application/json"),
        (VqaBody = "multipart/form-data")
    )),
    responses(
        (status = 200, body = VqaResponse, description = "One answer per question"),
        TaskErrors
    ),
    security((), ("bearer" = [])))]
async fn vqa(State(state): St, req: Request) -> AppResult<VqaResponse> {
    let served = state.served(Head::Vqa)?;
    let positions = served.package.manifest.model.max_position_embeddings;
    state.check_ready()?;
    let deadline = state.deadline();
    let (body, files): (VqaBody, _) = input::read(req).await?;
    let image = single_image("image", body.image.as_ref(), files)?;
    let mode = request::VqaRequest {
        questions: body.questions.clone(),
        answers: body.answers.clone(),
        k: body.k,
        mask_question_padding: body.mask_question_padding,
    }
    .resolve()
    .map_err(|e| request_error(e, body.questions.is_empty()))?;
    if let VqaMode::Rank { answers, .. } = &mode {
        for (i, a) in answers.iter().enumerate() {
            // Answer tokens run through the decoder: longer ones would pass its positions.
            let tokens = served
                .tokenizer
                .encode_batch(&[a.as_str()], blip_preprocess::FirstToken::Dec, None)
                .map(|b| b.row_len(0))
                .map_err(|e| ApiError::validation(format!("answers[{i}]: {e}")))?;
            if tokens > positions {
                return Err(ApiError::validation(format!(
                    "answers[{i}]: {tokens} tokens, over the decoder's {positions} positions"
                )));
            }
        }
    }
    let cost = admission::units("vqa", body.questions.len(), mode.decoder_rows(), 0);
    let held = image_bytes(&state, Head::Vqa)?
        + text_bytes(&body.questions)
        + body.answers.as_deref().map_or(0, text_bytes);
    let _permit = state.admit(body.questions.len(), Head::Vqa, cost, held)?;
    let mut items = prepare(&state, Head::Vqa, vec![Ok(image)]).await?;
    let pixels = items.remove(0)?;
    let work = Work::Vqa {
        pixels: Pixels { data: pixels, n: 1 },
        questions: body.questions.clone(),
        mode,
    };
    let results = match state.run(Head::Vqa, work, deadline).await? {
        Done::Answers(a) => body
            .questions
            .iter()
            .zip(a)
            .map(|(q, a)| VqaResult {
                question: q.clone(),
                answer: a.text,
                candidates: None,
            })
            .collect(),
        Done::Ranked(r) => {
            let list = body.answers.clone().unwrap_or_default();
            let name = |i: usize| list.get(i).cloned().unwrap_or_default();
            body.questions
                .iter()
                .zip(r)
                .map(|(q, r)| VqaResult {
                    question: q.clone(),
                    answer: name(r.best),
                    candidates: Some(
                        r.candidates
                            .iter()
                            .map(|(i, s)| RankedAnswer {
                                answer: name(*i),
                                score: *s,
                            })
                            .collect(),
                    ),
                })
                .collect()
        }
        _ => Vec::new(),
    };
    Ok(Json(VqaResponse { results }))
}

#[utoipa::path(post, path = "/v1/search", tag = "index",
    request_body(content((SearchBody = "application/json"), (SearchBody = "multipart/form-data"))),
    responses(
        (status = 200, body = SearchResponse, description = "Hits, best first"),
        TaskErrors
    ),
    security((), ("bearer" = [])))]
async fn search(State(state): St, req: Request) -> AppResult<SearchResponse> {
    state.served(Head::Retrieval)?;
    let store = state.index()?;
    state.check_ready()?;
    let deadline = state.deadline();
    let (body, _files): (SearchBody, _) = input::read(req).await?;
    let request::SearchOptions { k, rerank } = request::SearchRequest {
        text: body.text.clone(),
        k: body.k,
        rerank: body.rerank,
    }
    .resolve()
    .map_err(|e| request_error(e, body.text.trim().is_empty()))?;
    let to_api = |e: blip_index::IndexError| ApiError::not_ready(format!("reading the index: {e}"));
    if store.store.is_empty().map_err(to_api)? {
        return Ok(Json(SearchResponse {
            hits: Vec::new(),
            images: 0,
        }));
    }
    let cost = admission::units("search", 1, rerank, 0);
    let _permit = state.admit(1, Head::Retrieval, cost, body.text.len() as u64)?;
    let work = Work::Search {
        text: body.text.clone(),
        rerank,
        k,
        store: store.store.clone(),
    };
    let Done::Hits(ranked) = state.run(Head::Retrieval, work, deadline).await? else {
        return Err(ApiError::validation("no hits came back"));
    };
    let hits = ranked
        .hits
        .iter()
        .take(k)
        .enumerate()
        .filter_map(|(rank, h)| {
            let e = ranked.entries.get(h.index)?;
            Some(SearchHit {
                rank: rank + 1,
                id: e.id.clone(),
                score: h.score,
                itc: h.itc,
                itm: h.itm,
                metadata: e.metadata.clone(),
                image_url: format!("/v1/images/{}", url_escape(&e.id)),
            })
        })
        .collect();
    Ok(Json(SearchResponse {
        hits,
        images: store.store.len().map_err(to_api)?,
    }))
}

fn url_escape(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[utoipa::path(get, path = "/v1/images/{id}", tag = "index",
    params(("id" = String, Path, description = "Image id in the index")),
    responses(
        (status = 200, description = "The image file", content_type = "image/*"),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)
    ),
    security((), ("bearer" = [])))]
async fn get_image(State(state): St, UrlPath(id): UrlPath<String>) -> Result<Response, ApiError> {
    let store = state.index()?;
    // Only files the index names are ever read, never a path from the request.
    let entry = store
        .store
        .get(&id)
        .map_err(|e| ApiError::not_ready(format!("reading the index: {e}")))?
        .ok_or_else(|| ApiError::not_found(format!("no image with id {id:?} in the index")))?;
    let bytes = tokio::fs::read(&entry.path).await.map_err(|e| {
        ApiError::not_found(format!("the file of image {id:?} cannot be read: {e}"))
    })?;
    let ctype =
        input::image_extension(&bytes).map_or("application/octet-stream", input::content_type);
    Ok(([(header::CONTENT_TYPE, ctype)], bytes).into_response())
}

/// An image to add: id, metadata, and its embedding row and bytes (or its error).
type Planned = (
    String,
    Option<serde_json::Value>,
    Result<(usize, Vec<u8>), ApiError>,
);

#[utoipa::path(post, path = "/v1/index", tag = "index",
    request_body(content((IndexAddRequest = "application/json"), (IndexAddRequest = "multipart/form-data"))),
    responses(
        (status = 200, body = IndexAddResponse, description = "Per image: added, or its error; the index is written atomically"),
        TaskErrors
    ),
    security((), ("bearer" = [])))]
async fn index_add(State(state): St, req: Request) -> AppResult<IndexAddResponse> {
    state.served(Head::Retrieval)?;
    let store = state.index()?;
    state.check_ready()?;
    let deadline = state.deadline();
    let ctype_multipart = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("multipart/"));
    let (ids, metas, images): (Vec<String>, Vec<Option<serde_json::Value>>, Vec<_>) =
        if ctype_multipart {
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Form {
                id: Option<String>,
                metadata: Option<serde_json::Value>,
            }
            let (form, files): (Form, _) = input::read(req).await?;
            if form.id.is_some() && files.len() != 1 {
                return Err(ApiError::validation(
                    "`id` names one image; upload one file with it, or leave it out (ids are the file names)",
                ));
            }
            let ids = files
                .iter()
                .map(|f| form.id.clone().unwrap_or_else(|| f.name.clone()))
                .collect();
            let metas = files.iter().map(|_| form.metadata.clone()).collect();
            (ids, metas, files.into_iter().map(Ok).collect())
        } else {
            let (body, _): (IndexAddRequest, _) = input::read(req).await?;
            let ids = body.images.iter().map(|i| i.id.clone()).collect();
            let metas = body.images.iter().map(|i| i.metadata.clone()).collect();
            let images = body
                .images
                .iter()
                .enumerate()
                .map(|(i, img)| input::decode_image(&img.image, &format!("images[{i}].image")))
                .collect();
            (ids, metas, images)
        };
    if ids.is_empty() {
        return Err(ApiError::empty("no images to add"));
    }
    let cost = admission::units("embed_images", ids.len(), 0, 0);
    let held = ids.len() as u64 * image_bytes(&state, Head::Retrieval)?;
    let _permit = state.admit(ids.len(), Head::Retrieval, cost, held)?;
    let current = store.store.clone();
    // Per image: refuse bad or repeated ids before any work.
    let mut checked: Vec<Result<RawImage, ApiError>> = Vec::with_capacity(ids.len());
    for (i, (id, img)) in ids.iter().zip(images).enumerate() {
        let dup = ids[..i].contains(id) || current.contains(id).unwrap_or(false);
        checked.push(if id.trim().is_empty() || id.len() > 256 {
            Err(ApiError::validation(format!(
                "images[{i}]: id must be 1 to 256 bytes"
            )))
        } else if dup {
            Err(ApiError::validation(format!(
                "images[{i}]: id {id:?} is already in the index"
            )))
        } else {
            img
        });
    }
    let raw: Vec<Option<Vec<u8>>> = checked
        .iter()
        .map(|r| r.as_ref().ok().map(|i| i.bytes.clone()))
        .collect();
    let items = prepare(&state, Head::Retrieval, checked).await?;
    let (pixels, slots) = stack(items);
    let (embeds, hidden) = if pixels.n > 0 {
        match state
            .run(Head::Retrieval, Work::EmbedImages { pixels }, deadline)
            .await?
        {
            Done::ImageEmbeds { embeds, hidden } => (Some(embeds), Some(hidden)),
            _ => (None, None),
        }
    } else {
        (None, None)
    };
    let db = store.store.clone();
    let plan: Vec<Planned> = ids
        .into_iter()
        .zip(metas)
        .zip(slots.into_iter().zip(raw))
        .map(|((id, meta), (slot, bytes))| (id, meta, slot.map(|s| (s, bytes.unwrap_or_default()))))
        .collect();
    let written = tokio::task::spawn_blocking(move || {
        let to_api = |e: blip_index::IndexError| ApiError::validation(e.to_string());
        // All of them added in one transaction with their image files (stored by the index
        // under its writer lock); the store refuses an id added meanwhile by another request
        // (nothing of that image is added).
        let mut results: Vec<Option<IndexAddResult>> = Vec::new();
        let mut batch = Vec::new();
        for (id, metadata, slot) in plan {
            let prepared = slot.and_then(|(row, bytes)| {
                let (Some(e), Some(h)) = (embeds.as_ref(), hidden.as_ref()) else {
                    return Err(ApiError::validation("no embedding came back"));
                };
                let extension = input::image_extension(&bytes).unwrap_or("bin").to_string();
                let states: Vec<f32> = h
                    .index_axis(ndarray::Axis(0), row)
                    .iter()
                    .copied()
                    .collect();
                Ok(blip_index::Upload {
                    entry: blip_index::NewEntry {
                        id: id.clone(),
                        // The stored file's, set by `add_uploads`.
                        path: std::path::PathBuf::new(),
                        stamp: Stamp {
                            size: 0,
                            mtime_ns: 0,
                        },
                        metadata,
                        // Every vector of the image (BLIP-2: one per query); the
                        // store scores an entry by its best.
                        vectors: e
                            .index_axis(ndarray::Axis(0), row)
                            .iter()
                            .copied()
                            .collect(),
                        states: Some(states),
                    },
                    bytes,
                    extension,
                })
            });
            match prepared {
                Ok(entry) => {
                    batch.push(entry);
                    results.push(None);
                }
                Err(e) => results.push(Some(IndexAddResult {
                    id,
                    added: false,
                    error: Some((&e).into()),
                })),
            }
        }
        let ids: Vec<String> = batch.iter().map(|u| u.entry.id.clone()).collect();
        let outcomes = if batch.is_empty() {
            Vec::new()
        } else {
            db.add_uploads(batch)?
        };
        let mut done = ids.into_iter().zip(outcomes);
        let results: Vec<IndexAddResult> = results
            .into_iter()
            .filter_map(|r| match r {
                Some(r) => Some(r),
                None => done.next().map(|(id, outcome)| match outcome {
                    Ok(()) => IndexAddResult {
                        id,
                        added: true,
                        error: None,
                    },
                    Err(e) => {
                        let e = match e {
                            blip_index::IndexError::DuplicateId(id) => {
                                ApiError::validation(format!("id {id:?} is already in the index"))
                            }
                            other => to_api(other),
                        };
                        IndexAddResult {
                            id,
                            added: false,
                            error: Some((&e).into()),
                        }
                    }
                }),
            })
            .collect();
        let images = db.len()?;
        Ok::<_, blip_index::IndexError>((results, images))
    })
    .await
    .map_err(|_| ApiError::not_ready("writing the index failed"))?;
    let (results, images) =
        written.map_err(|e| ApiError::not_ready(format!("writing the index: {e}")))?;
    Ok(Json(IndexAddResponse { results, images }))
}

#[utoipa::path(delete, path = "/v1/index/{id}", tag = "index",
    params(("id" = String, Path, description = "Image id in the index")),
    responses(
        (status = 200, body = IndexDeleteResponse),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)
    ),
    security((), ("bearer" = [])))]
async fn index_delete(
    State(state): St,
    UrlPath(id): UrlPath<String>,
) -> AppResult<IndexDeleteResponse> {
    let store = state.index()?;
    let db = store.store.clone();
    let key = id.clone();
    let removed = tokio::task::spawn_blocking(move || {
        let removed = db.remove(&key)?;
        Ok::<_, blip_index::IndexError>((removed, db.len()?))
    })
    .await
    .map_err(|_| ApiError::not_ready("writing the index failed"))?;
    let (removed, images) =
        removed.map_err(|e| ApiError::not_ready(format!("writing the index: {e}")))?;
    if removed.is_none() {
        return Err(ApiError::not_found(format!(
            "no image with id {id:?} in the index"
        )));
    }
    Ok(Json(IndexDeleteResponse {
        deleted: id,
        images,
    }))
}

#[utoipa::path(get, path = "/health/live", tag = "health",
    responses((status = 200, body = Status, description = "The process is up (answers as soon as the port is bound)")))]
async fn live() -> Json<Status> {
    Json(Status {
        status: "live".into(),
    })
}

#[utoipa::path(get, path = "/health/ready", tag = "health",
    responses(
        (status = 200, body = Status, description = "Packages loaded and warmed up"),
        (status = 503, body = ErrorBody, description = "Still loading, or the last check failed")
    ))]
async fn ready(State(state): St) -> Result<Json<Status>, ApiError> {
    if !state.is_ready() && state.loaded.load(std::sync::atomic::Ordering::SeqCst) {
        // Unhealthy after a failure: re-check with a real forward pass of every package.
        let mut ok = true;
        for head in state.served.iter().map(|s| s.head) {
            if state
                .run(head, Work::Probe, state.deadline())
                .await
                .is_err()
            {
                ok = false;
            }
        }
        if ok {
            state.set_ready(true);
        }
    }
    if !state.is_ready() {
        state.check_ready()?;
    }
    Ok(Json(Status {
        status: "ready".into(),
    }))
}

#[utoipa::path(get, path = "/info", tag = "health",
    responses((status = 200, body = Info)))]
async fn info(State(state): St) -> Json<Info> {
    let a = &state.args;
    Json(Info {
        version: env!("CARGO_PKG_VERSION").into(),
        packages: state
            .served
            .iter()
            .map(|s| PackageInfo {
                path: s.package.dir.display().to_string(),
                head: s.head.name().into(),
                precision: s.package.manifest.precision.to_string(),
                image_size: s.package.manifest.preprocess.image_size,
                graphs: s
                    .package
                    .manifest
                    .graphs
                    .iter()
                    .map(|(r, g)| (r.clone(), g.precision.to_string()))
                    .collect(),
            })
            .collect(),
        execution_provider: "cpu".into(),
        int8_path: {
            let path = blip_runtime::Int8Path::detect();
            Int8PathInfo {
                path: path.name().into(),
                reason: path.reason().into(),
            }
        },
        threads: blip_runtime::resolve_threads(a.threads),
        api_key_required: a.api_key.is_some(),
        limits: Limits {
            max_batch_images: state.batch_images,
            memory_budget: a.memory_budget(),
            working_bytes_per_image: state.working_bytes_per_image,
            header_read_timeout_s: a.header_read_timeout,
            body_read_timeout_s: a.body_read_timeout,
            idle_timeout_s: a.idle_timeout,
            max_batch_wait_ms: a.max_batch_wait_ms,
            max_concurrent_requests: a.max_concurrent_requests,
            max_queue: a.max_queue,
            payload_limit: a.payload_limit,
            max_image_pixels: a.max_image_pixels,
            request_timeout_s: a.request_timeout,
            shutdown_grace_s: a.shutdown_grace,
        },
        index: state.index.as_ref().map(|s| IndexInfo {
            path: s.path.display().to_string(),
            images: s.store.len().unwrap_or(0),
            rerank_states: s.store.rerank.name().to_string(),
        }),
    })
}

#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
async fn metrics_text(State(state): St) -> impl IntoResponse {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], openapi_json())
}
