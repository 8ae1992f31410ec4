//! Reaping preview databases whose time to live ran out: each is marked `deleting` (gone from
//! the API and the proxy's routes at once) and a `reap_preview` job removes its instance,
//! which ends its sessions (PostgreSQL's `57P01` "terminating connection due to administrator
//! command"). A preview of a project another job holds is tried again at the next pass. Run
//! by every worker before it claims a job; two workers reaping at once cannot both enqueue
//! (the delete takes the project's lock).

use catalog::{BranchJob, CatalogError, branch_kind};

use crate::Control;
use crate::api::previews::preview_job;
use crate::handlers::REAP_PREVIEW;

/// Enqueues the reaping of every expired preview it can; returns how many.
pub async fn reap_expired(control: &Control) -> Result<usize, CatalogError> {
    let mut reaped = 0;
    for preview in control.catalog.expired_previews().await? {
        let Some(project) = control.catalog.project(&preview.project_id).await? else { continue };
        let max_attempts = control.max_attempts;
        let outcome = control
            .catalog
            .delete_branch(&project.id, branch_kind::PREVIEW, &preview.id, |b| {
                preview_job(REAP_PREVIEW, b, &project, max_attempts)
            })
            .await?;
        if let BranchJob::Started { branch, job } = outcome {
            tracing::info!(preview_id = %branch.id, project_id = %project.id, job_id = %job.id, expired_at = ?branch.expires_at, "preview expired; reaping");
            reaped += 1;
        }
    }
    Ok(reaped)
}
