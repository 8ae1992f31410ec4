//! Job handlers, one file per job type. Every handler is idempotent: a job may run twice
//! (a worker can die after doing the work and before recording it), so each step checks
//! what is already done.

mod branch;
mod delete;
mod provision;
mod rotate;

use catalog::{Job, RetryClassification};
use node::NodeError;

use crate::Control;

pub const PROVISION_PROJECT: &str = "provision_project";
pub const DELETE_PROJECT: &str = "delete_project";
pub const ROTATE_CREDENTIALS: &str = "rotate_credentials";
pub const CREATE_BRANCH: &str = "create_branch";
pub const RESET_BRANCH: &str = "reset_branch";
pub const DELETE_BRANCH: &str = "delete_branch";
pub const CREATE_PREVIEW: &str = "create_preview";
pub const DELETE_PREVIEW: &str = "delete_preview";
/// A preview deleted because its time to live ran out.
pub const REAP_PREVIEW: &str = "reap_preview";

/// A failed attempt, with what an external command printed when one failed.
#[derive(Debug, Clone)]
pub struct JobError {
    pub classification: RetryClassification,
    pub message: String,
    pub exit_code: Option<i32>,
    pub stdout: Option<String>,
    pub stderr: Option<String>,
}

impl From<catalog::CatalogError> for JobError {
    fn from(e: catalog::CatalogError) -> Self {
        JobError::transient(e.to_string())
    }
}

impl From<NodeError> for JobError {
    fn from(e: NodeError) -> Self {
        let mut out = JobError::transient(first_line(&e.to_string()));
        match &e {
            NodeError::StartFailed { status, log_tail, .. } => {
                out.exit_code = status.code();
                out.stderr = Some(log_tail.clone());
            }
            NodeError::StartTimeout { log_tail, .. } => out.stderr = Some(log_tail.clone()),
            NodeError::CommandFailed { status, output, .. } => {
                out.exit_code = status.code();
                out.stderr = Some(output.clone());
            }
            // Missing binaries or an unusable configuration will not fix themselves.
            NodeError::BinariesNotFound { .. }
            | NodeError::InvalidBindir { .. }
            | NodeError::UnsafeEntry { .. }
            | NodeError::InvalidSuperuser { .. }
            | NodeError::Unsupported { .. } => out.classification = RetryClassification::Permanent,
            // A full disk stays full until someone frees space, and each retry would fill it
            // again under the running instances.
            NodeError::NoSpace { .. } => out.classification = RetryClassification::Permanent,
            NodeError::Io { source, .. }
                if matches!(
                    source.kind(),
                    std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
                ) =>
            {
                out.classification = RetryClassification::Permanent;
            }
            _ => {}
        }
        out
    }
}

impl From<tokio_postgres::Error> for JobError {
    fn from(e: tokio_postgres::Error) -> Self {
        // tokio-postgres keeps the why (the socket's error, the server's message) in the
        // source. A server error is named by its SQLSTATE only: its text may quote a statement,
        // and statements here carry verifiers.
        let why = match (e.as_db_error(), std::error::Error::source(&e)) {
            (Some(db), _) => format!(" (SQLSTATE {})", db.code().code()),
            (None, Some(source)) => format!(": {source}"),
            (None, None) => String::new(),
        };
        JobError::transient(format!("instance SQL: {e}{why}"))
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().to_owned()
}

pub async fn run(control: &Control, job: &Job) -> Result<(), JobError> {
    match job.kind.as_str() {
        PROVISION_PROJECT => provision::run(control, job).await,
        DELETE_PROJECT => delete::run(control, job).await,
        ROTATE_CREDENTIALS => rotate::run(control, job).await,
        CREATE_BRANCH | CREATE_PREVIEW => branch::create(control, job).await,
        RESET_BRANCH => branch::reset(control, job).await,
        DELETE_BRANCH | DELETE_PREVIEW | REAP_PREVIEW => branch::delete(control, job).await,
        other => Err(JobError::permanent(format!("unknown job type {other:?}"))),
    }
}

/// Clean-up after a job failed for good.
pub async fn after_failure(control: &Control, job: &Job) {
    match job.kind.as_str() {
        PROVISION_PROJECT => provision::after_failure(control, job).await,
        CREATE_BRANCH | CREATE_PREVIEW => branch::after_create_failure(control, job).await,
        RESET_BRANCH => branch::after_reset_failure(control, job).await,
        ROTATE_CREDENTIALS => rotate::after_failure(control, job).await,
        _ => {}
    }
}

/// The project's `main` branch.
async fn main_branch(control: &Control, project_id: &str) -> Result<catalog::Branch, JobError> {
    let branches = control.catalog.branches(project_id).await?;
    branches.into_iter().find(|b| b.name == "main").ok_or_else(|| JobError::permanent("no main branch"))
}

/// A superuser session on a branch's instance, over its private socket. The session never
/// lets the server quote a failing statement in its log: statements here carry verifiers.
async fn superuser(control: &Control, branch_id: &str) -> Result<tokio_postgres::Client, JobError> {
    superuser_at(control, &control.instances.socket_dir(branch_id)).await
}

/// A superuser session on the instance whose socket is in `socket_dir` (one not supervised
/// yet, such as a reset's staging instance).
async fn superuser_at(
    control: &Control,
    socket_dir: &std::path::Path,
) -> Result<tokio_postgres::Client, JobError> {
    let (client, connection) = tokio_postgres::Config::new()
        .host_path(socket_dir)
        .port(control.instances.port())
        .user(control.instances.superuser())
        .dbname("postgres")
        .connect(tokio_postgres::NoTls)
        .await?;
    tokio::spawn(connection);
    client.batch_execute("SET log_min_error_statement = panic").await?;
    Ok(client)
}

/// Runs blocking instance work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, NodeError> + Send + 'static,
) -> Result<T, JobError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(JobError::from),
        Err(e) => Err(JobError::transient(format!("instance task panicked: {e}"))),
    }
}
