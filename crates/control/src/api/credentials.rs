//! `POST /v1/projects/{id}/credentials/rotate`: starts a rotation job for the project's owner
//! role (DESIGN.md's shape: `{"job": {...}}`), or 423 while another job holds the project.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use catalog::{NewJob, Scope, project_state};
use serde::Serialize;
use utoipa::ToSchema;

use super::idempotency::idempotent;
use super::projects::find;
use crate::Control;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::handlers::ROTATE_CREDENTIALS;
use crate::views::JobView;

#[derive(Serialize, ToSchema)]
pub struct JobEnvelope {
    pub job: JobView,
}

#[utoipa::path(post, path = "/v1/projects/{id}/credentials/rotate", tag = "credentials",
    params(("id" = String, Path, description = "Project id or name"),
        ("Idempotency-Key" = Option<String>, Header, description = "Retry safely")),
    responses((status = 202, body = JobEnvelope), (status = 404, body = crate::error::ErrorBody),
        (status = 409, body = crate::error::ErrorBody), (status = 423, body = crate::error::ErrorBody)),
    security(("bearer" = ["credentials:write"])))]
pub async fn rotate(
    State(control): State<Arc<Control>>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    caller.require(Scope::CredentialsWrite)?;
    let route = format!("POST /v1/projects/{id}/credentials/rotate");
    idempotent(&control, &caller, &headers, &route, &body, || async {
        let project = find(&control, &caller, &id).await?;
        if project.state != project_state::READY {
            return Err(ApiError::conflict(format!(
                "the project is {}; rotate once it is ready",
                project.state
            )));
        }
        let job = NewJob {
            kind: ROTATE_CREDENTIALS.into(),
            organization_id: project.organization_id.clone(),
            project_id: Some(project.id.clone()),
            cluster_id: None,
            locked_resource: Some(project.id.clone()),
            max_attempts: control.max_attempts,
            payload: serde_json::json!({}),
        };
        match control.catalog.enqueue_job(&job).await? {
            Ok(job) => {
                tracing::info!(project_id = %project.id, job_id = %job.id, "credential rotation requested");
                let body = JobEnvelope { job: job.into() };
                Ok((StatusCode::ACCEPTED, serde_json::to_value(body).expect("views serialize")))
            }
            Err(blocking) => Err(ApiError::locked(&blocking)),
        }
    })
    .await
}
