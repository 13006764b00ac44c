//! The API's error type: every failure leaves as an RFC 9457 `application/problem+json`
//! document with a stable `type` URI; internal errors are logged with the request id and
//! answered with a generic 500 that carries only that id.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tern_broker::store::StoreError;
use utoipa::ToSchema;

/// Base of the problem `type` URIs.
pub const PROBLEM_BASE: &str = "https://tern.dev/problems/";

/// The response header carrying the request id.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

tokio::task_local! {
    static REQUEST_ID: String;
}

/// The id of the request being served (set by [`request_id`]), if any.
pub fn current_request_id() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok()
}

/// Middleware: gives each request an id, makes it visible to error rendering and logs, and
/// returns it in the `x-request-id` response header.
pub async fn request_id(req: Request, next: Next) -> Response {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static BOOT: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let boot = *BOOT.get_or_init(|| {
        let n = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        (n ^ (n >> 32)) as u32
    });
    let id = format!("{boot:08x}-{:08x}", COUNTER.fetch_add(1, Ordering::Relaxed));
    let span = tracing::info_span!("admin_request", request_id = %id, method = %req.method(), path = %req.uri().path());
    let mut res = REQUEST_ID.scope(id.clone(), tracing::Instrument::instrument(next.run(req), span)).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        res.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    res
}

/// A field-level validation message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct FieldError {
    /// The offending field (JSON name, or query parameter).
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

/// An RFC 9457 problem document.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    /// Stable URI identifying the problem type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Short summary of the problem type.
    pub title: String,
    /// HTTP status code.
    pub status: u16,
    /// Explanation specific to this occurrence.
    pub detail: String,
    /// Id of the request (also in the `x-request-id` header); quote it when reporting.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Field-level validation messages.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

/// Everything a handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is malformed or fails validation.
    #[error("{detail}")]
    Validation {
        /// What is wrong.
        detail: String,
        /// Per-field messages.
        errors: Vec<FieldError>,
    },
    /// 401: no credentials, or bad ones.
    #[error("{0}")]
    Unauthenticated(String),
    /// 403: authenticated, but the role does not allow it.
    #[error("{0}")]
    Forbidden(String),
    /// 404: no such resource.
    #[error("{0}")]
    NotFound(String),
    /// 405: the path exists, the method does not.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 409: conflicts with the current state.
    #[error("{0}")]
    Conflict(String),
    /// 413: the body is larger than allowed.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 415: the body is not `application/json`.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 429: slow down; retry after this many seconds.
    #[error("too many requests")]
    TooManyRequests {
        /// Seconds to wait (`Retry-After`).
        retry_after: u64,
    },
    /// 503: the request took longer than the configured timeout.
    #[error("the request timed out")]
    Timeout,
    /// 503: a dependency (the store) is unavailable.
    #[error("{0}")]
    Unavailable(String),
    /// 500: anything else. The text is logged, never sent.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// A 400 about one field.
    pub fn field(field: &str, message: impl Into<String>) -> ApiError {
        let message = message.into();
        ApiError::Validation {
            detail: format!("invalid `{field}`: {message}"),
            errors: vec![FieldError { field: field.to_string(), message }],
        }
    }

    /// A 400 without a field.
    pub fn bad_request(detail: impl Into<String>) -> ApiError {
        ApiError::Validation { detail: detail.into(), errors: Vec::new() }
    }

    /// A 500 from any error (logged when rendered).
    pub fn internal(e: impl std::fmt::Display) -> ApiError {
        ApiError::Internal(e.to_string())
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Validation { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) | ApiError::Timeout => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The problem type slug and title.
    fn kind(&self) -> (&'static str, &'static str) {
        match self {
            ApiError::Validation { .. } => ("validation", "Invalid request"),
            ApiError::Unauthenticated(_) => ("unauthenticated", "Authentication required"),
            ApiError::Forbidden(_) => ("forbidden", "Forbidden"),
            ApiError::NotFound(_) => ("not-found", "Not found"),
            ApiError::MethodNotAllowed => ("method-not-allowed", "Method not allowed"),
            ApiError::Conflict(_) => ("conflict", "Conflict"),
            ApiError::PayloadTooLarge(_) => ("payload-too-large", "Payload too large"),
            ApiError::UnsupportedMediaType(_) => ("unsupported-media-type", "Unsupported media type"),
            ApiError::TooManyRequests { .. } => ("rate-limited", "Too many requests"),
            ApiError::Unavailable(_) => ("unavailable", "Service unavailable"),
            ApiError::Timeout => ("timeout", "Request timed out"),
            ApiError::Internal(_) => ("internal", "Internal server error"),
        }
    }

    /// The problem document for this error (internal details replaced by a generic text).
    pub fn problem(&self) -> Problem {
        let (slug, title) = self.kind();
        let detail = match self {
            ApiError::Internal(_) => {
                "an internal error occurred; quote the request id when reporting it".to_string()
            }
            ApiError::TooManyRequests { retry_after } => format!("retry after {retry_after} s"),
            other => other.to_string(),
        };
        let errors = match self {
            ApiError::Validation { errors, .. } => errors.clone(),
            _ => Vec::new(),
        };
        Problem {
            kind: format!("{PROBLEM_BASE}{slug}"),
            title: title.to_string(),
            status: self.status().as_u16(),
            detail,
            request_id: current_request_id(),
            errors,
        }
    }
}

