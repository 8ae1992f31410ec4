//! `/v1/projects/{project_id}/databases`: registered upstreams in PgBeam's shape. A
//! registration is checked against the upstream (through the [`UpstreamProbe`] the binary
//! supplies) before it is stored; its password is sealed and never echoed. The proxy serves
//! each one as database `db_…`, and with a public host also by its own name under the
//! project's SNI label, and looks the upstream's other roles up by auth query.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use catalog::{RegisteredDatabase, RegisteredUpdate, Scope, Secret, ids};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::idempotency::idempotent;
use super::projects::find;
use super::{PageQuery, parse_json, query};
use crate::Control;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::views::PoolMode;

/// `ssl_mode` values the proxy implements, as libpq spells them.
pub const SSL_MODES: [&str; 5] = ["disable", "prefer", "require", "verify-ca", "verify-full"];
const MAX_POOL_SIZE: u32 = 10_000;
const MAX_CACHE_ENTRIES: u32 = 10_000_000;
const MAX_CACHE_SECONDS: u32 = 7 * 24 * 3600;

/// What the binary checks a registration with: may this upstream be registered, and can
/// these credentials log in? `caller` is the API key's id, for a per-key rate limit.
pub trait UpstreamProbe: Send + Sync + 'static {
    fn probe<'a>(
        &'a self,
        caller: &'a str,
        db: &'a Upstream,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Probed, ProbeError>> + Send + 'a>>;
}

/// What a registration check that passed saw, stored with the registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probed {
    /// The password exchange the upstream asked for, as pg_hba.conf spells it
    /// (`scram-sha-256`, `md5`, `password`): later logins asked for a weaker one are refused.
    pub auth_method: String,
}

/// Largest `ssl_root_cert` accepted: a CA bundle of a few dozen certificates.
const MAX_ROOT_CERT_BYTES: usize = 256 * 1024;

/// Why a registration check said no.
#[derive(Debug)]
pub enum ProbeError {
    /// The upstream is not allowed, or did not accept the login: in Berth's words only.
    Rejected(String),
    /// This key ran too many checks lately; it may try again after this long.
    RateLimited(std::time::Duration),
}

/// An upstream to connect to, with its password unsealed.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub host: String,
    pub port: u16,
    pub name: String,
    pub username: String,
    pub password: Secret,
    pub ssl_mode: String,
    /// PEM roots for `verify-ca`/`verify-full`; `None`: the system's (verify-full only).
    pub ssl_root_cert: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default)]
    pub ttl_seconds: u32,
    #[serde(default)]
    pub max_entries: u32,
    #[serde(default)]
    pub swr_seconds: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DatabasePoolConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool_size: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_pool_size: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool_mode: Option<PoolMode>,
    /// Clients that may hold or wait for a server at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_active: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DatabaseRole {
    #[default]
    Primary,
    Replica,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterDatabaseRequest {
    /// Host name, IP address, or the directory of a unix socket (an absolute path).
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u16,
    /// The database name on the upstream.
    pub name: String,
    pub username: String,
    pub password: String,
    /// `disable`, `prefer`, `require` (default), `verify-ca` or `verify-full`.
    #[serde(default = "default_ssl_mode")]
    pub ssl_mode: String,
    /// The CA certificates (PEM) `verify-ca` and `verify-full` trust for this upstream.
    /// Without it, `verify-full` trusts the system's roots and `verify-ca` is refused (any
    /// publicly issued certificate would pass it), as libpq's `sslrootcert=system` does.
    #[serde(default)]
    pub ssl_root_cert: Option<String>,
    #[serde(default)]
    pub role: DatabaseRole,
    #[serde(default)]
    pub pool_region: String,
    #[serde(default)]
    pub cache_config: CacheConfig,
    #[serde(default)]
    pub pool_config: DatabasePoolConfig,
}

fn default_port() -> u16 {
    5432
}

