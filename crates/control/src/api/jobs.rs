//! `/v1/jobs`: a job by id, with `?wait=SECONDS` to long-poll until it finishes, and the
//! organization's (or a project key's project's) jobs.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use catalog::Scope;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{PageQuery, query};
use crate::Control;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::views::JobView;

const MAX_WAIT_SECONDS: u64 = 60;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct WaitQuery {
    /// Hold the request up to this many seconds (at most 60) until the job finishes.
    pub wait: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub struct JobList {
    pub jobs: Vec<JobView>,
    pub next_cursor: Option<String>,
}

async fn visible_job(control: &Control, caller: &Caller, id: &str) -> Result<catalog::Job, ApiError> {
    let job = control.catalog.job(id).await?;
    job.filter(|j| {
        j.organization_id == caller.org()
            && caller.project_scope().is_none_or(|p| j.project_id.as_deref() == Some(p))
    })
    .ok_or_else(|| ApiError::not_found("job"))
}

#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, description = "Job id"), WaitQuery),
    responses((status = 200, body = JobView), (status = 404, body = crate::error::ErrorBody)),
    security(("bearer" = ["jobs:read"])))]
pub async fn get(
    State(control): State<Arc<Control>>,
    caller: Caller,
    Path(id): Path<String>,
    q: Result<Query<WaitQuery>, QueryRejection>,
) -> Result<Json<JobView>, ApiError> {
    caller.require(Scope::JobsRead)?;
    let wait = Duration::from_secs(query(q)?.wait.unwrap_or(0).min(MAX_WAIT_SECONDS));
    let deadline = tokio::time::Instant::now() + wait;
    let mut events = control.events.subscribe();
    loop {
        let job = visible_job(&control, &caller, &id).await?;
        if job.is_finished() || tokio::time::Instant::now() >= deadline {
            return Ok(Json(job.into()));
        }
        // Woken by the job's notification; the timer covers a missed one.
        let _ = tokio::time::timeout_at(
            deadline.min(tokio::time::Instant::now() + Duration::from_secs(1)),
            events.changed(),
        )
        .await;
    }
}

#[utoipa::path(get, path = "/v1/jobs", tag = "jobs", params(PageQuery),
    responses((status = 200, body = JobList)), security(("bearer" = ["jobs:read"])))]
pub async fn list(
    State(control): State<Arc<Control>>,
    caller: Caller,
    q: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<JobList>, ApiError> {
    caller.require(Scope::JobsRead)?;
    let page = query(q)?.page();
    let rows = control.catalog.list_jobs(caller.org(), caller.project_scope(), &page).await?;
    let (rows, next_cursor) = page.finish(rows, |j| &j.id);
    Ok(Json(JobList { jobs: rows.into_iter().map(Into::into).collect(), next_cursor }))
}
