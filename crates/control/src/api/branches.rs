//! `/v1/projects/{id}/branches`: create (a job: a full, schema-only or empty copy of a
//! parent branch), list, get, delete (a job; refused for `main` and for a branch others were
//! made from) and reset to the parent's current state (a job). Like every job on a project,
//! these wait for no one: a request while another job holds the project gets `423`.

use std::sync::Arc;

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

use super::idempotency::idempotent;
use super::projects::{find, ready_project};
use super::{PageQuery, parse_json, query};
use crate::Control;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::handlers::{CREATE_BRANCH, DELETE_BRANCH, RESET_BRANCH};
use crate::names::validate_branch_name;
use crate::views::JobView;

/// What a new branch starts with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BranchData {
    /// An online physical copy of the parent's instance: every row (the default).
    #[default]
    Full,
    /// The parent's schema (tables, views, functions, …) without rows.
    Schema,
    /// The project's database and roles, nothing in it.
    Empty,
}

impl BranchData {
    fn as_str(self) -> &'static str {
        match self {
            BranchData::Full => "full",
            BranchData::Schema => "schema",
            BranchData::Empty => "empty",
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBranchRequest {
    /// `^[a-zA-Z0-9_-]{1,48}$`, unique in the project; clients reach it as database
    /// `<project>.<name>`.
    pub name: String,
    /// The branch to copy (id or name); `main` when absent.
    #[serde(default)]
    pub parent: Option<String>,
    #[serde(default)]
    pub data: BranchData,
}

/// A branch: one copy of a project's data with its own instance.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BranchView {
    /// `br_…`
    pub id: String,
    pub project_id: String,
    pub name: String,
    /// The branch it was made from; `null` for `main`.
    pub parent_id: Option<String>,
    /// `full`, `schema` or `empty`.
    pub data: String,
    /// `creating`, `ready`, `failed` or `deleting`.
    pub state: String,
    /// The database name clients connect to: `<project>` for main, `<project>.<branch>`.
    pub database: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl BranchView {
    fn new(b: Branch, project: &str) -> BranchView {
        BranchView {
            database: catalog::branch_database(project, &b.name),
            id: b.id,
            project_id: b.project_id,
            name: b.name,
            parent_id: b.parent_id,
            data: b.data,
            state: b.state,
            created_at: b.created_at,
            updated_at: b.updated_at,
        }
    }
}

/// A branch with the job that creates, resets or deletes it.
#[derive(Serialize, ToSchema)]
pub struct BranchWithJob {
    pub branch: BranchView,
    pub job: JobView,
}

#[derive(Serialize, ToSchema)]
pub struct BranchList {
    pub branches: Vec<BranchView>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

fn branch_job(kind: &str, b: &Branch, project: &catalog::Project, max_attempts: i32) -> NewJob {
    NewJob {
        kind: kind.into(),
        organization_id: project.organization_id.clone(),
        project_id: Some(project.id.clone()),
        cluster_id: Some(b.id.clone()),
        // Every job on a project holds the project: a branch copies a parent that no other
        // job changes meanwhile, and a rotation reaches every branch.
        locked_resource: Some(project.id.clone()),
        max_attempts,
        payload: serde_json::json!({ "branch_id": b.id, "parent_id": b.parent_id, "data": b.data }),
    }
}

fn with_job(
    status: StatusCode,
    branch: Branch,
    project: &str,
    job: catalog::Job,
) -> (StatusCode, serde_json::Value) {
    let body = BranchWithJob { branch: BranchView::new(branch, project), job: job.into() };
    (status, serde_json::to_value(body).expect("views serialize"))
}

#[utoipa::path(post, path = "/v1/projects/{id}/branches", tag = "branches", request_body = CreateBranchRequest,
    params(("id" = String, Path, description = "Project id or name"),
        ("Idempotency-Key" = Option<String>, Header, description = "Retry safely")),
    responses((status = 201, body = BranchWithJob), (status = 404, body = crate::error::ErrorBody),
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
    let route = format!("POST /v1/projects/{}/branches", project.id);
    idempotent(&control, &caller, &headers, &route, &body, || async {
        let req: CreateBranchRequest = parse_json(&body)?;
        validate_branch_name(&req.name)?;
        let project = ready_project(&control, &caller, &project.id, "branch it").await?;
        let parent = req.parent.clone().unwrap_or_else(|| MAIN_BRANCH.to_owned());
        let new = NewBranch {
            project_id: project.id.clone(),
            name: Some(req.name.clone()),
            parent: parent.clone(),
            data: req.data.as_str().to_owned(),
            ttl: None,
        };
        let max_attempts = control.max_attempts;
        match control.catalog.create_branch(&new, |b| branch_job(CREATE_BRANCH, b, &project, max_attempts)).await? {
            CreateBranch::Created { branch, job } => {
                tracing::info!(project_id = %project.id, branch_id = %branch.id, name = %branch.name, data = %branch.data, job_id = %job.id, "branch requested");
                Ok(with_job(StatusCode::CREATED, branch, &project.name, job))
            }
            CreateBranch::NameTaken => {
                Err(ApiError::conflict(format!("the project already has a branch named {:?}", req.name)))
            }
            CreateBranch::ParentNotFound => {
                Err(ApiError::invalid(format!("parent branch {parent:?} does not exist in this project")))
            }
            CreateBranch::ParentNotReady(state) => {
                Err(ApiError::conflict(format!("parent branch {parent:?} is {state}; only a ready branch can be copied")))
            }
            CreateBranch::Blocked(job) => Err(ApiError::locked(&job)),
        }
    })
    .await
}

#[utoipa::path(get, path = "/v1/projects/{id}/branches", tag = "branches",
    params(("id" = String, Path, description = "Project id or name"), PageQuery),
    responses((status = 200, body = BranchList), (status = 404, body = crate::error::ErrorBody)),
    security(("bearer" = ["projects:read"])))]
pub async fn list(
    State(control): State<Arc<Control>>,
    caller: Caller,
    Path(id): Path<String>,
    q: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<BranchList>, ApiError> {
    caller.require(Scope::ProjectsRead)?;
    let page = query(q)?.page();
    let project = find(&control, &caller, &id).await?;
    let rows = control.catalog.list_branches(&project.id, branch_kind::BRANCH, &page).await?;
    let (rows, next_cursor) = page.finish(rows, |b| &b.id);
    let branches = rows.into_iter().map(|b| BranchView::new(b, &project.name)).collect();
    Ok(Json(BranchList { branches, next_cursor }))
}

#[utoipa::path(get, path = "/v1/projects/{id}/branches/{branch}", tag = "branches",
    params(("id" = String, Path, description = "Project id or name"),
        ("branch" = String, Path, description = "Branch id or name")),
    responses((status = 200, body = BranchView), (status = 404, body = crate::error::ErrorBody)),
    security(("bearer" = ["projects:read"])))]
