//! `create_branch`, `reset_branch` and `delete_branch`. A branch's instance is built from its
//! parent: `full` is an online physical copy of the parent's running instance (a temporary
//! replication slot keeps the WAL, `pg_backup_start` on a session held open, the files
//! copied or reflinked, `pg_backup_stop`, the WAL and `backup_label` written into the copy,
//! which then starts with crash recovery); `empty` is the template with the project's
//! database and roles; `schema` is that plus `pg_dump --schema-only` of the parent. The
//! parent keeps serving throughout. Creating builds in the branch's own root (it is not
//! routable until `ready`, and a retry starts over); a reset builds beside it and swaps,
//! keeping the old data aside until the new instance serves.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use catalog::{Branch, Job, Project, branch_state, project_state};
use node::clone::{self, CopyProgress};
use node::schema::{self, Endpoint};

use super::provision::set_up_database;
use super::{JobError, blocking, superuser};
use crate::Control;
use crate::instances::ReplaceError;

/// How often a running copy's progress is written to its job.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

struct Work {
    project: Project,
    branch: Branch,
    parent: Branch,
}

async fn load(control: &Control, job: &Job) -> Result<Option<Work>, JobError> {
    let branch_id = job.cluster_id.as_deref().ok_or_else(|| JobError::permanent("job names no branch"))?;
    let Some(branch) = control.catalog.branch(branch_id).await? else {
        return Ok(None); // deleted meanwhile
    };
    let project = control
        .catalog
        .project(&branch.project_id)
        .await?
        .ok_or_else(|| JobError::permanent("the project no longer exists"))?;
    if project.state != project_state::READY {
        return Err(JobError::permanent(format!("the project is {}, not ready", project.state)));
    }
    let parent_id =
        branch.parent_id.as_deref().ok_or_else(|| JobError::permanent("the branch has no parent"))?;
    let parent = control
        .catalog
        .branch(parent_id)
        .await?
        .filter(|p| p.state == branch_state::READY)
        .ok_or_else(|| JobError::permanent("the parent branch is gone or not ready"))?;
    Ok(Some(Work { project, branch, parent }))
}

pub async fn create(control: &Control, job: &Job) -> Result<(), JobError> {
    let Some(work) = load(control, job).await? else { return Ok(()) };
    match work.branch.state.as_str() {
        branch_state::READY => return Ok(()), // an earlier attempt finished
        branch_state::CREATING => {}
        other => return Err(JobError::permanent(format!("the branch is {other}"))),
    }
    let root = control.instances.root(&work.branch.id);
    let instances = Arc::clone(&control.instances);
    let (id, r) = (work.branch.id.clone(), root.clone());
    // Whatever an earlier attempt left is thrown away: nothing routes to it yet.
    blocking(move || {
        instances.stop(&id)?;
        instances.clear(&r)
    })
    .await?;
    if let Err(e) = build_files(control, job, &work, &root).await {
        return Err(discard(&root, e).await);
    }
    let instances = Arc::clone(&control.instances);
    let id = work.branch.id.clone();
    blocking(move || instances.start(&id)).await?;
    if work.branch.data != "full" {
        set_up(control, &work, &root).await?;
    }
    control.catalog.set_branch_state(&work.branch.id, branch_state::READY).await?;
    tracing::info!(branch_id = %work.branch.id, project_id = %work.project.id, data = %work.branch.data, "branch created");
    Ok(())
}

