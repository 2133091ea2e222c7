//! The API's one error type and its mapping to HTTP: every layer's error becomes a status code and
//! a `{"error": {"code", "message"}}` body here, and nowhere else. Internal details are logged,
//! not sent.

use crate::coord::CoordError;
use crate::logstore::StoreError;
use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

#[derive(Debug)]
pub enum ApiError {
    /// 400, with a machine-readable code (`malformed_json`, `invalid_schedule`, `bad_cursor`, …).
    BadRequest {
        code: String,
        message: String,
        /// The job-spec field at fault, when one is (forms show the message next to it).
        field: Option<String>,
    },
    Unauthorized,
    Forbidden(String),
    NotFound(String),
    /// 409, with a code (`conflict`, `unreadable_job`).
    Conflict {
        code: String,
        message: String,
    },
    /// 409 `ambiguous_id`: an id fragment that matches several runs; `candidates` lists some.
    Ambiguous {
        message: String,
        candidates: Vec<String>,
    },
    PayloadTooLarge(String),
    UnsupportedMediaType(String),
    /// 422: some reported run events are refused; `refused` lists each with its reason.
    RefusedEvents {
        message: String,
        refused: serde_json::Value,
    },
    /// 429: too many failed authentications from this client address.
    TooManyRequests {
        retry_after: std::time::Duration,
    },
    /// 503: etcd does not serve this master (code `etcd_unavailable`); the message is one line
    /// and says what to check.
    EtcdUnavailable(String),
    /// 503: another dependency (the run log) is unreachable.
    Unavailable(String),
    /// 404 `channel_not_found`: no notification channel of that name on this master.
    ChannelNotFound(String),
    /// 502 `notify_failed`: the receiver of a test notice refused it or did not answer.
    NotifyFailed(String),
    Internal(String),
}

impl ApiError {
    pub fn bad(code: &str, message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            code: code.to_string(),
            message: message.into(),
            field: None,
        }
    }

    /// A 400 about one field of the body: code `invalid_{field}`, and `field` in the body.
    pub fn bad_field(field: &str, message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            code: format!("invalid_{field}"),
            message: message.into(),
            field: Some(field.to_string()),
        }
    }

    fn parts(&self) -> (StatusCode, &str, String) {
        match self {
            ApiError::BadRequest { code, message, .. } => (StatusCode::BAD_REQUEST, code, message.clone()),
            ApiError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or unknown bearer token; send Authorization: Bearer <token>".into(),
            ),
            ApiError::Forbidden(m) => (StatusCode::FORBIDDEN, "forbidden", m.clone()),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, "not_found", m.clone()),
            ApiError::Conflict { code, message } => (StatusCode::CONFLICT, code, message.clone()),
            ApiError::Ambiguous { message, .. } => (StatusCode::CONFLICT, "ambiguous_id", message.clone()),
            ApiError::PayloadTooLarge(m) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", m.clone()),
            ApiError::UnsupportedMediaType(m) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", m.clone())
            }
            ApiError::RefusedEvents { message, .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "refused_events", message.clone())
            }
            ApiError::TooManyRequests { retry_after } => (
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_failed_authentications",
                format!(
                    "too many failed authentications from this address; try again in {} s with a valid token",
                    retry_secs(*retry_after)
                ),
            ),
            ApiError::EtcdUnavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, "etcd_unavailable", m.clone()),
            ApiError::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", m.clone()),
            ApiError::ChannelNotFound(m) => (StatusCode::NOT_FOUND, "channel_not_found", m.clone()),
            ApiError::NotifyFailed(m) => (StatusCode::BAD_GATEWAY, "notify_failed", m.clone()),
            ApiError::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error; the master's log has the details".into(),
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(detail) = &self {
            tracing::error!(error = %detail, "internal API error");
        }
        let (status, code, message) = self.parts();
        let body = match &self {
            ApiError::BadRequest { field: Some(f), .. } => {
                Json(serde_json::json!({ "error": { "code": code, "message": message, "field": f } }))
            }
            ApiError::Ambiguous { candidates, .. } => {
                Json(serde_json::json!({ "error": { "code": code, "message": message, "candidates": candidates } }))
            }
            ApiError::RefusedEvents { refused, .. } => {
                Json(serde_json::json!({ "error": { "code": code, "message": message }, "refused": refused }))
            }
            _ => Json(serde_json::json!({ "error": { "code": code, "message": message } })),
        };
        let mut resp = (status, body).into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        }
        if let ApiError::TooManyRequests { retry_after } = &self {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(retry_secs(*retry_after)));
        }
        resp
    }
}

