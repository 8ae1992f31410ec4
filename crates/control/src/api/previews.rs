//! Preview databases, as CapyDB has them: `POST /v1/projects/{id}/preview-databases
//! {source_branch, mode: clone | empty, ttl_seconds}` → `{job, preview}`, the project's list,
//! and by id `GET`/`DELETE /v1/preview-databases/{id}` and its `connections`. A preview is a
//! branch with a time to live (`prev_…`): made by the same job as a branch (`full` for
//! `clone`), reached as `<project>.<name>`, reaped by the worker when it expires.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use catalog::{Branch, BranchJob, CreateBranch, MAIN_BRANCH, NewBranch, NewJob, Scope, branch_kind};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::connection::{Connections, connection_set};
use super::idempotency::idempotent;
use super::projects::{find, ready_project};
use super::{PageQuery, parse_json, query};
use crate::Control;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::handlers::{CREATE_PREVIEW, DELETE_PREVIEW};
use crate::names::validate_branch_name;
use crate::views::JobView;

/// Longest time to live a preview may ask for.
pub const MAX_TTL_SECONDS: i64 = 30 * 24 * 3600;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PreviewMode {
    /// An online copy of the source branch's data (a `full` branch).
    #[default]
    Clone,
    /// The project's database and roles, nothing in it.
    Empty,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePreviewRequest {
    /// The branch to copy (id or name); `main` when absent.
    #[serde(default)]
    pub source_branch: Option<String>,
    #[serde(default)]
    pub mode: PreviewMode,
    /// Seconds until the preview is reaped: 1 to 2592000 (30 days).
    pub ttl_seconds: i64,
    /// Optional, as branch names; the database is `<project>.<name>` (default: the id).
    #[serde(default)]
    pub name: Option<String>,
}

/// A preview database: a branch with a time to live.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PreviewView {
    /// `prev_…`
    pub id: String,
    pub project_id: String,
    pub name: String,
    pub source_branch_id: Option<String>,
    /// `clone` or `empty`.
    pub mode: String,
    /// `creating`, `ready`, `failed` or `deleting`.
    pub state: String,
    /// The database name clients connect to: `<project>.<name>`.
    pub database: String,
    pub expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl PreviewView {
    fn new(b: Branch, project: &str) -> PreviewView {
        PreviewView {
            database: catalog::branch_database(project, &b.name),
            mode: if b.data == "full" { "clone".into() } else { b.data.clone() },
            id: b.id,
            project_id: b.project_id,
            name: b.name,
            source_branch_id: b.parent_id,
            state: b.state,
            expires_at: b.expires_at,
            created_at: b.created_at,
            updated_at: b.updated_at,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct PreviewWithJob {
    pub job: JobView,
    pub preview: PreviewView,
}

#[derive(Serialize, ToSchema)]
pub struct PreviewList {
    pub preview_databases: Vec<PreviewView>,
    pub next_cursor: Option<String>,
}

pub(crate) fn preview_job(kind: &str, b: &Branch, project: &catalog::Project, max_attempts: i32) -> NewJob {
    NewJob {
        kind: kind.into(),
        organization_id: project.organization_id.clone(),
        project_id: Some(project.id.clone()),
        cluster_id: Some(b.id.clone()),
        locked_resource: Some(project.id.clone()),
        max_attempts,
        payload: serde_json::json!({ "preview_id": b.id, "source_branch_id": b.parent_id, "data": b.data }),
    }
}

fn with_job(
    status: StatusCode,
    preview: Branch,
    project: &str,
    job: catalog::Job,
) -> (StatusCode, serde_json::Value) {
    let body = PreviewWithJob { job: job.into(), preview: PreviewView::new(preview, project) };
    (status, serde_json::to_value(body).expect("views serialize"))
}

#[utoipa::path(post, path = "/v1/projects/{id}/preview-databases", tag = "previews", request_body = CreatePreviewRequest,
    params(("id" = String, Path, description = "Project id or name"),
        ("Idempotency-Key" = Option<String>, Header, description = "Retry safely")),
    responses((status = 201, body = PreviewWithJob), (status = 404, body = crate::error::ErrorBody),
        (status = 409, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody),
        (status = 423, body = crate::error::ErrorBody)),
    security(("bearer" = ["projects:write"])))]
pub async fn create(
    State(control): State<Arc<Control>>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    caller.require(Scope::ProjectsWrite)?;
    let project = find(&control, &caller, &id).await?;
    let route = format!("POST /v1/projects/{}/preview-databases", project.id);
    idempotent(&control, &caller, &headers, &route, &body, || async {
        let req: CreatePreviewRequest = parse_json(&body)?;
        if !(1..=MAX_TTL_SECONDS).contains(&req.ttl_seconds) {
            return Err(ApiError::invalid(format!("ttl_seconds must be 1 to {MAX_TTL_SECONDS} (30 days)")));
        }
        if let Some(name) = &req.name {
            validate_branch_name(name)?;
        }
        let project = ready_project(&control, &caller, &project.id, "preview it").await?;
        let source = req.source_branch.clone().unwrap_or_else(|| MAIN_BRANCH.to_owned());
        let ttl = Duration::from_secs(u64::try_from(req.ttl_seconds).unwrap_or(1));
        let new = NewBranch {
            project_id: project.id.clone(),
            name: req.name.clone(),
            parent: source.clone(),
            data: match req.mode {
                PreviewMode::Clone => "full".into(),
                PreviewMode::Empty => "empty".into(),
            },
            ttl: Some(ttl),
        };
        let max_attempts = control.max_attempts;
        match control.catalog.create_branch(&new, |b| preview_job(CREATE_PREVIEW, b, &project, max_attempts)).await? {
            CreateBranch::Created { branch, job } => {
                tracing::info!(project_id = %project.id, preview_id = %branch.id, job_id = %job.id, ttl_seconds = req.ttl_seconds, "preview requested");
                Ok(with_job(StatusCode::CREATED, branch, &project.name, job))
            }
            CreateBranch::NameTaken => Err(ApiError::conflict(format!(
                "the project already has a branch or preview named {:?}",
                req.name.unwrap_or_default()
            ))),
            CreateBranch::ParentNotFound => {
                Err(ApiError::invalid(format!("source_branch {source:?} does not exist in this project")))
            }
            CreateBranch::ParentNotReady(state) => {
                Err(ApiError::conflict(format!("source_branch {source:?} is {state}; only a ready branch can be copied")))
            }
            CreateBranch::Blocked(job) => Err(ApiError::locked(&job)),
        }
    })
    .await
}

#[utoipa::path(get, path = "/v1/projects/{id}/preview-databases", tag = "previews",
    params(("id" = String, Path, description = "Project id or name"), PageQuery),
    responses((status = 200, body = PreviewList), (status = 404, body = crate::error::ErrorBody)),
    security(("bearer" = ["projects:read"])))]