fn default_ssl_mode() -> String {
    "require".into()
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateDatabaseRequest {
    #[serde(default)]
    pub cache_config: Option<CacheConfig>,
    #[serde(default)]
    pub pool_config: Option<DatabasePoolConfig>,
    #[serde(default)]
    pub pool_region: Option<String>,
}

/// A registered database as PgBeam shows it: every field but the password.
#[derive(Debug, Serialize, ToSchema)]
pub struct DatabaseView {
    pub id: String,
    pub project_id: String,
    pub host: String,
    pub port: i32,
    pub name: String,
    pub username: String,
    pub ssl_mode: String,
    /// The CA certificates (PEM) the upstream's certificate is verified against; null for
    /// the system's roots (or no verification).
    pub ssl_root_cert: Option<String>,
    /// The password exchange the upstream asked for at registration (`scram-sha-256`,
    /// `md5`, `password`); a login asked for a weaker one is refused. Null for
    /// registrations made before it was recorded.
    pub auth_method: Option<String>,
    pub role: String,
    pub pool_region: String,
    pub cache_config: serde_json::Value,
    pub pool_config: serde_json::Value,
    /// Through Berth's pooled port; log in with the upstream's own roles and passwords. With
    /// a public host, `<project>.<public-host>` and the upstream's own database name (routed by
    /// SNI); else the `db_…` id as the database.
    pub connection_string: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Serialize, ToSchema)]
pub struct DatabaseList {
    pub databases: Vec<DatabaseView>,
    pub next_cursor: Option<String>,
}

/// What a registration's pool runs with when `pool_config` leaves a field out: the proxy's
/// defaults (`proxy::PoolConfig::default()`; `berth`'s tests check the two agree).
pub const DEFAULT_POOL_SIZE: u32 = 20;
pub const DEFAULT_MIN_POOL_SIZE: u32 = 0;
/// `pool_region` of a registration that named none: Berth serves every database from where
/// it runs.
pub const LOCAL_REGION: &str = "local";

/// Every field of `pool_config` with the value in force (`max_active` null: no limit), as
/// PgBeam answers, instead of only those the registration gave.
fn pool_in_force(stored: &serde_json::Value) -> serde_json::Value {
    let given: DatabasePoolConfig = serde_json::from_value(stored.clone()).unwrap_or_default();
    serde_json::json!({
        "pool_size": given.pool_size.unwrap_or(DEFAULT_POOL_SIZE),
        "min_pool_size": given.min_pool_size.unwrap_or(DEFAULT_MIN_POOL_SIZE),
        "pool_mode": given.pool_mode.unwrap_or(crate::views::PoolMode::Transaction),
        "max_active": given.max_active,
    })
}

/// Which of a project's registered databases its SNI label serves by their own names, when
/// connection strings name that label (`Endpoints::sni_host` set).
struct SniNames {
    /// The label: the project's name, lower-cased as DNS names print.
    label: String,
    /// The project's own database (its main branch) has this name under the label first.
    project: String,
    owners: std::collections::HashSet<String>,
}

async fn sni_names(control: &Control, project: &catalog::Project) -> Result<Option<SniNames>, ApiError> {
    if control.endpoints.sni_host.is_none() {
        return Ok(None);
    }
    let owners = control.catalog.sni_owners(&project.id, &project.name).await?;
    Ok(Some(SniNames { label: project.name.to_ascii_lowercase(), project: project.name.clone(), owners }))
}

/// Through the pooled port: `<project>.<public-host>/<upstream database>` when the label
/// serves this database by its name (DESIGN.md, Routing), else the `db_…` name on any host.
fn connection_string(control: &Control, d: &RegisteredDatabase, sni: Option<&SniNames>) -> String {
    let e = &control.endpoints;
    let user = super::connection::encode(&d.username);
    match (sni, &e.sni_host) {
        (Some(n), Some(public)) if d.name != n.project && n.owners.contains(&d.id) => format!(
            "postgresql://{user}@{}.{public}:{}/{}?sslmode=require",
            n.label,
            e.pooled_port,
            super::connection::encode(&d.name)
        ),
        _ => format!("postgresql://{user}@{}:{}/{}?sslmode=require", e.host, e.pooled_port, d.id),
    }
}

