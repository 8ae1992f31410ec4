//! `provision_project`: the main branch's instance (a copy of the template, started), the
//! project's database (the template's database renamed) and its owner role (LOGIN, nothing
//! more, password set as a SCRAM verifier so no plaintext reaches the server or its log),
//! then the project becomes `ready` and the route sync picks it up.

use std::sync::Arc;

use catalog::{Job, ProjectRole, project_state};

use super::{JobError, blocking, main_branch, superuser_at};
use crate::Control;
use crate::instances::TEMPLATE_DATABASE;
use crate::names::{owner_role, quote_ident};

pub async fn run(control: &Control, job: &Job) -> Result<(), JobError> {
    let project_id = job.project_id.as_deref().ok_or_else(|| JobError::permanent("job names no project"))?;
    let Some(project) = control.catalog.project(project_id).await? else {
        return Ok(()); // deleted meanwhile: nothing to provision
    };
    if project.state == project_state::DELETING {
        return Ok(());
    }
    let branch = main_branch(control, project_id).await?;
    let roles = control.catalog.roles(project_id).await?;

    let instances = Arc::clone(&control.instances);
    let branch_id = branch.id.clone();
    blocking(move || instances.provision(&branch_id)).await?;
    set_up_database(control, &control.instances.socket_dir(&branch.id), &project.name, &roles).await?;

    if project.state != project_state::READY {
        control.catalog.set_project_state(project_id, project_state::READY).await?;
    }
    Ok(())
}

/// The project's database and roles on a fresh instance made from the template (a new
/// project's main branch, or an `empty` or `schema` branch). Safe to repeat.
pub(super) async fn set_up_database(
    control: &Control,
    socket_dir: &std::path::Path,
    database: &str,
    roles: &[ProjectRole],
) -> Result<(), JobError> {
    let client = superuser_at(control, socket_dir).await?;

    let exists = |name: &str| {
        let name = name.to_owned();
        let client = &client;
        async move {
            client
                .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
                .await
                .map(|r| r.is_some())
        }
    };
    if !exists(database).await? {
        if exists(TEMPLATE_DATABASE).await? {
            client
                .batch_execute(&format!(
                    "ALTER DATABASE {TEMPLATE_DATABASE} RENAME TO {}",
                    quote_ident(database)
                ))
                .await?;
        } else {
            client.batch_execute(&format!("CREATE DATABASE {}", quote_ident(database))).await?;
        }
    }
    for role in roles {
        let has_role =
            client.query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&role.name]).await?.is_some();
        let verb = if has_role { "ALTER" } else { "CREATE" };
        client
            .batch_execute(&format!(
                "{verb} ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD '{}'",
                quote_ident(&role.name),
                role.verifier.replace('\'', "''"),
            ))
            .await?;
    }
    client
        .batch_execute(&format!(
            "ALTER DATABASE {} OWNER TO {}",
            quote_ident(database),
            quote_ident(&owner_role(database))
        ))
        .await?;
    Ok(())
}

/// The project failed to provision for good: it stays, in state `failed` (so its job and
/// error can be read), and its half-made instance goes.
pub async fn after_failure(control: &Control, job: &Job) {
    let Some(project_id) = job.project_id.as_deref() else { return };
    if let Err(e) = control.catalog.set_project_state(project_id, project_state::FAILED).await {
        tracing::error!(project_id, error = %e, "could not mark the project failed");
    }
    let Some(branch_id) = job.cluster_id.clone() else { return };
    let instances = Arc::clone(&control.instances);
    if let Err(e) = blocking(move || instances.remove(&branch_id)).await {
        tracing::error!(project_id, error = %e.message, "could not remove the failed project's instance");
    }
}
