//! `Idempotency-Key` on POST: a retried request with the same key and body gets the first
//! response again (marked `Idempotent-Replayed: true`) instead of acting twice. Server
//! errors are not remembered, so a retry after one runs again.
//!
//! A record belongs to the API key that sent the request: the same `Idempotency-Key` from
//! any other key is that key's own request and runs as it. Callers authorize (`require`,
//! and resolve the project the path names for the caller) before calling `idempotent`, so
//! a key that lost access meanwhile is refused rather than answered. The stored copy never
//! holds a secret: it goes through `redact::redact`, and a replay names what it left out in
//! `Idempotent-Redacted`.

use std::future::Future;

use axum::Json;
use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use catalog::{Idempotency, IdempotencyScope, StoredResponse};

use super::redact::redact;
use crate::Control;
use crate::auth::Caller;
use crate::error::ApiError;

const HEADER: &str = "idempotency-key";
const MAX_KEY_LEN: usize = 255;

/// Runs `run` once per (caller's API key, `Idempotency-Key`, request). `route` is the method
/// and the canonical path (`POST /v1/projects/proj_…/branches`, project ids rather than
/// names); it and the body are what "the same request" means.
pub(crate) async fn idempotent<F, Fut>(
    control: &Control,
    caller: &Caller,
    headers: &HeaderMap,
    route: &str,
    body: &Bytes,
    run: F,
) -> Result<Response, ApiError>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<(StatusCode, serde_json::Value), ApiError>>,
{
    let Some(key) = headers.get(HEADER) else {
        return run().await.map(|(status, body)| (status, Json(body)).into_response());
    };
    let key = key
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= MAX_KEY_LEN && k.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_idempotency_key",
                format!("Idempotency-Key must be 1 to {MAX_KEY_LEN} visible ASCII characters"),
            )
        })?;
    let scope = IdempotencyScope { organization_id: caller.org(), api_key_id: &caller.key.id, key };
    // Keyed: a body can hold a password (a registered upstream's), and a plain hash of it
    // could be guessed at by whoever reads the catalog.
    let hash = control.master_key.mac(&[route.as_bytes(), body]);

    match control.catalog.begin_idempotent(scope, &hash).await? {
        Idempotency::Reserved => {
            let result = run().await;
            let (status, body) = match result {
                Ok((status, body)) => (status, body),
                Err(e) => (e.status, e.body()),
            };
            if status.is_server_error() {
                control.catalog.release_idempotent(scope).await?;
            } else {
                let mut stored = body.clone();
                let redacted = redact(&mut stored);
                let stored = StoredResponse { status: status.as_u16(), body: stored, redacted };
                control.catalog.finish_idempotent(scope, &stored).await?;
            }
            Ok((status, Json(body)).into_response())
        }
        Idempotency::Replay(stored) => {
            let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
            let mut response = (status, Json(stored.body)).into_response();
            let headers = response.headers_mut();
            headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
            if !stored.redacted.is_empty() {
                // Pointers are built from JSON member names; one that is no valid header
                // value still leaves the body's note saying what happened.
                if let Ok(value) = HeaderValue::from_str(&stored.redacted.join(",")) {
                    headers.insert("idempotent-redacted", value);
                }
            }
            Ok(response)
        }
        Idempotency::InProgress => Err(ApiError::conflict(
            "a request with this Idempotency-Key is still being processed; retry later",
        )),
        Idempotency::Mismatch => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            "this Idempotency-Key was used with a different request",
        )),
    }
}
