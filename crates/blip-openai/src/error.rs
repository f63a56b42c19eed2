//! OpenAI's error object: `{"error": {"message", "type", "param", "code"}}`.

use serde::{Deserialize, Serialize};

/// One error, as OpenAI's clients read it (`openai.BadRequestError.body`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpenAiError {
    /// What went wrong, naming the field and the item.
    pub message: String,
    /// `invalid_request_error` for the client's mistakes, `server_error` for ours, as OpenAI.
    #[serde(rename = "type")]
    pub kind: String,
    /// The request field at fault, where one is.
    pub param: Option<String>,
    /// The server's machine-readable class (`validation`, `not_found`, `overloaded`, …).
    pub code: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorEnvelope {
    pub error: OpenAiError,
}

impl OpenAiError {
    /// An error of HTTP `status` with the server's class `code`.
    pub fn new(status: u16, code: &str, message: impl Into<String>) -> OpenAiError {
        let kind = match status {
            401 => "authentication_error",
            404 => "not_found_error",
            429 => "rate_limit_exceeded",
            s if s >= 500 => "server_error",
            _ => "invalid_request_error",
        };
        OpenAiError {
            message: message.into(),
            kind: kind.into(),
            param: None,
            code: Some(code.into()),
        }
    }

    pub fn with_param(mut self, param: impl Into<String>) -> OpenAiError {
        self.param = Some(param.into());
        self
    }

    pub fn envelope(self) -> ErrorEnvelope {
        ErrorEnvelope { error: self }
    }
}

impl From<blip_tasks::request::RequestError> for OpenAiError {
    fn from(e: blip_tasks::request::RequestError) -> OpenAiError {
        OpenAiError::new(422, "validation", e.to_string()).with_param(e.field)
    }
}
