//! OpenAI Batch API lines: `{"custom_id", "method", "url", "body"}` in, one result line out per
//! input line (`{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::OpenAiError;

/// The routes a batch line may name.
pub const BATCH_URLS: [&str; 1] = ["/v1/chat/completions"];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchLine {
    pub custom_id: String,
    pub method: String,
    pub url: String,
    pub body: Value,
}

/// A line that can be answered: its id and the body for its route (the route reads and checks
/// the body, so a bad body is answered as the route answers it).
#[derive(Debug, Clone)]
pub struct BatchItem {
    pub custom_id: String,
    pub body: Value,
}

/// Reads line `number` (1-based) of a batch file: the request, or the error line to write (with
/// the line's `custom_id` when it had one).
pub fn read_line(number: usize, line: &str) -> Result<BatchItem, (Option<String>, OpenAiError)> {
    let bad = |id: Option<String>, field: &str, msg: String| {
        (
            id,
            OpenAiError::new(400, "invalid_line", format!("line {number}: {msg}"))
                .with_param(field),
        )
    };
    let value: Value =
        serde_json::from_str(line).map_err(|e| bad(None, "line", format!("not JSON: {e}")))?;
    let id = value
        .get("custom_id")
        .and_then(Value::as_str)
        .map(str::to_string);
    let parsed: BatchLine = serde_json::from_value(value)
        .map_err(|e| bad(id.clone(), "line", format!("not a batch request line: {e}")))?;
    if !parsed.method.eq_ignore_ascii_case("POST") {
        return Err(bad(
            id,
            "method",
            format!("method {:?}: only POST", parsed.method),
        ));
    }
    if !BATCH_URLS.contains(&parsed.url.as_str()) {
        return Err(bad(
            id,
            "url",
            format!(
                "url {:?}: this batch runner answers {}",
                parsed.url,
                BATCH_URLS.join(", ")
            ),
        ));
    }
    if parsed.body.get("stream").and_then(Value::as_bool) == Some(true) {
        return Err(bad(
            id,
            "body.stream",
            "body.stream: a batch answers whole completions, not streams".into(),
        ));
    }
    Ok(BatchItem {
        custom_id: parsed.custom_id,
        body: parsed.body,
    })
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchResponse {
    pub status_code: u16,
    pub request_id: String,
    pub body: Value,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchLineError {
    pub code: String,
    pub message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchResult {
    pub id: String,
    pub custom_id: Option<String>,
    pub response: Option<BatchResponse>,
    pub error: Option<BatchLineError>,
}

impl BatchResult {
    /// An answered line (a completion with 200, or a request error with its status).
    pub fn answered(number: usize, custom_id: &str, status_code: u16, body: Value) -> BatchResult {
        BatchResult {
            id: format!("batch_req_{number}"),
            custom_id: Some(custom_id.to_string()),
            response: Some(BatchResponse {
                status_code,
                request_id: format!("req_{number}"),
                body,
            }),
            error: None,
        }
    }

    /// A line that could not be read as a request.
    pub fn unreadable(number: usize, custom_id: Option<String>, e: OpenAiError) -> BatchResult {
        BatchResult {
            id: format!("batch_req_{number}"),
            custom_id,
            response: None,
            error: Some(BatchLineError {
                code: e.code.unwrap_or_else(|| "invalid_line".into()),
                message: e.message,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_read_or_named() {
        let ok = r#"{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "m", "messages": []}}"#;
        assert_eq!(read_line(1, ok).unwrap().custom_id, "a");
        let (id, e) = read_line(
            2,
            r#"{"custom_id": "b", "method": "POST", "url": "/v1/embeddings", "body": {}}"#,
        )
        .unwrap_err();
        assert_eq!(id.as_deref(), Some("b"));
        assert_eq!(e.param.as_deref(), Some("url"));
        assert!(e.message.starts_with("line 2:"), "{}", e.message);
        let (id, e) = read_line(3, "{not json").unwrap_err();
        assert!(id.is_none());
        assert!(e.message.contains("not JSON"));
    }
}