pub async fn get(
    State(control): State<Arc<Control>>,
    caller: Caller,
    Path((id, branch)): Path<(String, String)>,
) -> Result<Json<BranchView>, ApiError> {
    caller.require(Scope::ProjectsRead)?;
    let project = find(&control, &caller, &id).await?;
    let branch = control
        .catalog
        .find_branch(&project.id, Some(branch_kind::BRANCH), &branch)
        .await?
        .ok_or_else(|| ApiError::not_found("branch"))?;
    Ok(Json(BranchView::new(branch, &project.name)))
}

/// The answer to a delete or reset request.
fn started(
    outcome: BranchJob,
    project: &str,
    what: &str,
) -> Result<(StatusCode, serde_json::Value), ApiError> {
    match outcome {
        BranchJob::Started { branch, job } => {
            tracing::info!(branch_id = %branch.id, job_id = %job.id, what, "branch job requested");
            Ok(with_job(StatusCode::ACCEPTED, branch, project, job))
        }
        BranchJob::NotFound => Err(ApiError::not_found("branch")),
        BranchJob::IsMain => Err(ApiError::conflict(format!(
            "main is the project's own branch and cannot be {what}; delete the project instead"
        ))),
        BranchJob::HasChildren(children) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "branch_has_children",
            format!("branches were made from this branch ({}); delete them first", children.join(", ")),
        )),
        BranchJob::NotReady(state) => {
            Err(ApiError::conflict(format!("the branch is {state}; only a ready branch can be {what}")))
        }
        BranchJob::Blocked(job) => Err(ApiError::locked(&job)),
    }
}

#[utoipa::path(delete, path = "/v1/projects/{id}/branches/{branch}", tag = "branches",
    params(("id" = String, Path, description = "Project id or name"),
        ("branch" = String, Path, description = "Branch id or name")),
    responses((status = 202, body = BranchWithJob), (status = 404, body = crate::error::ErrorBody),
        (status = 409, body = crate::error::ErrorBody), (status = 423, body = crate::error::ErrorBody)),
    security(("bearer" = ["projects:write"])))]
pub async fn delete(
    State(control): State<Arc<Control>>,
    caller: Caller,
    Path((id, branch)): Path<(String, String)>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    caller.require(Scope::ProjectsWrite)?;
    let project = find(&control, &caller, &id).await?;
    let max_attempts = control.max_attempts;
    let outcome = control
        .catalog
        .delete_branch(&project.id, branch_kind::BRANCH, &branch, |b| {
            branch_job(DELETE_BRANCH, b, &project, max_attempts)
        })
        .await?;
    started(outcome, &project.name, "deleted").map(|(s, body)| (s, Json(body)))
}

#[utoipa::path(post, path = "/v1/projects/{id}/branches/{branch}/reset", tag = "branches",
    params(("id" = String, Path, description = "Project id or name"),
        ("branch" = String, Path, description = "Branch id or name"),
        ("Idempotency-Key" = Option<String>, Header, description = "Retry safely")),
    responses((status = 202, body = BranchWithJob), (status = 404, body = crate::error::ErrorBody),
        (status = 409, body = crate::error::ErrorBody), (status = 423, body = crate::error::ErrorBody)),
    security(("bearer" = ["projects:write"])))]
pub async fn reset(
    State(control): State<Arc<Control>>,
    caller: Caller,
    Path((id, branch)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    caller.require(Scope::ProjectsWrite)?;
    let project = find(&control, &caller, &id).await?;
    let route = format!("POST /v1/projects/{}/branches/{branch}/reset", project.id);
    idempotent(&control, &caller, &headers, &route, &body, || async {
        let project = ready_project(&control, &caller, &project.id, "branch it").await?;
        let max_attempts = control.max_attempts;
        let outcome = control
            .catalog
            .reset_branch(&project.id, &branch, |b| branch_job(RESET_BRANCH, b, &project, max_attempts))
            .await?;
        started(outcome, &project.name, "reset")
    })
    .await
}
