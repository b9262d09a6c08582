//! Reading an answer of LANrage's HTTP APIs (the control server's and the daemon's local one):
//! the JSON value on 2xx, the server's own `{"error": "..."}` message otherwise.

use lanrage_control::server_api::ErrorJson;
use serde::de::DeserializeOwned;

/// A non-2xx answer, or one that does not decode.
pub struct Refusal {
    pub status: u16,
    pub message: String,
}

pub fn read<R: DeserializeOwned>(
    response: &mut ureq::http::Response<ureq::Body>,
) -> Result<R, Refusal> {
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    if !(200..300).contains(&status) {
        let message = serde_json::from_str::<ErrorJson>(&text)
            .map(|e| e.error)
            .unwrap_or_else(|_| format!("HTTP {status}"));
        return Err(Refusal { status, message });
    }
    // 204 and friends: decode "null" so unit-like results work.
    let text = if text.trim().is_empty() {
        "null"
    } else {
        &text
    };
    serde_json::from_str(text).map_err(|e| Refusal {
        status,
        message: format!("unexpected answer: {e}"),
    })
}
