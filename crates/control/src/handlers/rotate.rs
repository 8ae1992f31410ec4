//! `rotate_credentials`: a new password for the project's owner role without dropping anyone.
//! The new verifier (same salt and iterations as the old, so one SCRAM exchange can be
//! checked against both) is published beside the old one, set on the instance with
//! `ALTER ROLE … PASSWORD '<verifier>'`, and then replaces it: when the job ends, or after
//! the job's `grace_seconds` (the worker finishes it then; both passwords work meanwhile). The role is altered on the instance of every
//! ready branch of the project. Open sessions are never touched.

use catalog::{Job, branch_state, project_state};
use rand::Rng;
use wire::scram::ScramVerifier;

use super::{JobError, superuser};
use crate::Control;
use crate::names::{owner_role, quote_ident};

pub async fn run(control: &Control, job: &Job) -> Result<(), JobError> {
    let project_id = job.project_id.as_deref().ok_or_else(|| JobError::permanent("job names no project"))?;
    let project = control
        .catalog
        .project(project_id)
        .await?
        .ok_or_else(|| JobError::permanent("the project no longer exists"))?;
    if project.state != project_state::READY {
        return Err(JobError::permanent(format!("the project is {}, not ready", project.state)));
    }
    let owner = owner_role(&project.name);
    let role = control
        .catalog
        .roles(project_id)
        .await?
        .into_iter()
        .find(|r| r.name == owner)
        .ok_or_else(|| JobError::permanent("the project has no owner role"))?;
    let current = ScramVerifier::parse(&role.verifier)
        .map_err(|_| JobError::permanent("stored verifier is invalid"))?;
    let password = catalog::Secret::new(
        rand::thread_rng()
            .sample_iter(&rand::distributions::Alphanumeric)
            .take(32)
            .map(char::from)
            .collect::<String>(),
    );
    let next = ScramVerifier::derive(password.expose(), &current.salt, current.iterations).to_pg_authid();
    let sealed = control.master_key.seal_secret(&password, &role.id);
    // A retried job finds the rotation it began and finishes that one.
    let role = control.catalog.begin_rotation(&role.id, &sealed, &next).await?;
    let next = role.next_verifier.clone().ok_or_else(|| JobError::transient("rotation vanished"))?;

    // Every branch has its own instance holding the role: each gets the new verifier before
    // the old one stops being published. A retry sets it again where it already is.
    let branches = control.catalog.branches(project_id).await?;
    for branch in branches.iter().filter(|b| b.state == branch_state::READY) {
        let client = superuser(control, &branch.id).await?;
        client
            .batch_execute(&format!(
                "ALTER ROLE {} PASSWORD '{}'",
                quote_ident(&role.name),
                next.replace('\'', "''")
            ))
            .await?;
    }
    let grace = job.payload.get("grace_seconds").and_then(|g| g.as_u64()).unwrap_or(0);
    control.catalog.finish_rotation_after(&role.id, std::time::Duration::from_secs(grace)).await?;
    tracing::info!(project_id, role = %role.name, grace_seconds = grace, "credentials rotated");
    Ok(())
}