impl From<tern_auth::provision::ProvisionError> for ApiError {
    fn from(e: tern_auth::provision::ProvisionError) -> ApiError {
        use tern_auth::provision::ProvisionError as P;
        match e {
            P::Invalid(m) => ApiError::bad_request(m),
            P::NotFound(m) => ApiError::NotFound(m),
            P::Store(e) => e.into(),
            // The change was made; the caller must not believe it failed silently, and
            // must not retry blindly either: 500 with the request id, details in the log.
            P::Audit(e) => ApiError::Internal(format!("change applied but not audited: {e}")),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::Conflict(m) => ApiError::Conflict(m),
            StoreError::NotFound(m) => ApiError::NotFound(m),
            StoreError::Unavailable(m) => {
                tracing::warn!(request_id = ?current_request_id(), "store unavailable: {m}");
                ApiError::Unavailable("the database is unavailable".to_string())
            }
            StoreError::Other(m) => ApiError::Internal(format!("store: {m}")),
        }
    }
}

/// The problem+json media type.
pub const PROBLEM_JSON: &str = "application/problem+json";

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(msg) = &self {
            tracing::error!(request_id = ?current_request_id(), "internal error: {msg}");
        }
        let problem = self.problem();
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut res = (self.status(), body).into_response();
        let h = res.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        match &self {
            ApiError::Unauthenticated(_) => {
                h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::TooManyRequests { retry_after } => {
                h.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
            }
            _ => {}
        }
        res
    }
}

/// The error responses every operation of the API can give by its shape, documented once
/// (as `components/responses`) and referenced from each operation that does not declare the
/// same status itself (operations declare their specific ones: 403, 404, 409, 429).
///
/// | status | when | operations |
/// | --- | --- | --- |
/// | 400 | a path or query parameter or the body is malformed or invalid | with parameters or a body |
/// | 401 | missing, invalid, expired or revoked credentials | with a security requirement |
/// | 413 | the body is over [`crate::BODY_LIMIT`] | with a body |
/// | 415 | the body is not `application/json` | with a body |
/// | 500 | an internal error (logged with the request id) | all under `/api/v1` |
/// | 503 | the database is unavailable, or the request timed out | all under `/api/v1` |
#[derive(Debug)]
pub(crate) struct CommonResponses;

