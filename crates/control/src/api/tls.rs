//! `GET /v1/tls/ca.pem`: the certificate of the local CA that signed the proxy's certificate,
//! for clients that verify (node-postgres treats `sslmode=require` as verify-full). Served
//! without authentication, like the OpenAPI document: it is public by nature. It must never
//! serve a key, and says 404 when the proxy's certificate is not the local CA's.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::Control;
use crate::error::ApiError;

pub const PEM_CONTENT_TYPE: &str = "application/x-pem-file";

#[utoipa::path(get, path = "/v1/tls/ca.pem", tag = "tls",
    description = "The local CA's certificate (PEM). Give it to clients as `sslrootcert=` (libpq) or \
        `NODE_EXTRA_CA_CERTS` (node-postgres). 404 when Berth serves a certificate of your own \
        (`berth up --tls-cert`), which the local CA did not sign.",
    responses(
        (status = 200, content_type = "application/x-pem-file", body = String, description = "The CA certificate"),
        (status = 404, body = crate::error::ErrorBody, description = "The proxy's certificate is not from the local CA"),
    ))]
pub async fn ca_pem(State(control): State<Arc<Control>>) -> Response {
    match control.local_ca_pem.get() {
        Some(pem) => ([(header::CONTENT_TYPE, PEM_CONTENT_TYPE)], pem.clone()).into_response(),
        None => ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "the proxy serves a certificate of the operator's own, not one from Berth's local CA",
        )
        .into_response(),
    }
}
