//! Request bodies as JSON or multipart, images as base64 / data URIs or file parts, and image
//! decoding + resizing off the async runtime.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{FromRequest, Multipart, Request};
use axum::http::header::CONTENT_TYPE;
use base64::Engine as _;
use blip_preprocess::ImagePreprocessor;
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::metrics as m;

/// An uploaded image, still encoded.
#[derive(Debug, Clone)]
pub struct RawImage {
    /// How errors name it: `images[2]`, or the file name of a multipart part.
    pub name: String,
    pub bytes: Vec<u8>,
}

/// Multipart text fields that are lists in the JSON body (a single field becomes a one-item list).
const LIST_FIELDS: [&str; 4] = ["images", "texts", "questions", "answers"];
/// Multipart text fields that stay strings even when they parse as JSON.
const STRING_FIELDS: [&str; 4] = ["prompt", "text", "image", "id"];

/// The body as `T`, plus the file parts of a multipart upload.
pub async fn read<T: DeserializeOwned>(req: Request) -> Result<(T, Vec<RawImage>), ApiError> {
    let ctype = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if ctype.starts_with("multipart/form-data") {
        return read_multipart(req).await;
    }
    if !(ctype.starts_with("application/json") || ctype.is_empty()) {
        return Err(ApiError::unsupported_media(format!(
            "content type {ctype:?}: send application/json or multipart/form-data"
        )));
    }
    let bytes = axum::body::Bytes::from_request(req, &())
        .await
        .map_err(|e| rejection(e.status(), e.body_text()))?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::empty("the request body is empty"));
    }
    let mut de = serde_json::Deserializer::from_slice(&bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let inner = e.inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::bad_request(format!("the body is not valid JSON: {inner}"))
        } else {
            field_error(e.path(), &inner.to_string())
        }
    })?;
    de.end()
        .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))?;
    Ok((value, Vec::new()))
}

/// A body that parsed but does not fit the request type: 422 naming the field
/// (`beams: invalid type: string "3", expected usize`).
fn field_error(path: &serde_path_to_error::Path, message: &str) -> ApiError {
    // serde_json appends where in the body it was; the field's name says more.
    let message = match message.rfind(" at line ") {
        Some(i) if message[i..].contains(" column ") => &message[..i],
        _ => message,
    };
    let path = path.to_string();
    if path == "." || path.is_empty() {
        ApiError::validation(format!("invalid request: {message}"))
    } else {
        ApiError::validation(format!("{path}: {message}"))
    }
}

fn rejection(status: axum::http::StatusCode, text: String) -> ApiError {
    match status.as_u16() {
        413 => ApiError::too_large(format!("{text} (--payload-limit)")),
        415 => ApiError::unsupported_media(text),
        400 => ApiError::bad_request(text),
        _ => ApiError::validation(text),
    }
}

async fn read_multipart<T: DeserializeOwned>(req: Request) -> Result<(T, Vec<RawImage>), ApiError> {
    let mut mp = Multipart::from_request(req, &())
        .await
        .map_err(|e| rejection(e.status(), e.body_text()))?;
    let mut files = Vec::new();
    let mut fields = serde_json::Map::new();
    loop {
        let field = match mp.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return Err(rejection(e.status(), e.body_text())),
        };
        let name = field.name().unwrap_or("").to_string();
        let file_name = field.file_name().map(str::to_string);
        let is_file = file_name.is_some()
            || field
                .content_type()
                .is_some_and(|c| !c.starts_with("text/plain"));
        let bytes = field
            .bytes()
            .await
            .map_err(|e| rejection(e.status(), e.body_text()))?;
        if is_file && name != "metadata" {
            files.push(RawImage {
                name: file_name.unwrap_or_else(|| format!("{name}[{}]", files.len())),
                bytes: bytes.to_vec(),
            });
            continue;
        }
        let text = String::from_utf8(bytes.to_vec())
            .map_err(|_| ApiError::validation(format!("field {name} is not UTF-8 text")))?;
        let value =
            if STRING_FIELDS.contains(&name.as_str()) || LIST_FIELDS.contains(&name.as_str()) {
                serde_json::Value::String(text)
            } else {
                serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))
            };
        if LIST_FIELDS.contains(&name.as_str()) {
            let list = fields
                .entry(name)
                .or_insert_with(|| serde_json::Value::Array(Vec::new()));
            if let serde_json::Value::Array(a) = list {
                a.push(value);
            }
        } else {
            fields.insert(name, value);
        }
    }
    let value: T = serde_path_to_error::deserialize(serde_json::Value::Object(fields))
        .map_err(|e| field_error(e.path(), &e.inner().to_string()))?;
    Ok((value, files))
}