impl CommonResponses {
    /// (status, component name, description) of the shared responses.
    const ALL: [(&'static str, &'static str, &'static str); 6] = [
        ("400", "BadRequest", "Invalid request: a parameter or the body is malformed or invalid"),
        ("401", "Unauthenticated", "Not authenticated: missing, invalid, expired or revoked credentials"),
        ("413", "PayloadTooLarge", "The body is larger than 64 KiB"),
        ("415", "UnsupportedMediaType", "The body is not `Content-Type: application/json`"),
        ("500", "InternalError", "Internal error; the details are logged under the request id"),
        (
            "503",
            "Unavailable",
            "The database is unavailable, or the request took longer than `admin.request_timeout`",
        ),
    ];

    fn component(status: &str, description: &str) -> utoipa::openapi::Response {
        use utoipa::openapi::header::Header;
        use utoipa::openapi::schema::{Object, Type};
        use utoipa::openapi::{Content, Ref, ResponseBuilder};
        let mut response = ResponseBuilder::new()
            .description(description)
            .content(PROBLEM_JSON, Content::new(Some(Ref::from_schema_name("Problem"))));
        if status == "401" {
            let mut h = Header::new(Object::with_type(Type::String));
            h.description = Some("`Bearer`".to_string());
            response = response.header("WWW-Authenticate", h);
        }
        response.build()
    }
}

impl utoipa::Modify for CommonResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{Ref, RefOr};
        let components = openapi.components.get_or_insert_with(Default::default);
        for (status, name, description) in Self::ALL {
            components.responses.insert(name.to_string(), RefOr::T(Self::component(status, description)));
        }
        for (path, item) in &mut openapi.paths.paths {
            let api = path.starts_with("/api/v1/");
            let ops = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.options,
                &mut item.head,
                &mut item.patch,
                &mut item.trace,
            ];
            for op in ops.into_iter().flatten() {
                let has_body = op.request_body.is_some();
                let has_params = op.parameters.as_ref().is_some_and(|p| !p.is_empty());
                let secured = op.security.as_ref().is_some_and(|s| !s.is_empty());
                for (status, name, _) in Self::ALL {
                    let applies = match status {
                        "400" => has_body || has_params,
                        "401" => secured,
                        "413" | "415" => has_body,
                        _ => api,
                    };
                    if applies {
                        op.responses
                            .responses
                            .entry(status.to_string())
                            .or_insert_with(|| RefOr::Ref(Ref::from_response_name(name)));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body(e: ApiError) -> (StatusCode, HeaderValue, serde_json::Value) {
        let res = REQUEST_ID.scope("req-1".to_string(), async move { e.into_response() }).await;
        let status = res.status();
        let ct = res.headers()[header::CONTENT_TYPE].clone();
        let bytes = axum::body::to_bytes(res.into_body(), usize::MAX).await.unwrap();
        (status, ct, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn internal_errors_are_hidden_and_carry_the_request_id() {
        let (status, ct, json) = body(ApiError::internal("pool timed out at /var/lib/tern/secret.db")).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(ct, PROBLEM_JSON);
        assert_eq!(json["type"], "https://tern.dev/problems/internal");
        assert_eq!(json["request_id"], "req-1");
        assert!(!json.to_string().contains("secret.db"), "{json}");
    }

    #[tokio::test]
    async fn store_errors_map_to_statuses() {
        assert_eq!(ApiError::from(StoreError::Conflict("x".into())).status(), StatusCode::CONFLICT);
        assert_eq!(ApiError::from(StoreError::NotFound("x".into())).status(), StatusCode::NOT_FOUND);
        assert_eq!(ApiError::from(StoreError::Other("x".into())).status(), StatusCode::INTERNAL_SERVER_ERROR);
        let (status, _, json) = body(ApiError::from(StoreError::Unavailable("host db:5432".into()))).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(!json.to_string().contains("5432"), "{json}");
        let (status, _, json) = body(ApiError::TooManyRequests { retry_after: 7 }).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(json["type"], "https://tern.dev/problems/rate-limited");
        let (status, _, json) = body(ApiError::field("limit", "too big")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(json["errors"][0]["field"], "limit");
    }
}
