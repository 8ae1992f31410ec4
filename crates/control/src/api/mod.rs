//! The HTTP API under `/v1` (and the `/database/v1` alias some clients call): routing, the
//! JSON body and query parsing that turns every malformed request into the documented error
//! shape, cursor pagination, and the OpenAPI document.

mod branches;
mod connection;
mod credentials;
mod databases;
mod idempotency;
mod jobs;
mod keys;
mod openapi;
pub(crate) mod previews;
mod projects;
mod redact;
mod tls;

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::http::StatusCode;
use axum::routing::get;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use utoipa::IntoParams;

use crate::Control;
use crate::error::ApiError;

pub use databases::{
    DEFAULT_MIN_POOL_SIZE, DEFAULT_POOL_SIZE, DatabasePoolConfig, ProbeError, Probed, SSL_MODES, Upstream,
    UpstreamProbe,
};
pub use openapi::ApiDoc;

pub fn router(control: Arc<Control>) -> Router {
    Router::new()
        .route("/v1/openapi.json", get(openapi::document))
        .route("/v1/tls/ca.pem", get(tls::ca_pem))
        .route("/v1/projects", get(projects::list).post(projects::create))
        .route("/v1/projects/{id}", get(projects::get).patch(projects::update).delete(projects::delete))
        .route("/v1/projects/{id}/branches", get(branches::list).post(branches::create))
        .route("/v1/projects/{id}/branches/{branch}", get(branches::get).delete(branches::delete))
        .route("/v1/projects/{id}/branches/{branch}/reset", axum::routing::post(branches::reset))
        .route("/v1/projects/{id}/preview-databases", get(previews::list).post(previews::create))
        .route("/v1/preview-databases/{id}", get(previews::get).delete(previews::delete))
        .route("/v1/preview-databases/{id}/connections", get(previews::connections))
        .route("/v1/projects/{id}/databases", get(databases::list).post(databases::create))
        .route(
            "/v1/projects/{id}/databases/{database}",
            get(databases::get).patch(databases::update).delete(databases::delete),
        )
        .route("/v1/projects/{id}/connection", get(connection::connection))
        .route("/database/v1/projects/{id}/connection", get(connection::connection_alias))
        .route("/v1/projects/{id}/connections", get(connection::connections))
        .route("/v1/projects/{id}/credentials/rotate", axum::routing::post(credentials::rotate))
        .route("/v1/jobs", get(jobs::list))
        .route("/v1/jobs/{id}", get(jobs::get))
        .route("/v1/keys", get(keys::list).post(keys::create))
        .route("/v1/keys/{id}", axum::routing::delete(keys::revoke))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed here")
        })
        .layer(axum::middleware::map_response(json_rejections))
        .with_state(control)
}

/// The largest request body read (axum's default for a buffered body).
const BODY_LIMIT: usize = 2 << 20;

/// Rejections axum answers before a handler runs (a body over the limit) come in the API's
/// `{error}` shape like every other error, not as plain text.
async fn json_rejections(response: axum::response::Response) -> axum::response::Response {
    use axum::response::IntoResponse;
    let json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE && !json {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the request body exceeds the limit of {} MiB", BODY_LIMIT >> 20),
        )
        .into_response();
    }
    response
}

/// Parses a JSON body: malformed JSON is 400 `invalid_json`; well-formed JSON of the wrong
/// shape (unknown or missing fields, wrong types) is 422 `invalid_request`.
pub(crate) fn parse_json<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::invalid(e.to_string()),
        _ => ApiError::bad_request("invalid_json", format!("request body is not valid JSON: {e}")),
    })
}

pub(crate) fn query<T>(q: Result<axum::extract::Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|axum::extract::Query(q)| q).map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))
}

/// `?limit=&cursor=`: at most `limit` (1 to 100, default 20) items after `cursor`, the
/// `next_cursor` of the previous page.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    pub limit: Option<i64>,
    pub cursor: Option<String>,
}

impl PageQuery {
    pub fn page(&self) -> catalog::Page {
        catalog::Page::new(self.cursor.clone(), self.limit)
    }
}
