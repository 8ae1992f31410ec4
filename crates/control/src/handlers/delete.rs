//! `delete_project`: stops and removes every branch instance of the project, then removes
//! the project from the catalog (its branches, roles and project keys go with it).

use std::sync::Arc;

use catalog::Job;

use super::{JobError, blocking};
use crate::Control;

pub async fn run(control: &Control, job: &Job) -> Result<(), JobError> {
    let project_id = job.project_id.as_deref().ok_or_else(|| JobError::permanent("job names no project"))?;
    for branch in control.catalog.branches(project_id).await? {
        let instances = Arc::clone(&control.instances);
        blocking(move || instances.remove(&branch.id)).await?;
    }
    control.catalog.purge_project(project_id).await?;
    Ok(())
}