pub async fn list(
    State(control): State<Arc<Control>>,
    caller: Caller,
    Path(id): Path<String>,
    q: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<PreviewList>, ApiError> {
    caller.require(Scope::ProjectsRead)?;
    let page = query(q)?.page();
    let project = find(&control, &caller, &id).await?;
    let rows = control.catalog.list_branches(&project.id, branch_kind::PREVIEW, &page).await?;
    let (rows, next_cursor) = page.finish(rows, |b| &b.id);
    let preview_databases = rows.into_iter().map(|b| PreviewView::new(b, &project.name)).collect();
    Ok(Json(PreviewList { preview_databases, next_cursor }))
}

/// A visible preview by id, with its project (404 for anything the key may not see).
async fn find_preview(
    control: &Control,
    caller: &Caller,
    id: &str,
) -> Result<(catalog::Project, Branch), ApiError> {
    let preview = control
        .catalog
        .branch(id)
        .await?
        .filter(|b| b.kind == branch_kind::PREVIEW && b.state != catalog::branch_state::DELETING)
        .ok_or_else(|| ApiError::not_found("preview database"))?;
    let project = find(control, caller, &preview.project_id)
        .await
        .map_err(|_| ApiError::not_found("preview database"))?;
    Ok((project, preview))
}

#[utoipa::path(get, path = "/v1/preview-databases/{id}", tag = "previews",
    params(("id" = String, Path, description = "Preview id (prev_…)")),
    responses((status = 200, body = PreviewView), (status = 404, body = crate::error::ErrorBody)),
    security(("bearer" = ["projects:read"])))]
pub async fn get(
    State(control): State<Arc<Control>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<PreviewView>, ApiError> {
    caller.require(Scope::ProjectsRead)?;
    let (project, preview) = find_preview(&control, &caller, &id).await?;
    Ok(Json(PreviewView::new(preview, &project.name)))
}

#[utoipa::path(delete, path = "/v1/preview-databases/{id}", tag = "previews",
    params(("id" = String, Path, description = "Preview id (prev_…)")),
    responses((status = 202, body = PreviewWithJob), (status = 404, body = crate::error::ErrorBody),
        (status = 423, body = crate::error::ErrorBody)),
    security(("bearer" = ["projects:write"])))]
pub async fn delete(
    State(control): State<Arc<Control>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    caller.require(Scope::ProjectsWrite)?;
    let (project, preview) = find_preview(&control, &caller, &id).await?;
    let max_attempts = control.max_attempts;
    let outcome = control
        .catalog
        .delete_branch(&project.id, branch_kind::PREVIEW, &preview.id, |b| {
            preview_job(DELETE_PREVIEW, b, &project, max_attempts)
        })
        .await?;
    match outcome {
        BranchJob::Started { branch, job } => {
            tracing::info!(preview_id = %branch.id, job_id = %job.id, "preview deletion requested");
            let (status, body) = with_job(StatusCode::ACCEPTED, branch, &project.name, job);
            Ok((status, Json(body)))
        }
        BranchJob::Blocked(job) => Err(ApiError::locked(&job)),
        BranchJob::HasChildren(children) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "branch_has_children",
            format!("branches were made from this preview ({}); delete them first", children.join(", ")),
        )),
        _ => Err(ApiError::not_found("preview database")),
    }
}

#[utoipa::path(get, path = "/v1/preview-databases/{id}/connections", tag = "previews",
    params(("id" = String, Path, description = "Preview id (prev_…)")),
    responses((status = 200, body = Connections), (status = 404, body = crate::error::ErrorBody)),
    security(("bearer" = ["credentials:read"])))]
pub async fn connections(
    State(control): State<Arc<Control>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Connections>, ApiError> {
    caller.require(Scope::CredentialsRead)?;
    let (project, preview) = find_preview(&control, &caller, &id).await?;
    Ok(Json(connection_set(&control, &caller, &project.id, Some(&preview.id)).await?))
}
