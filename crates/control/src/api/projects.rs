//! `/v1/projects`: create (provisioning through a job), list, get, update limits, delete.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use catalog::{CreateProject, DeleteProject, NewJob, NewProject, NewRole, Scope, Secret, ids};
use rand::Rng;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use wire::scram::ScramVerifier;

use super::idempotency::idempotent;
use super::{PageQuery, parse_json, query};
use crate::Control;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::handlers::{DELETE_PROJECT, PROVISION_PROJECT};
use crate::names::{owner_role, validate_project_name};
use crate::views::{JobView, Limits, PoolConfig, ProjectView};

const PASSWORD_LEN: usize = 32;
const MAX_CONNECTIONS: i32 = 100_000;
const MAX_TIMEOUT_MS: i64 = 30 * 24 * 3600 * 1000;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProjectRequest {
    /// `^[a-zA-Z0-9_-]{1,48}$`, unique in the organization; also the database name.
    pub name: String,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub pool_config: PoolConfig,
}

/// A project with the job that provisions or deletes it.
#[derive(Serialize, ToSchema)]
pub struct ProjectWithJob {
    pub project: ProjectView,
    pub job: JobView,
}

#[derive(Serialize, ToSchema)]
pub struct ProjectList {
    pub projects: Vec<ProjectView>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// Fields to change; absent fields keep their value, `null` removes a limit.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateProjectRequest {
    #[serde(default)]
    pub limits: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    pub pool_config: Option<serde_json::Map<String, serde_json::Value>>,
}

fn validate_limits(l: &Limits) -> Result<(), ApiError> {
    for (name, v) in [
        ("max_direct_connections", l.max_direct_connections),
        ("max_pooled_connections", l.max_pooled_connections),
    ] {
        if v.is_some_and(|v| !(1..=MAX_CONNECTIONS).contains(&v)) {
            return Err(ApiError::invalid(format!("limits.{name} must be 1 to {MAX_CONNECTIONS}")));
        }
    }
    for (name, v) in [
        ("query_timeout_ms", l.query_timeout_ms),
        ("transaction_timeout_ms", l.transaction_timeout_ms),
        ("idle_timeout_ms", l.idle_timeout_ms),
        ("idle_in_transaction_timeout_ms", l.idle_in_transaction_timeout_ms),
    ] {
        if v.is_some_and(|v| !(1..=MAX_TIMEOUT_MS).contains(&v)) {
            return Err(ApiError::invalid(format!("limits.{name} must be 1 to {MAX_TIMEOUT_MS} (30 days)")));
        }
    }
    Ok(())
}

fn validate_pool(p: &PoolConfig) -> Result<(), ApiError> {
    if p.pool_size == Some(0) {
        return Err(ApiError::invalid("pool_config.pool_size must be at least 1"));
    }
    if let (Some(min), Some(size)) = (p.min_pool_size, p.pool_size)
        && min > size
    {
        return Err(ApiError::invalid("pool_config.min_pool_size exceeds pool_size"));
    }
    Ok(())
}

fn new_password() -> Secret {
    Secret::new(
        rand::thread_rng()
            .sample_iter(&rand::distributions::Alphanumeric)
            .take(PASSWORD_LEN)
            .map(char::from)
            .collect::<String>(),
    )
}

fn to_json<T: Serialize>(value: &T) -> serde_json::Value {
    serde_json::to_value(value).expect("API views serialize to JSON")
}

#[utoipa::path(post, path = "/v1/projects", tag = "projects", request_body = CreateProjectRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Retry safely: the same key and body get the first response")),
    responses((status = 201, body = ProjectWithJob), (status = 409, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody)),
    security(("bearer" = ["projects:write"])))]
pub async fn create(
    State(control): State<Arc<Control>>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    caller.require(Scope::ProjectsWrite)?;
    caller.require_org_key("create projects")?;
    idempotent(&control, &caller, &headers, "POST /v1/projects", &body, || async {
        let req: CreateProjectRequest = parse_json(&body)?;
        validate_project_name(&req.name)?;
        validate_limits(&req.limits)?;
        validate_pool(&req.pool_config)?;
        let password = new_password();
        let role_id = ids::generate(ids::ROLE);
        let new = NewProject {
            id: ids::generate(ids::PROJECT),
            organization_id: caller.org().to_owned(),
            name: req.name.clone(),
            limits: (&req.limits).into(),
            pool_config: to_json(&req.pool_config),
            branch_id: ids::generate(ids::BRANCH),
            role: NewRole {
                name: owner_role(&req.name),
                password_ciphertext: control.master_key.seal_secret(&password, &role_id),
                verifier: ScramVerifier::generate(password.expose()).to_pg_authid(),
                id: role_id,
            },
        };
        let job = NewJob {
            kind: PROVISION_PROJECT.into(),
            organization_id: new.organization_id.clone(),
            project_id: Some(new.id.clone()),
            cluster_id: Some(new.branch_id.clone()),
            locked_resource: Some(new.id.clone()),
            max_attempts: control.max_attempts,
            payload: serde_json::json!({}),
        };
        match control.catalog.create_project(&new, &job).await? {
            CreateProject::Created { project, job, .. } => {
                tracing::info!(project_id = %project.id, name = %project.name, job_id = %job.id, "project created");
                Ok((StatusCode::CREATED, to_json(&ProjectWithJob { project: project.into(), job: job.into() })))
            }
            CreateProject::NameTaken => {
                Err(ApiError::conflict(format!("a project named {:?} already exists", req.name)))
            }
        }
    })
    .await
}