pub async fn reset(control: &Control, job: &Job) -> Result<(), JobError> {
    let Some(work) = load(control, job).await? else { return Ok(()) };
    if work.branch.state != branch_state::READY {
        return Err(JobError::permanent(format!("the branch is {}", work.branch.state)));
    }
    let staging = control.instances.staging_root(&work.branch.id);
    let instances = Arc::clone(&control.instances);
    let (id, s) = (work.branch.id.clone(), staging.clone());
    // An earlier attempt cut short in its swap set the branch's data aside: it comes back
    // (and serves) before anything else happens.
    blocking(move || {
        instances.recover_reset(&id)?;
        instances.clear(&s)
    })
    .await?;
    if let Err(e) = build_files(control, job, &work, &staging).await {
        return Err(discard(&staging, e).await);
    }
    if work.branch.data != "full" {
        // Set up on the staging instance, then stop it: the swap starts it as the branch.
        let bins = control.instances.binaries().clone();
        let s = staging.clone();
        let mut instance = blocking(move || {
            let mut i = node::Instance::open(&bins, &s)?;
            i.start()?;
            Ok(i)
        })
        .await?;
        let set = set_up(control, &work, &staging).await;
        blocking(move || instance.stop()).await?;
        set?;
    }
    let instances = Arc::clone(&control.instances);
    let id = work.branch.id.clone();
    let swapped = match tokio::task::spawn_blocking(move || instances.replace(&id, &staging)).await {
        Ok(swapped) => swapped,
        Err(e) => return Err(JobError::transient(format!("instance task panicked: {e}"))),
    };
    match swapped {
        Ok(()) => {}
        Err(ReplaceError::NotSwapped(e)) => return Err(e.into()),
        Err(ReplaceError::StartFailed { start, restored }) => {
            let mut e = JobError::from(*start);
            e.message = match restored {
                None => format!(
                    "the reset copy did not start, so the branch keeps its old data and serves it again: {}",
                    e.message
                ),
                Some(r) => format!(
                    "the reset copy did not start ({}), and putting the branch's old data back failed: {r}",
                    e.message
                ),
            };
            return Err(e);
        }
    }
    tracing::info!(branch_id = %work.branch.id, project_id = %work.project.id, "branch reset to its parent");
    Ok(())
}

pub async fn delete(control: &Control, job: &Job) -> Result<(), JobError> {
    let branch_id = job.cluster_id.clone().ok_or_else(|| JobError::permanent("job names no branch"))?;
    // The branch is already `deleting` in the catalog: the proxy drops its route (and tells
    // its sessions) before the instance stops under them.
    if let Some(routes) = control.route_refresh.get() {
        routes.refresh().await;
    }
    let instances = Arc::clone(&control.instances);
    let id = branch_id.clone();
    blocking(move || {
        instances.remove(&id)?;
        instances.clear(&instances.staging_root(&id))
    })
    .await?;
    control.catalog.purge_branch(&branch_id).await?;
    tracing::info!(branch_id, "branch deleted");
    Ok(())
}

/// The branch's files at `root` (which must not exist), stopped: a copy of the parent's
/// running instance, or of the template.
async fn build_files(control: &Control, job: &Job, work: &Work, root: &Path) -> Result<(), JobError> {
    if work.branch.data == "full" {
        return copy_parent(control, job, &work.parent.id, root).await;
    }
    let instances = Arc::clone(&control.instances);
    let root = root.to_owned();
    blocking(move || instances.from_template(&root).map(drop)).await
}

/// Removes what a failed build left at `root` at once, not when the job has failed for good:
/// a partial copy may be what filled the disk the parent writes its WAL to. Nothing there
/// has been started (a build only writes files), so there is no instance to stop, and a
/// partial copy may lack what opening one needs. Returns `error`.
async fn discard(root: &Path, error: JobError) -> JobError {
    let r = root.to_owned();
    // Its OS user goes with it.
    let removed = blocking(move || node::remove_root(&r)).await;
    if let Err(e) = removed {
        tracing::error!(root = %root.display(), error = %e.message, "could not remove a failed build's files");
    }
    error
}

/// The project's database and roles on the fresh instance at `root`, and for `schema` the
/// parent's schema restored into it (`pg_dump` as the parent's OS user, `psql` as the new
/// instance's).
async fn set_up(control: &Control, work: &Work, root: &Path) -> Result<(), JobError> {
    let socket_dir = root.join("socket");
    let roles = control.catalog.roles(&work.project.id).await?;
    set_up_database(control, &socket_dir, &work.project.name, &roles).await?;
    if work.branch.data == "schema" {
        let instances = Arc::clone(&control.instances);
        let (parent_root, root) = (control.instances.root(&work.parent.id), root.to_owned());
        let (port, user, db) =
            (control.instances.port(), control.instances.superuser().to_owned(), work.project.name.clone());
        blocking(move || {
            let (from_user, to_user) = (instances.os_user(&parent_root)?, instances.os_user(&root)?);
            let (from_socket, to_socket) = (parent_root.join("socket"), root.join("socket"));
            let from =
                Endpoint { socket_dir: &from_socket, port, user: &user, dbname: &db, os_user: &from_user };
            let to = Endpoint { socket_dir: &to_socket, port, user: &user, dbname: &db, os_user: &to_user };
            schema::copy_schema(instances.binaries(), from, to)
        })
        .await?;
    }
    Ok(())
}

