//! `/v1/keys`: create (the plaintext is in the response, once), list, revoke. A key can
//! only hand out scopes it holds itself, and a project-scoped key only keys for its own
//! project, so no key can mint a stronger one.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use catalog::{NewApiKey, Scope};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::idempotency::idempotent;
use super::projects::find;
use super::{PageQuery, parse_json, query};
use crate::Control;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::views::KeyView;

const MAX_KEY_NAME_LEN: usize = 100;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyRequest {
    pub name: String,
    /// Scopes the key gets (each one the creating key holds): `projects:read`,
    /// `projects:write`, `credentials:read`, `credentials:write`, `jobs:read`, `keys:write`.
    pub scopes: Vec<String>,
    /// Project id or name to scope the key to; an organization-wide key when absent.
    pub project: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct CreatedKey {
    pub key: KeyView,
    /// The key itself (`berth_live_…`). Shown only in this response: an `Idempotency-Key`
    /// replay of it holds `shown once; not replayable` and says `Idempotent-Redacted: /token`.
    pub token: String,
}

#[derive(Serialize, ToSchema)]
pub struct KeyList {
    pub keys: Vec<KeyView>,
    pub next_cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct RevokedKey {
    pub key: KeyView,
}

#[utoipa::path(post, path = "/v1/keys", tag = "keys", request_body = CreateKeyRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Retry safely")),
    responses((status = 201, body = CreatedKey), (status = 403, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody)),
    security(("bearer" = ["keys:write"])))]
pub async fn create(
    State(control): State<Arc<Control>>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    caller.require(Scope::KeysWrite)?;
    idempotent(&control, &caller, &headers, "POST /v1/keys", &body, || async {
        let req: CreateKeyRequest = parse_json(&body)?;
        let name = req.name.trim();
        if name.is_empty() || name.len() > MAX_KEY_NAME_LEN || name.chars().any(char::is_control) {
            return Err(ApiError::invalid(format!(
                "name must be 1 to {MAX_KEY_NAME_LEN} printable characters"
            )));
        }
        if req.scopes.is_empty() {
            return Err(ApiError::invalid("scopes must name at least one scope"));
        }
        let mut scopes = Vec::new();
        for s in &req.scopes {
            let scope = Scope::parse(s).ok_or_else(|| ApiError::invalid(format!("unknown scope {s:?}")))?;
            if !caller.key.has_scope(scope) {
                return Err(ApiError::forbidden(format!("cannot grant {s}: this API key does not hold it")));
            }
            if !scopes.contains(&scope) {
                scopes.push(scope);
            }
        }
        let project_id = match (&req.project, caller.project_scope()) {
            (Some(p), _) => Some(find(&control, &caller, p).await?.id),
            (None, Some(own)) => Some(own.to_owned()),
            (None, None) => None,
        };
        let new =
            NewApiKey { organization_id: caller.org().to_owned(), project_id, name: name.to_owned(), scopes };
        let (key, token) = control.catalog.create_api_key(&new).await?;
        tracing::info!(key_id = %key.id, by = %caller.key.id, "API key created");
        let created = CreatedKey { key: key.into(), token: token.expose().to_owned() };
        Ok((StatusCode::CREATED, serde_json::to_value(created).expect("views serialize")))
    })
    .await
}

#[utoipa::path(get, path = "/v1/keys", tag = "keys", params(PageQuery),
    responses((status = 200, body = KeyList)), security(("bearer" = ["keys:write"])))]
pub async fn list(
    State(control): State<Arc<Control>>,
    caller: Caller,
    q: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<KeyList>, ApiError> {
    caller.require(Scope::KeysWrite)?;
    let page = query(q)?.page();
    let rows = control.catalog.list_api_keys(caller.org(), caller.project_scope(), &page).await?;
    let (rows, next_cursor) = page.finish(rows, |k| &k.id);
    Ok(Json(KeyList { keys: rows.into_iter().map(Into::into).collect(), next_cursor }))
}

#[utoipa::path(delete, path = "/v1/keys/{id}", tag = "keys",
    params(("id" = String, Path, description = "Key id (`key_…`)")),
    responses((status = 200, body = RevokedKey), (status = 404, body = crate::error::ErrorBody)),
    security(("bearer" = ["keys:write"])))]
pub async fn revoke(
    State(control): State<Arc<Control>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<RevokedKey>, ApiError> {
    caller.require(Scope::KeysWrite)?;
    let key = control
        .catalog
        .revoke_api_key(caller.org(), caller.project_scope(), &id)
        .await?
        .ok_or_else(|| ApiError::not_found("API key"))?;
    tracing::info!(key_id = %key.id, by = %caller.key.id, "API key revoked");
    Ok(Json(RevokedKey { key: key.into() }))
}
