//! `Idempotency-Key` on POST: a retried request with the same key and body gets the first
//! response again (marked `Idempotent-Replayed: true`) instead of acting twice. Server
//! errors are not remembered, so a retry after one runs again.

use std::future::Future;

use axum::Json;
use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use catalog::{Idempotency, StoredResponse};
use sha2::{Digest, Sha256};

use crate::Control;
use crate::auth::Caller;
use crate::error::ApiError;

const HEADER: &str = "idempotency-key";
const MAX_KEY_LEN: usize = 255;

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
    let mut hash = Sha256::new();
    hash.update(route.as_bytes());
    hash.update([0]);
    hash.update(body);
    let hash = hash.finalize();

    match control.catalog.begin_idempotent(caller.org(), key, &hash).await? {
        Idempotency::Reserved => {
            let result = run().await;
            let (status, body) = match &result {
                Ok((status, body)) => (*status, body.clone()),
                Err(e) => (e.status, e.body()),
            };
            if status.is_server_error() {
                control.catalog.release_idempotent(caller.org(), key).await?;
            } else {
                let stored = StoredResponse { status: status.as_u16(), body: body.clone() };
                control.catalog.finish_idempotent(caller.org(), key, &stored).await?;
            }
            Ok((status, Json(body)).into_response())
        }
        Idempotency::Replay(stored) => {
            let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
            let mut response = (status, Json(stored.body)).into_response();
            response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
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