fn view(control: &Control, d: RegisteredDatabase, sni: Option<&SniNames>) -> DatabaseView {
    let connection_string = connection_string(control, &d, sni);
    DatabaseView {
        id: d.id,
        project_id: d.project_id,
        host: d.host,
        port: d.port,
        name: d.name,
        username: d.username,
        ssl_mode: d.ssl_mode,
        ssl_root_cert: d.ssl_root_cert,
        auth_method: d.auth_method,
        role: d.role,
        pool_region: if d.pool_region.is_empty() { LOCAL_REGION.to_owned() } else { d.pool_region },
        cache_config: d.cache_config,
        pool_config: pool_in_force(&d.pool_config),
        connection_string,
        created_at: d.created_at,
        updated_at: d.updated_at,
    }
}

fn printable(field: &str, v: &str, max: usize) -> Result<(), ApiError> {
    if v.is_empty() || v.len() > max || v.chars().any(|c| c.is_control()) {
        return Err(ApiError::invalid(format!("{field} must be 1 to {max} printable characters")));
    }
    Ok(())
}

fn validate_host(host: &str) -> Result<(), ApiError> {
    printable("host", host, 253)?;
    if host.starts_with('/') {
        return Ok(());
    }
    if host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']' | '_')) {
        Ok(())
    } else {
        Err(ApiError::invalid("host must be a host name, an IP address, or a socket directory"))
    }
}

/// `ssl_root_cert` only where it is used, of a sane size, and no verify-ca on the system's
/// roots. Whether it holds usable certificates is the check's to say.
fn validate_roots(mode: &str, roots: Option<&str>) -> Result<(), ApiError> {
    match roots {
        Some(_) if !matches!(mode, "verify-ca" | "verify-full") => {
            Err(ApiError::invalid("ssl_root_cert applies to ssl_mode verify-ca and verify-full only"))
        }
        Some(pem) if pem.len() > MAX_ROOT_CERT_BYTES || !pem.contains("-----BEGIN CERTIFICATE-----") => {
            Err(ApiError::invalid(format!(
                "ssl_root_cert must be PEM certificates (-----BEGIN CERTIFICATE-----), at most {} KiB",
                MAX_ROOT_CERT_BYTES / 1024
            )))
        }
        None if mode == "verify-ca" => Err(ApiError::invalid(
            "ssl_mode verify-ca needs ssl_root_cert (the CA that signed the upstream's certificate): \
             with the system's roots any publicly issued certificate would pass; use verify-full for \
             a certificate from a public CA",
        )),
        _ => Ok(()),
    }
}

fn validate_cache(c: &CacheConfig) -> Result<(), ApiError> {
    if c.enabled && c.ttl_seconds == 0 {
        return Err(ApiError::invalid(
            "cache_config.ttl_seconds must be at least 1 when the cache is enabled",
        ));
    }
    if c.enabled && c.max_entries == 0 {
        return Err(ApiError::invalid(
            "cache_config.max_entries must be at least 1 when the cache is enabled",
        ));
    }
    if c.max_entries > MAX_CACHE_ENTRIES {
        return Err(ApiError::invalid(format!(
            "cache_config.max_entries must be at most {MAX_CACHE_ENTRIES}"
        )));
    }
    if c.ttl_seconds > MAX_CACHE_SECONDS || c.swr_seconds > MAX_CACHE_SECONDS {
        return Err(ApiError::invalid("cache_config durations must be at most 7 days"));
    }
    Ok(())
}

fn validate_pool(p: &DatabasePoolConfig) -> Result<(), ApiError> {
    if p.pool_size.is_some_and(|s| !(1..=MAX_POOL_SIZE).contains(&s)) {
        return Err(ApiError::invalid(format!("pool_config.pool_size must be 1 to {MAX_POOL_SIZE}")));
    }
    if let (Some(min), Some(size)) = (p.min_pool_size, p.pool_size)
        && min > size
    {
        return Err(ApiError::invalid("pool_config.min_pool_size exceeds pool_size"));
    }
    if p.max_active == Some(0) {
        return Err(ApiError::invalid("pool_config.max_active must be at least 1"));
    }
    Ok(())
}

fn to_json<T: Serialize>(value: &T) -> serde_json::Value {
    serde_json::to_value(value).expect("API views serialize to JSON")
}