#[utoipa::path(get, path = "/v1/projects", tag = "projects", params(PageQuery),
    responses((status = 200, body = ProjectList)), security(("bearer" = ["projects:read"])))]
pub async fn list(
    State(control): State<Arc<Control>>,
    caller: Caller,
    q: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<ProjectList>, ApiError> {
    caller.require(Scope::ProjectsRead)?;
    let page = query(q)?.page();
    let rows = control.catalog.list_projects(caller.org(), caller.project_scope(), &page).await?;
    let (rows, next_cursor) = page.finish(rows, |p| &p.id);
    Ok(Json(ProjectList { projects: rows.into_iter().map(Into::into).collect(), next_cursor }))
}

pub(crate) async fn find(control: &Control, caller: &Caller, id: &str) -> Result<catalog::Project, ApiError> {
    control
        .catalog
        .find_project(caller.org(), caller.project_scope(), id)
        .await?
        .ok_or_else(|| ApiError::not_found("project"))
}

/// A visible project that is `ready`; `409` naming what waits for it otherwise.
pub(crate) async fn ready_project(
    control: &Control,
    caller: &Caller,
    id: &str,
    action: &str,
) -> Result<catalog::Project, ApiError> {
    let project = find(control, caller, id).await?;
    if project.state != catalog::project_state::READY {
        return Err(ApiError::conflict(format!(
            "the project is {}; {action} once it is ready",
            project.state
        )));
    }
    Ok(project)
}

#[utoipa::path(get, path = "/v1/projects/{id}", tag = "projects",
    params(("id" = String, Path, description = "Project id or name")),
    responses((status = 200, body = ProjectView), (status = 404, body = crate::error::ErrorBody)),
    security(("bearer" = ["projects:read"])))]
pub async fn get(
    State(control): State<Arc<Control>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<ProjectView>, ApiError> {
    caller.require(Scope::ProjectsRead)?;
    Ok(Json(find(&control, &caller, &id).await?.into()))
}

/// Applies present fields of `patch` over `current` (`null` removes a field).
fn merge(current: serde_json::Value, patch: serde_json::Map<String, serde_json::Value>) -> serde_json::Value {
    let mut merged = match current {
        serde_json::Value::Object(map) => map,
        _ => serde_json::Map::new(),
    };
    for (k, v) in patch {
        if v.is_null() {
            merged.remove(&k);
        } else {
            merged.insert(k, v);
        }
    }
    serde_json::Value::Object(merged)
}

#[utoipa::path(patch, path = "/v1/projects/{id}", tag = "projects", request_body = UpdateProjectRequest,
    params(("id" = String, Path, description = "Project id or name")),
    responses((status = 200, body = ProjectView), (status = 404, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody)),
    security(("bearer" = ["projects:write"])))]
pub async fn update(
    State(control): State<Arc<Control>>,
    caller: Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<ProjectView>, ApiError> {
    caller.require(Scope::ProjectsWrite)?;
    let req: UpdateProjectRequest = parse_json(&body)?;
    let project = find(&control, &caller, &id).await?;
    let current = ProjectView::from(project.clone());
    let limits: Limits = match req.limits {
        Some(patch) => serde_json::from_value(merge(to_json(&current.limits), patch))
            .map_err(|e| ApiError::invalid(format!("limits: {e}")))?,
        None => current.limits,
    };
    let pool: PoolConfig = match req.pool_config {
        Some(patch) => serde_json::from_value(merge(project.pool_config.clone(), patch))
            .map_err(|e| ApiError::invalid(format!("pool_config: {e}")))?,
        None => current.pool_config,
    };
    validate_limits(&limits)?;
    validate_pool(&pool)?;
    let updated = control
        .catalog
        .update_project_settings(&project.id, &(&limits).into(), &to_json(&pool))
        .await?
        .ok_or_else(|| ApiError::not_found("project"))?;
    tracing::info!(project_id = %updated.id, "project settings updated");
    Ok(Json(updated.into()))
}

#[utoipa::path(delete, path = "/v1/projects/{id}", tag = "projects",
    params(("id" = String, Path, description = "Project id or name")),
    responses((status = 202, body = ProjectWithJob), (status = 404, body = crate::error::ErrorBody), (status = 423, body = crate::error::ErrorBody)),
    security(("bearer" = ["projects:write"])))]
pub async fn delete(
    State(control): State<Arc<Control>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<ProjectWithJob>), ApiError> {
    caller.require(Scope::ProjectsWrite)?;
    let max_attempts = control.max_attempts;
    let outcome = control
        .catalog
        .delete_project(caller.org(), caller.project_scope(), &id, |p| NewJob {
            kind: DELETE_PROJECT.into(),
            organization_id: p.organization_id.clone(),
            project_id: Some(p.id.clone()),
            cluster_id: None,
            locked_resource: Some(p.id.clone()),
            max_attempts,
            payload: serde_json::json!({}),
        })
        .await?;
    match outcome {
        DeleteProject::Started { project, job } => {
            tracing::info!(project_id = %project.id, job_id = %job.id, "project deletion started");
            Ok((StatusCode::ACCEPTED, Json(ProjectWithJob { project: project.into(), job: job.into() })))
        }
        DeleteProject::NotFound => Err(ApiError::not_found("project")),
        DeleteProject::Blocked(job) => Err(ApiError::locked(&job)),
    }
}
