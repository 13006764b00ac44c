//! Extractors whose rejections are problem+json: JSON bodies (malformed, unknown fields,
//! oversized), query strings and path parameters, and the peer address for the audit log.

use std::net::SocketAddr;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A JSON body; rejections become 400 (malformed, wrong or unknown fields), 413 (over the
/// body limit) or 415 (not `application/json`).
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(e) => Err(json_rejection(&e)),
        }
    }
}

fn json_rejection(e: &JsonRejection) -> ApiError {
    match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge("the request body is too large".into()),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            ApiError::UnsupportedMediaType("expected `Content-Type: application/json`".into())
        }
        _ => match e {
            // serde's message names the field and what was expected; it never echoes more
            // than the offending token.
            JsonRejection::JsonDataError(d) => ApiError::bad_request(source_text(d)),
            JsonRejection::JsonSyntaxError(d) => ApiError::bad_request(source_text(d)),
            _ => ApiError::bad_request("the request body could not be read"),
        },
    }
}

/// The innermost error text of a rejection (serde's message, without axum's prefix).
fn source_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur: &dyn std::error::Error = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// A query string; rejections become 400.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(v)) => Ok(ApiQuery(v)),
            Err(e @ QueryRejection::FailedToDeserializeQueryString(_)) => {
                Err(ApiError::bad_request(format!("invalid query string: {}", source_text(&e))))
            }
            Err(_) => Err(ApiError::bad_request("invalid query string")),
        }
    }
}

/// Path parameters; rejections become 400.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(v)) => Ok(ApiPath(v)),
            Err(e @ PathRejection::FailedToDeserializePathParams(_)) => {
                Err(ApiError::bad_request(format!("invalid path: {}", source_text(&e))))
            }
            Err(e) => Err(ApiError::internal(e)),
        }
    }
}

/// The peer address, when the server recorded it (`serve` does; in-process tests may not).
#[derive(Debug, Clone, Copy)]
pub struct SourceAddr(pub Option<SocketAddr>);

impl SourceAddr {
    /// The address's IP as text, for the audit log.
    pub fn ip_text(&self) -> Option<String> {
        self.0.map(|a| a.ip().to_string())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for SourceAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let peer = parts.extensions.get::<ConnectInfo<crate::listener::PeerAddr>>().map(|c| c.0.0);
        Ok(SourceAddr(peer.or_else(|| parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0))))
    }
}