#[utoipa::path(post, path = "/v1/projects/{project_id}/databases", tag = "databases", request_body = RegisterDatabaseRequest,
    params(("project_id" = String, Path, description = "Project id or name")),
    responses((status = 201, body = DatabaseView), (status = 422, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody)),
    security(("bearer" = ["projects:write"])))]
pub async fn create(
    State(control): State<Arc<Control>>,
    caller: Caller,
    Path(project_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    caller.require(Scope::ProjectsWrite)?;
    let project = find(&control, &caller, &project_id).await?;
    let path = format!("POST /v1/projects/{}/databases", project.id);
    idempotent(&control, &caller, &headers, &path, &body, || async {
        let req: RegisterDatabaseRequest = parse_json(&body)?;
        validate_host(&req.host)?;
        printable("name", &req.name, 63)?;
        printable("username", &req.username, 63)?;
        printable("pool_region", &req.pool_region, 64)
            .or_else(|e| req.pool_region.is_empty().then_some(()).ok_or(e))?;
        if req.port == 0 {
            return Err(ApiError::invalid("port must be 1 to 65535"));
        }
        if !SSL_MODES.contains(&req.ssl_mode.as_str()) {
            return Err(ApiError::invalid(format!("ssl_mode must be one of {}", SSL_MODES.join(", "))));
        }
        validate_roots(&req.ssl_mode, req.ssl_root_cert.as_deref())?;
        validate_cache(&req.cache_config)?;
        validate_pool(&req.pool_config)?;
        let upstream = Upstream {
            host: req.host.clone(),
            port: req.port,
            name: req.name.clone(),
            username: req.username.clone(),
            password: Secret::new(req.password.clone()),
            ssl_mode: req.ssl_mode.clone(),
            ssl_root_cert: req.ssl_root_cert.clone(),
        };
        let probe = control.upstream_probe.get().ok_or_else(|| {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "upstreams cannot be checked here")
        })?;
        let probed = probe.probe(&caller.key.id, &upstream).await.map_err(|e| match e {
            ProbeError::Rejected(why) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "upstream_rejected",
                format!("the upstream cannot be registered: {why}"),
            ),
            ProbeError::RateLimited(wait) => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!(
                    "this API key checked too many upstreams lately; retry in {} s",
                    wait.as_secs().max(1)
                ),
            ),
        })?;
        let id = ids::generate(ids::DATABASE);
        let row = RegisteredDatabase {
            password_ciphertext: control.master_key.seal_secret(&upstream.password, &id),
            id,
            project_id: project.id.clone(),
            host: req.host,
            port: i32::from(req.port),
            name: req.name,
            username: req.username,
            ssl_mode: req.ssl_mode,
            role: to_json(&req.role).as_str().unwrap_or("primary").to_owned(),
            pool_region: req.pool_region,
            cache_config: to_json(&req.cache_config),
            pool_config: to_json(&req.pool_config),
            auth_method: Some(probed.auth_method),
            ssl_root_cert: req.ssl_root_cert,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        };
        let stored = control.catalog.insert_registered_database(&row).await?;
        tracing::info!(project_id = %stored.project_id, database_id = %stored.id, "upstream registered");
        let sni = sni_names(&control, &project).await?;
        Ok((StatusCode::CREATED, to_json(&view(&control, stored, sni.as_ref()))))
    })
    .await
}

#[utoipa::path(get, path = "/v1/projects/{project_id}/databases", tag = "databases",
    params(("project_id" = String, Path, description = "Project id or name"), PageQuery),
    responses((status = 200, body = DatabaseList)), security(("bearer" = ["projects:read"])))]
pub async fn list(
    State(control): State<Arc<Control>>,
    caller: Caller,
    Path(project_id): Path<String>,
    q: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<DatabaseList>, ApiError> {
    caller.require(Scope::ProjectsRead)?;
    let page = query(q)?.page();
    let project = find(&control, &caller, &project_id).await?;
    let rows = control.catalog.list_registered_databases(&project.id, &page).await?;
    let (rows, next_cursor) = page.finish(rows, |d| &d.id);
    let sni = sni_names(&control, &project).await?;
    let databases = rows.into_iter().map(|d| view(&control, d, sni.as_ref())).collect();
    Ok(Json(DatabaseList { databases, next_cursor }))
}

async fn visible(
    control: &Control,
    caller: &Caller,
    project_id: &str,
    id: &str,
) -> Result<(catalog::Project, RegisteredDatabase), ApiError> {
    let project = find(control, caller, project_id).await?;
    let db = control.catalog.registered_database(&project.id, id).await?;
    Ok((project, db.ok_or_else(|| ApiError::not_found("database"))?))
}

#[utoipa::path(get, path = "/v1/projects/{project_id}/databases/{id}", tag = "databases",
    params(("project_id" = String, Path, description = "Project id or name"), ("id" = String, Path, description = "Database id (db_…)")),
    responses((status = 200, body = DatabaseView), (status = 404, body = crate::error::ErrorBody)),
    security(("bearer" = ["projects:read"])))]