/// Whole seconds to wait, at least 1 (`Retry-After` takes seconds).
fn retry_secs(d: std::time::Duration) -> u64 {
    d.as_secs_f64().ceil().max(1.0) as u64
}

impl From<CoordError> for ApiError {
    fn from(e: CoordError) -> Self {
        match e {
            CoordError::Invalid(v) => ApiError::bad_field(v.field, v.to_string()),
            CoordError::NotFound(name) => ApiError::NotFound(format!("job {name:?} not found")),
            CoordError::Unreadable { name, message } => ApiError::Conflict {
                code: "unreadable_job".into(),
                message: format!(
                    "job {name:?} is stored in etcd but cannot be read ({message}); replace it with PUT or remove it with DELETE"
                ),
            },
            CoordError::Conflict(m) => ApiError::Conflict {
                code: "conflict".into(),
                message: m,
            },
            e @ CoordError::JobsChanged => ApiError::Conflict {
                code: "conflict".into(),
                message: e.to_string(),
            },
            e if e.is_unavailable() => ApiError::EtcdUnavailable(format!(
                "{e}; check that etcd is running and that this master reaches it (its log has the details at debug level)"
            )),
            // etcd answered with an error about the request
            e @ (CoordError::Etcd { .. } | CoordError::Timeout { .. } | CoordError::Decode { .. }) => {
                ApiError::Internal(e.to_string())
            }
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::BadCursor => ApiError::bad("bad_cursor", e.to_string()),
            StoreError::Unavailable(_) => ApiError::Unavailable(e.to_string()),
            StoreError::BadUri(_) | StoreError::Internal(_) | StoreError::HistoryLost(_) => {
                ApiError::Internal(e.to_string())
            }
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r.status() {
            StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::PayloadTooLarge("request body is larger than master.max_body_bytes".into())
            }
            StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                ApiError::UnsupportedMediaType("send Content-Type: application/json".into())
            }
            _ => match r {
                JsonRejection::JsonSyntaxError(e) => ApiError::bad("malformed_json", e.body_text()),
                JsonRejection::JsonDataError(e) => ApiError::bad("invalid_body", e.body_text()),
                other => ApiError::bad("invalid_body", other.body_text()),
            },
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::bad("invalid_query", r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::bad("invalid_path", r.body_text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coord::EtcdCause;

    #[test]
    fn etcd_unreachable_is_a_503_etcd_unavailable_in_one_line_that_says_what_to_check() {
        let e = CoordError::Etcd {
            op: "get",
            endpoints: "127.0.0.1:2379".into(),
            cause: EtcdCause::Refused,
        };
        let api = ApiError::from(e);
        let (status, code, message) = api.parts();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(code, "etcd_unavailable");
        assert!(
            message.starts_with("etcd at 127.0.0.1:2379: connection refused; check that etcd is running"),
            "{message}"
        );
        assert!(!message.contains('\n') && message.len() < 200, "{message}");
        let e = CoordError::Timeout {
            op: "get",
            endpoints: "10.0.0.1:2379".into(),
            timeout: std::time::Duration::from_secs(5),
        };
        let api = ApiError::from(e);
        let (_, code, message) = api.parts();
        assert_eq!(code, "etcd_unavailable");
        assert!(
            message.starts_with("etcd at 10.0.0.1:2379: no answer within 5s;"),
            "{message}"
        );
    }
}
