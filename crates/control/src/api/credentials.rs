//! `POST /v1/projects/{id}/credentials/rotate`: starts a rotation job for the project's owner
//! role (DESIGN.md's shape: `{"job": {...}}`), or 423 while another job holds the project.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use catalog::{NewJob, Scope};
use serde::Serialize;
use utoipa::ToSchema;

use super::idempotency::idempotent;
use super::projects::{find, ready_project};
use crate::Control;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::handlers::ROTATE_CREDENTIALS;
use crate::views::JobView;

/// Optional body of a rotation.
#[derive(Debug, Default, serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateRequest {
    /// How long the old password keeps working after the job (0 to 86400; default 0).
    #[serde(default)]
    pub grace_seconds: u32,
}

/// The longest grace period a rotation may ask for.
const MAX_GRACE_SECONDS: u32 = 86_400;

#[derive(Serialize, ToSchema)]
pub struct JobEnvelope {
    pub job: JobView,
}

#[utoipa::path(post, path = "/v1/projects/{id}/credentials/rotate", tag = "credentials", request_body = Option<RotateRequest>,
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
    let project = find(&control, &caller, &id).await?;
    let route = format!("POST /v1/projects/{}/credentials/rotate", project.id);
    idempotent(&control, &caller, &headers, &route, &body, || async {
        let req: RotateRequest = if body.iter().all(u8::is_ascii_whitespace) {
            RotateRequest::default()
        } else {
            super::parse_json(&body)?
        };
        if req.grace_seconds > MAX_GRACE_SECONDS {
            return Err(ApiError::invalid(format!("grace_seconds must be 0 to {MAX_GRACE_SECONDS}")));
        }
        let project = ready_project(&control, &caller, &project.id, "rotate").await?;
        let job = NewJob {
            kind: ROTATE_CREDENTIALS.into(),
            organization_id: project.organization_id.clone(),
            project_id: Some(project.id.clone()),
            cluster_id: None,
            locked_resource: Some(project.id.clone()),
            max_attempts: control.max_attempts,
            payload: serde_json::json!({ "grace_seconds": req.grace_seconds }),
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