/// Decodes a base64 string or a `data:image/...;base64,` URI.
pub fn decode_image(s: &str, name: &str) -> Result<RawImage, ApiError> {
    let data = match s.strip_prefix("data:") {
        Some(rest) => {
            let (meta, data) = rest.split_once(',').ok_or_else(|| {
                ApiError::validation(format!("{name}: a data URI needs a comma before its data"))
            })?;
            let mime = meta.split(';').next().unwrap_or("");
            if !mime.is_empty() && !mime.starts_with("image/") {
                return Err(ApiError::unsupported_media(format!(
                    "{name}: media type {mime:?} is not an image"
                )));
            }
            if !meta.ends_with(";base64") {
                return Err(ApiError::validation(format!(
                    "{name}: only base64 data URIs are taken"
                )));
            }
            data
        }
        None => s,
    };
    let clean: String = data.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    if clean.is_empty() {
        return Err(ApiError::empty(format!("{name} is empty")));
    }
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    let bytes = engine
        .decode(clean.as_bytes())
        .or_else(|_| {
            base64::engine::GeneralPurpose::new(
                &base64::alphabet::URL_SAFE,
                base64::engine::GeneralPurposeConfig::new()
                    .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
            )
            .decode(clean.as_bytes())
        })
        .map_err(|e| ApiError::validation(format!("{name} is not valid base64: {e}")))?;
    Ok(RawImage {
        name: name.to_string(),
        bytes,
    })
}

/// Images from the JSON list (`field[i]`) followed by the multipart files; each decodes or fails
/// on its own.
pub fn gather(
    field: &str,
    encoded: &[String],
    files: Vec<RawImage>,
) -> Vec<Result<RawImage, ApiError>> {
    encoded
        .iter()
        .enumerate()
        .map(|(i, s)| decode_image(s, &format!("{field}[{i}]")))
        .chain(files.into_iter().map(Ok))
        .collect()
}

/// The file extension of an encoded image, from its first bytes.
pub fn image_extension(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("png")
    } else if bytes.starts_with(&[0xff, 0xd8, 0xff]) {
        Some("jpg")
    } else if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
        Some("gif")
    } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        Some("webp")
    } else if bytes.starts_with(b"BM") {
        Some("bmp")
    } else {
        None
    }
}

pub fn content_type(extension: &str) -> &'static str {
    match extension {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "bmp" => "image/bmp",
        _ => "application/octet-stream",
    }
}

/// Decodes and resizes images on the blocking pool (in parallel with the engine's inference):
/// per image its pixel values or its error.
pub async fn preprocess(
    pre: Arc<ImagePreprocessor>,
    head: &'static str,
    images: Vec<Result<RawImage, ApiError>>,
) -> Vec<Result<Vec<f32>, ApiError>> {
    let n = images.len();
    let result = tokio::task::spawn_blocking(move || {
        let start = Instant::now();
        let out: Vec<_> = images
            .into_iter()
            .map(|img| {
                let img = img?;
                let rgb = pre
                    .load_bytes(&img.bytes, &img.name)
                    .map_err(|e| ApiError::from_preprocess(&e))?;
                pre.pixel_values(&rgb)
                    .map_err(|e| ApiError::from_preprocess(&e))
            })
            .collect();
        metrics::histogram!(m::PREPROCESS_DURATION, "head" => head)
            .record(start.elapsed().as_secs_f64());
        out
    })
    .await;
    result.unwrap_or_else(|_| {
        (0..n)
            .map(|_| Err(ApiError::validation("image preprocessing failed")))
            .collect()
    })
}
