//! `rotate_credentials`: a new password for the project's owner role without dropping anyone.
//! The new verifier (same salt and iterations as the old, so one SCRAM exchange can be
//! checked against both) is published beside the old one, set on the instance with
//! `ALTER ROLE … PASSWORD '<verifier>'`, and then replaces it: when the job ends, or after
//! the job's `grace_seconds` (the worker finishes it then; both passwords work meanwhile). The role is altered on the instance of every
//! ready branch of the project. Open sessions are never touched. A rotation that fails for
//! good is abandoned: its new password stops being valid and the instances it reached get the
//! old verifier back, so a role never keeps two passwords past its job.

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
    let role = owner(control, &project).await?;
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
    for branch in ready_branches(control, project_id).await? {
        set_verifier(control, &branch, &role.name, &next).await?;
    }
    let grace = job.payload.get("grace_seconds").and_then(|g| g.as_u64()).unwrap_or(0);
    // A failed rotation's clean-up may have abandoned the one this attempt adopted (it ran
    // after that job let go of the project): then this attempt begins a new one on retry,
    // instead of reporting success with the old password still the only one.
    if !control.catalog.finish_rotation_after(&role.id, std::time::Duration::from_secs(grace)).await? {
        return Err(JobError::transient("the rotation was abandoned meanwhile; it starts again"));
    }
    tracing::info!(project_id, role = %role.name, grace_seconds = grace, "credentials rotated");
    Ok(())
}

/// Abandons a rotation that failed for good (its password was never shown: connection strings
/// show the next password only once the job has finished). The catalog stops publishing the
/// new verifier first, which is what makes it invalid; restoring the old verifier on each
/// instance the job reached is best effort, since logins are checked by the proxy against
/// the catalog's verifiers and an instance the job could not reach may still be down.
pub async fn after_failure(control: &Control, job: &Job) {
    let Some(project_id) = job.project_id.as_deref() else { return };
    let project = match control.catalog.project(project_id).await {
        Ok(Some(p)) => p,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(project_id, error = %e, "could not load the project of a failed rotation");
            return;
        }
    };
    let role = match owner(control, &project).await {
        Ok(role) => role,
        Err(e) => {
            tracing::warn!(project_id, error = %e.message, "could not load the role of a failed rotation");
            return;
        }
    };
    match control.catalog.abandon_rotation(&role.id).await {
        Ok(true) => {
            tracing::warn!(project_id, role = %role.name, "rotation failed for good; its new password is retired")
        }
        Ok(false) => return,
        Err(e) => {
            tracing::error!(project_id, error = %e, "could not retire the new password of a failed rotation");
            return;
        }
    }
    let branches = match ready_branches(control, project_id).await {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(project_id, error = %e.message, "could not list branches to restore the old password on");
            return;
        }
    };
    for branch in branches {
        if let Err(e) = set_verifier(control, &branch, &role.name, &role.verifier).await {
            tracing::warn!(project_id, branch_id = %branch.id, error = %e.message, "old password not restored on this instance");
        }
    }
}

async fn owner(control: &Control, project: &catalog::Project) -> Result<catalog::ProjectRole, JobError> {
    let owner = owner_role(&project.name);
    control
        .catalog
        .roles(&project.id)
        .await?
        .into_iter()
        .find(|r| r.name == owner)
        .ok_or_else(|| JobError::permanent("the project has no owner role"))
}

async fn ready_branches(control: &Control, project_id: &str) -> Result<Vec<catalog::Branch>, JobError> {
    let branches = control.catalog.branches(project_id).await?;
    Ok(branches.into_iter().filter(|b| b.state == branch_state::READY).collect())
}

/// Sets `role`'s stored verifier on a branch's instance.
async fn set_verifier(
    control: &Control,
    branch: &catalog::Branch,
    role: &str,
    verifier: &str,
) -> Result<(), JobError> {
    let client = superuser(control, &branch.id).await?;
    client
        .batch_execute(&format!(
            "ALTER ROLE {} PASSWORD '{}'",
            quote_ident(role),
            verifier.replace('\'', "''")
        ))
        .await?;
    Ok(())
}
