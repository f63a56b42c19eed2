//! Every error the API answers: `{"error": "...", "error_type": "..."}` with its status.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use blip_runtime::{PreprocessError, RuntimeError};
use serde::Serialize;
use utoipa::ToSchema;

/// The body of every error response.
#[derive(Debug, Clone, Serialize, serde::Deserialize, ToSchema, PartialEq)]
pub struct ErrorBody {
    /// What went wrong, naming the field and the item.
    pub error: String,
    /// Machine-readable class: empty_input, unauthorized, not_found, payload_too_large,
    /// unsupported_media_type, validation, overloaded, not_ready, deadline, inference,
    /// request_timeout, method_not_allowed, bad_request.
    pub error_type: String,
}

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub error_type: &'static str,
    pub message: String,
    /// Seconds for `Retry-After` (429, 503).
    pub retry_after: Option<u32>,
    /// The request field at fault, where one is (the OpenAI-compatible routes answer it as
    /// `param`).
    pub param: Option<String>,
}

/// The field an error response names, kept on the response for the OpenAI error shape.
#[derive(Debug, Clone)]
pub struct ErrorParam(pub String);

/// Longest error message answered: a message that quotes the request (a serde error quoting a
/// string value, a text) is cut to this many bytes, so an error never echoes a large input back.
pub const MAX_ERROR_MESSAGE: usize = 300;

/// `message`, cut at a character boundary to [`MAX_ERROR_MESSAGE`] bytes, saying how much was cut.
pub fn excerpt(message: String) -> String {
    if message.len() <= MAX_ERROR_MESSAGE {
        return message;
    }
    let mut end = MAX_ERROR_MESSAGE;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}… ({} bytes of message cut)",
        &message[..end],
        message.len() - end
    )
}

impl ApiError {
    fn new(status: StatusCode, error_type: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            error_type,
            message: excerpt(message.into()),
            retry_after: None,
            param: None,
        }
    }

    /// An error of `status` with the class every route gives that status (path, protocol and
    /// body errors raised outside the handlers are answered in the same shape).
    pub fn with_status(status: StatusCode, message: impl Into<String>) -> ApiError {
        let error_type = match status.as_u16() {
            400 => "bad_request",
            401 => "unauthorized",
            404 => "not_found",
            405 => "method_not_allowed",
            408 => "request_timeout",
            413 => "payload_too_large",
            415 => "unsupported_media_type",
            422 => "validation",
            429 => "overloaded",
            503 => "not_ready",
            504 => "deadline",
            s if s >= 500 => "internal",
            _ => "bad_request",
        };
        Self::new(status, error_type, message)
    }

    /// The body did not arrive in time (--body-read-timeout).
    pub fn body_timeout(seconds: f64) -> ApiError {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!("the request body did not arrive within {seconds} s (--body-read-timeout)"),
        )
    }

    pub fn empty(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::BAD_REQUEST, "empty_input", message)
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn unauthorized() -> ApiError {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong API key (send `Authorization: Bearer <key>`)",
        )
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn too_large(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
    }

    pub fn unsupported_media(message: impl Into<String>) -> ApiError {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            message,
        )
    }

    pub fn validation(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "validation", message)
    }

    pub fn overloaded(message: impl Into<String>) -> ApiError {
        ApiError {
            retry_after: Some(1),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, "overloaded", message)
        }
    }

    pub fn not_ready(message: impl Into<String>) -> ApiError {
        ApiError {
            retry_after: Some(1),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", message)
        }
    }

    pub fn deadline() -> ApiError {
        Self::new(
            StatusCode::GATEWAY_TIMEOUT,
            "deadline",
            "the request passed its deadline (--request-timeout) before it was answered",
        )
    }

    pub fn method_not_allowed() -> ApiError {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this route does not take that method",
        )
    }

    /// A task error from the engine: bad input is a 422; a failed graph run is not the client's
    /// fault and is reported as 503 (the server stays up and re-checks its health).
    pub fn from_runtime(e: &RuntimeError) -> ApiError {
        match e {
            RuntimeError::Preprocess(p) => Self::from_preprocess(p),
            RuntimeError::Input(_) => Self::validation(e.to_string()),
            RuntimeError::Inference { .. } => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "inference", e.to_string())
            }
            _ => Self::new(StatusCode::SERVICE_UNAVAILABLE, "inference", e.to_string()),
        }
    }

    pub fn from_preprocess(e: &PreprocessError) -> ApiError {
        match e {
            PreprocessError::TooLarge { .. } => Self::too_large(e.to_string()),
            PreprocessError::Image { message, .. } if message.starts_with("not a recognised") => {
                Self::unsupported_media(e.to_string())
            }
            _ => Self::validation(e.to_string()),
        }
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: self.message.clone(),
            error_type: self.error_type.to_string(),
        }
    }
}

impl From<blip_runtime::request::RequestError> for ApiError {
    /// A request option that cannot be taken: 422 naming the field and the rule.
    fn from(e: blip_runtime::request::RequestError) -> ApiError {
        ApiError {
            param: Some(e.field.clone()),
            ..ApiError::validation(e.to_string())
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, axum::Json(self.body())).into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(p) = self.param {
            r.extensions_mut().insert(ErrorParam(p));
        }
        r
    }
}

/// One item of a batch answered with an error (the others in the same 200 response are answered).
#[derive(Debug, Clone, Serialize, serde::Deserialize, ToSchema, PartialEq)]
pub struct ItemError {
    pub error: String,
    pub error_type: String,
    /// The status this item alone would have had.
    pub status: u16,
}

impl From<&ApiError> for ItemError {
    fn from(e: &ApiError) -> ItemError {
        ItemError {
            error: e.message.clone(),
            error_type: e.error_type.to_string(),
            status: e.status.as_u16(),
        }
    }
}

/// The error responses of every /v1 task route, for the OpenAPI document.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum TaskErrors {
    #[response(status = 400, description = "Empty input or malformed JSON")]
    Empty(ErrorBody),
    #[response(status = 401, description = "Missing or wrong API key")]
    Unauthorized(ErrorBody),
    #[response(
        status = 404,
        description = "No package with the route's head, unknown id, or no index"
    )]
    NotFound(ErrorBody),
    #[response(
        status = 413,
        description = "Body over --payload-limit, image over --max-image-pixels, or more images than --max-queue"
    )]
    TooLarge(ErrorBody),
    #[response(
        status = 408,
        description = "The body did not arrive within --body-read-timeout"
    )]
    BodyTimeout(ErrorBody),
    #[response(
        status = 415,
        description = "Not JSON or multipart, not an image, or a Content-Encoding other than identity"
    )]
    Unsupported(ErrorBody),
    #[response(
        status = 422,
        description = "A field or item is invalid (named in the message)"
    )]
    Validation(ErrorBody),
    #[response(
        status = 429,
        description = "Overloaded; retry after Retry-After seconds"
    )]
    Overloaded(ErrorBody),
    #[response(status = 503, description = "Not ready, or a graph run failed")]
    NotReady(ErrorBody),
    #[response(status = 504, description = "The request passed --request-timeout")]
    Deadline(ErrorBody),
}
