//! The convention of LANrage's HTTP APIs (the control server's and the daemon's local one),
//! both sides of it: JSON bodies, and errors as `{"error": "..."}` with a 4xx/5xx status.

use axum::Json;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use lanrage_control::server_api::ErrorJson;
use serde::de::DeserializeOwned;

/// An error answer.
pub fn error_response(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        Json(ErrorJson {
            error: message.into(),
        }),
    )
        .into_response()
}

/// A JSON request body whose rejections (bad JSON, wrong types, too large) are error answers
/// too, saying what was wrong.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(Body(value)),
            Err(rejection) => Err(error_response(rejection.status(), rejection.body_text())),
        }
    }
}

/// Client side: a non-2xx answer, or one that does not decode.
pub struct Refusal {
    pub status: u16,
    pub message: String,
}

/// Client side: the answer's value, or the server's refusal.
pub fn read<R: DeserializeOwned>(
    response: &mut ureq::http::Response<ureq::Body>,
) -> Result<R, Refusal> {
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    decode(status, &text)
}

/// Client side: an answer's status and body, read by whatever transport carried them.
pub fn decode<R: DeserializeOwned>(status: u16, text: &str) -> Result<R, Refusal> {
    if !(200..300).contains(&status) {
        let message = serde_json::from_str::<ErrorJson>(text)
            .map(|e| e.error)
            .unwrap_or_else(|_| format!("HTTP {status}"));
        return Err(Refusal { status, message });
    }
    // 204 and friends: decode "null" so unit-like results work.
    let text = if text.trim().is_empty() { "null" } else { text };
    serde_json::from_str(text).map_err(|e| Refusal {
        status,
        message: format!("unexpected answer: {e}"),
    })
}