pub async fn get(
    State(control): State<Arc<Control>>,
    caller: Caller,
    Path((project_id, id)): Path<(String, String)>,
) -> Result<Json<DatabaseView>, ApiError> {
    caller.require(Scope::ProjectsRead)?;
    let (project, db) = visible(&control, &caller, &project_id, &id).await?;
    let sni = sni_names(&control, &project).await?;
    Ok(Json(view(&control, db, sni.as_ref())))
}

#[utoipa::path(patch, path = "/v1/projects/{project_id}/databases/{id}", tag = "databases", request_body = UpdateDatabaseRequest,
    params(("project_id" = String, Path, description = "Project id or name"), ("id" = String, Path, description = "Database id (db_…)")),
    responses((status = 200, body = DatabaseView), (status = 404, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody)),
    security(("bearer" = ["projects:write"])))]
pub async fn update(
    State(control): State<Arc<Control>>,
    caller: Caller,
    Path((project_id, id)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<DatabaseView>, ApiError> {
    caller.require(Scope::ProjectsWrite)?;
    let req: UpdateDatabaseRequest = parse_json(&body)?;
    let (project, current) = visible(&control, &caller, &project_id, &id).await?;
    if let Some(c) = &req.cache_config {
        validate_cache(c)?;
    }
    // Pool fields given replace the stored ones; the others stay.
    let pool_config = req.pool_config.map(|p| {
        let stored: DatabasePoolConfig =
            serde_json::from_value(current.pool_config.clone()).unwrap_or_default();
        DatabasePoolConfig {
            pool_size: p.pool_size.or(stored.pool_size),
            min_pool_size: p.min_pool_size.or(stored.min_pool_size),
            pool_mode: p.pool_mode.or(stored.pool_mode),
            max_active: p.max_active.or(stored.max_active),
        }
    });
    if let Some(p) = &pool_config {
        validate_pool(p)?;
    }
    if let Some(r) = &req.pool_region {
        printable("pool_region", r, 64).or_else(|e| r.is_empty().then_some(()).ok_or(e))?;
    }
    let update = RegisteredUpdate {
        cache_config: req.cache_config.as_ref().map(to_json),
        pool_config: pool_config.as_ref().map(to_json),
        pool_region: req.pool_region,
    };
    let updated = control
        .catalog
        .update_registered_database(&current.project_id, &current.id, &update)
        .await?
        .ok_or_else(|| ApiError::not_found("database"))?;
    tracing::info!(database_id = %updated.id, "registered database updated");
    let sni = sni_names(&control, &project).await?;
    Ok(Json(view(&control, updated, sni.as_ref())))
}

#[utoipa::path(delete, path = "/v1/projects/{project_id}/databases/{id}", tag = "databases",
    params(("project_id" = String, Path, description = "Project id or name"), ("id" = String, Path, description = "Database id (db_…)")),
    responses((status = 204), (status = 404, body = crate::error::ErrorBody)),
    security(("bearer" = ["projects:write"])))]
pub async fn delete(
    State(control): State<Arc<Control>>,
    caller: Caller,
    Path((project_id, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    caller.require(Scope::ProjectsWrite)?;
    let (_, current) = visible(&control, &caller, &project_id, &id).await?;
    if !control.catalog.delete_registered_database(&current.project_id, &current.id).await? {
        return Err(ApiError::not_found("database"));
    }
    tracing::info!(database_id = %current.id, "registered database deleted");
    Ok(StatusCode::NO_CONTENT)
}
