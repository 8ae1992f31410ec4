//! Connection strings, credentials included, pointing at the proxy with `sslmode=require`,
//! in the shapes other platforms' clients already read: `{connectionUri, branch, pooled}`
//! (also under `/database/v1`) and `{"connections": {direct_url, pooled_url, username}}`.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use catalog::{Scope, Secret};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::projects::find;
use super::query;
use crate::Control;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::names::owner_role;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ConnectionQuery {
    /// Branch id or name; the default branch `main` when absent.
    pub branch: Option<String>,
    /// The pooled port (true) or the direct one (false, the default). Also `1`/`0` and
    /// `True`/`False`, as case.dev's SDKs send it.
    #[serde(default, deserialize_with = "lenient_bool")]
    #[param(value_type = Option<bool>)]
    pub pooled: Option<bool>,
}

/// A query-string boolean as SDKs write it: `true`/`false` in any case, `1`/`0`, `yes`/`no`.
fn lenient_bool<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    let s = String::deserialize(d)?;
    match s.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(Some(true)),
        "false" | "0" | "no" | "off" => Ok(Some(false)),
        _ => Err(serde::de::Error::custom(format!("pooled must be true or false, not {s:?}"))),
    }
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Connection {
    pub connection_uri: String,
    pub branch: String,
    pub pooled: bool,
}

#[derive(Serialize, ToSchema)]
pub struct Connections {
    pub connections: ConnectionSet,
}

#[derive(Serialize, ToSchema)]
pub struct ConnectionSet {
    pub direct_url: String,
    pub pooled_url: String,
    pub username: String,
}

/// Percent-encodes everything but unreserved URI characters.
pub(crate) fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

struct Credentials {
    username: String,
    password: Secret,
    database: String,
}

async fn credentials(
    control: &Control,
    caller: &Caller,
    id: &str,
    branch: Option<&str>,
) -> Result<(Credentials, String), ApiError> {
    let project = find(control, caller, id).await?;
    let branch = control
        .catalog
        .find_branch(&project.id, None, branch.unwrap_or(catalog::MAIN_BRANCH))
        .await?
        .ok_or_else(|| ApiError::not_found("branch"))?;
    let username = owner_role(&project.name);
    let role = control
        .catalog
        .roles(&project.id)
        .await?
        .into_iter()
        .find(|r| r.name == username)
        .ok_or_else(|| ApiError::not_found("owner role"))?;
    // In a rotation's grace period the new password is the one to hand out.
    let sealed = match (&role.grace_until, &role.next_password_ciphertext) {
        (Some(_), Some(next)) => next,
        _ => &role.password_ciphertext,
    };
    let password = control.master_key.open_secret(sealed, &role.id)?;
    // DESIGN.md: `<project>` routes to the default branch, `<project>.<branch>` to others.
    let database = catalog::branch_database(&project.name, &branch.name);
    Ok((Credentials { username, password, database }, branch.name))
}

fn uri(control: &Control, c: &Credentials, pooled: bool) -> String {
    let e = &control.endpoints;
    let port = if pooled { e.pooled_port } else { e.direct_port };
    format!(
        "postgresql://{}:{}@{}:{port}/{}?sslmode=require",
        encode(&c.username),
        encode(c.password.expose()),
        e.host,
        encode(&c.database)
    )
}

#[utoipa::path(get, path = "/v1/projects/{id}/connection", tag = "connections",
    params(("id" = String, Path, description = "Project id or name"), ConnectionQuery),
    responses((status = 200, body = Connection), (status = 404, body = crate::error::ErrorBody)),
    security(("bearer" = ["credentials:read"])))]
pub async fn connection(
    State(control): State<Arc<Control>>,
    caller: Caller,
    Path(id): Path<String>,
    q: Result<Query<ConnectionQuery>, QueryRejection>,
) -> Result<Json<Connection>, ApiError> {
    caller.require(Scope::CredentialsRead)?;
    let q = query(q)?;
    let (creds, branch) = credentials(&control, &caller, &id, q.branch.as_deref()).await?;
    let pooled = q.pooled.unwrap_or(false);
    Ok(Json(Connection { connection_uri: uri(&control, &creds, pooled), branch, pooled }))
}

/// The same under `/database/v1`, the path some clients call.
#[utoipa::path(get, path = "/database/v1/projects/{id}/connection", tag = "connections",
    params(("id" = String, Path, description = "Project id or name"), ConnectionQuery),
    responses((status = 200, body = Connection), (status = 404, body = crate::error::ErrorBody)),
    security(("bearer" = ["credentials:read"])))]
pub async fn connection_alias(
    control: State<Arc<Control>>,
    caller: Caller,
    id: Path<String>,
    q: Result<Query<ConnectionQuery>, QueryRejection>,
) -> Result<Json<Connection>, ApiError> {
    connection(control, caller, id, q).await
}

/// `?branch=` (default `main`).
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ConnectionsQuery {
    /// Branch id or name; the default branch `main` when absent.
    pub branch: Option<String>,
}

#[utoipa::path(get, path = "/v1/projects/{id}/connections", tag = "connections",
    params(("id" = String, Path, description = "Project id or name"), ConnectionsQuery),
    responses((status = 200, body = Connections), (status = 404, body = crate::error::ErrorBody)),
    security(("bearer" = ["credentials:read"])))]
pub async fn connections(
    State(control): State<Arc<Control>>,
    caller: Caller,
    Path(id): Path<String>,
    q: Result<Query<ConnectionsQuery>, QueryRejection>,
) -> Result<Json<Connections>, ApiError> {
    caller.require(Scope::CredentialsRead)?;
    let q = query(q)?;
    Ok(Json(connection_set(&control, &caller, &id, q.branch.as_deref()).await?))
}

/// Both URLs of a project's branch (or preview).
pub(crate) async fn connection_set(
    control: &Control,
    caller: &Caller,
    project: &str,
    branch: Option<&str>,
) -> Result<Connections, ApiError> {
    let (creds, _) = credentials(control, caller, project, branch).await?;
    Ok(Connections {
        connections: ConnectionSet {
            direct_url: uri(control, &creds, false),
            pooled_url: uri(control, &creds, true),
            username: creds.username,
        },
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn encodes_reserved_characters() {
        assert_eq!(super::encode("a-b_c.d~e"), "a-b_c.d~e");
        assert_eq!(super::encode("p@ss:w/rd"), "p%40ss%3Aw%2Frd");
    }
}