/// An online physical copy of the parent's running instance into `root`.
async fn copy_parent(control: &Control, job: &Job, parent_id: &str, root: &Path) -> Result<(), JobError> {
    // One session holds the slot and the backup: if it dies, PostgreSQL ends both.
    let session = superuser(control, parent_id).await?;
    // The slot keeps the WAL from before the backup's checkpoint until the copy has it.
    let slot = format!("berth_{}", job.id);
    session.execute("SELECT pg_create_physical_replication_slot($1, true, true)", &[&slot]).await?;
    let label = format!("berth {}", job.id);
    session.execute("SELECT pg_backup_start($1, true)", &[&label]).await?;

    let progress = Arc::new(CopyProgress::default());
    let reporter = report_progress(control, job, Arc::clone(&progress));
    let (src, dst, p) = (control.instances.data_dir(parent_id), root.to_owned(), Arc::clone(&progress));
    let copied = blocking(move || clone::copy_data_dir(&src, &dst, &p)).await;
    let stopped = session
        .query_one(
            "SELECT labelfile, coalesce(spcmapfile, ''), pg_walfile_name(lsn) FROM pg_backup_stop(false)",
            &[],
        )
        .await;
    let method = copied?;
    let stopped = stopped?;
    let (backup_label, tablespace_map, last_segment): (String, String, String) =
        (stopped.get(0), stopped.get(1), stopped.get(2));
    let first_segment = clone::label_start_segment(&backup_label)
        .ok_or_else(|| JobError::permanent("pg_backup_stop returned a backup_label without its start"))?
        .to_owned();
    let (src, dst, p) = (control.instances.data_dir(parent_id), root.to_owned(), Arc::clone(&progress));
    let finished = blocking(move || {
        clone::finish(&src, &dst, &first_segment, &last_segment, &backup_label, &tablespace_map, &p)
    })
    .await;
    drop(reporter);
    finished?;
    drop(session);
    control.catalog.report_job_progress(&job.id, job.attempts, progress.done(), progress.total()).await?;
    tracing::info!(job_id = %job.id, parent_id, method = method.as_str(), bytes = progress.total(), "copied the parent's instance");
    Ok(())
}

/// Stops the progress reports when the copy ends, however it ends.
struct Reporter(tokio::task::JoinHandle<()>);

impl Drop for Reporter {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Writes the copy's progress to the job until the returned reporter is dropped.
fn report_progress(control: &Control, job: &Job, progress: Arc<CopyProgress>) -> Reporter {
    let (catalog, id, attempt) = (control.catalog.clone(), job.id.clone(), job.attempts);
    Reporter(tokio::spawn(async move {
        loop {
            if let Err(e) = catalog.report_job_progress(&id, attempt, progress.done(), progress.total()).await
            {
                tracing::warn!(job_id = %id, error = %e, "could not record the copy's progress");
            }
            tokio::time::sleep(PROGRESS_EVERY).await;
        }
    }))
}

/// A branch that could not be made for good is `failed` (its job says why) and keeps no
/// files; it can be deleted.
pub async fn after_create_failure(control: &Control, job: &Job) {
    let Some(branch_id) = job.cluster_id.clone() else { return };
    if let Err(e) = control.catalog.set_branch_state(&branch_id, branch_state::FAILED).await {
        tracing::error!(branch_id, error = %e, "could not mark the branch failed");
    }
    let instances = Arc::clone(&control.instances);
    let id = branch_id.clone();
    if let Err(e) = blocking(move || instances.remove(&id)).await {
        tracing::error!(branch_id, error = %e.message, "could not remove the failed branch's instance");
    }
}

/// A reset that failed for good leaves the branch as it was (data it set aside is put back
/// and served); only its staging files go.
pub async fn after_reset_failure(control: &Control, job: &Job) {
    let Some(branch_id) = job.cluster_id.clone() else { return };
    let instances = Arc::clone(&control.instances);
    let id = branch_id.clone();
    let cleaned = blocking(move || {
        instances.recover_reset(&id)?;
        instances.clear(&instances.staging_root(&id))
    });
    if let Err(e) = cleaned.await {
        tracing::error!(branch_id, error = %e.message, "could not remove a failed reset's files");
    }
}
