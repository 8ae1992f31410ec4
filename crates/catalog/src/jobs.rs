//! The durable job queue. A job is `pending` until a worker claims it (`FOR UPDATE SKIP
//! LOCKED`), `running` while the worker holds a lease it renews with heartbeats, and ends
//! `succeeded`, `failed` or `cancelled`. A lease that runs out puts the job back to `pending`
//! (or fails it when its attempts are spent). Completion is fenced on the attempt number
//! and the worker, so a worker that lost its lease cannot overwrite the work of the one that
//! took over. A unique partial index allows one running job per `locked_resource`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;

use crate::page::Page;
use crate::{Catalog, CatalogError, ids};

/// The states of a job.
pub mod state {
    pub const PENDING: &str = "pending";
    pub const RUNNING: &str = "running";
    pub const SUCCEEDED: &str = "succeeded";
    pub const FAILED: &str = "failed";
    pub const CANCELLED: &str = "cancelled";
}

/// The job object, with every field of CapyDB's (plus `payload`).
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Job {
    pub id: String,
    #[serde(rename = "type")]
    #[sqlx(rename = "type")]
    pub kind: String,
    pub state: String,
    pub attempts: i32,
    pub max_attempts: i32,
    pub claimed_at: Option<DateTime<Utc>>,
    pub claimed_by: Option<String>,
    #[serde(skip)]
    pub lease_expires_at: Option<DateTime<Utc>>,
    #[serde(skip)]
    pub run_after: DateTime<Utc>,
    pub cluster_id: Option<String>,
    pub locked_resource: Option<String>,
    pub retry_classification: Option<String>,
    pub last_exit_code: Option<i32>,
    pub last_stdout: Option<String>,
    pub last_stderr: Option<String>,
    pub error: Option<String>,
    pub payload: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
    pub organization_id: String,
    pub project_id: Option<String>,
    pub preview_database_id: Option<String>,
    /// Bytes a running job has done of `progress_bytes_total` (a full branch's copy).
    pub progress_bytes_done: Option<i64>,
    pub progress_bytes_total: Option<i64>,
}

impl Job {
    pub fn is_finished(&self) -> bool {
        matches!(self.state.as_str(), state::SUCCEEDED | state::FAILED | state::CANCELLED)
    }
}

#[derive(Debug, Clone)]
pub struct NewJob {
    pub kind: String,
    pub organization_id: String,
    pub project_id: Option<String>,
    pub cluster_id: Option<String>,
    pub locked_resource: Option<String>,
    pub max_attempts: i32,
    pub payload: serde_json::Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryClassification {
    /// Worth another attempt (after a backoff) while attempts remain.
    Transient,
    /// Retrying cannot help.
    Permanent,
}

impl RetryClassification {
    pub fn as_str(self) -> &'static str {
        match self {
            RetryClassification::Transient => "transient",
            RetryClassification::Permanent => "permanent",
        }
    }
}

/// How an attempt failed, with what an external command printed.
#[derive(Debug, Clone)]
pub struct Failure {
    pub classification: RetryClassification,
    pub error: String,
    pub exit_code: Option<i32>,
    pub stdout: Option<String>,
    pub stderr: Option<String>,
    /// When a transient failure is retried.
    pub retry_in: Duration,
}

/// A completion refused because the attempt no longer holds the job.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("job {job_id} attempt {attempt} no longer holds its lease")]
pub struct Fenced {
    pub job_id: String,
    pub attempt: i32,
}

pub(crate) async fn insert(conn: &mut PgConnection, job: &NewJob) -> Result<Job, CatalogError> {
    Ok(sqlx::query_as(
        "INSERT INTO jobs (id, type, state, max_attempts, cluster_id, locked_resource, payload, \
         organization_id, project_id, preview_database_id) \
         VALUES ($1, $2, 'pending', $3, $4, $5, $6, $7, $8, $9) RETURNING *",
    )
    .bind(ids::generate(ids::JOB))
    .bind(&job.kind)
    .bind(job.max_attempts)
    .bind(&job.cluster_id)
    .bind(&job.locked_resource)
    .bind(&job.payload)
    .bind(&job.organization_id)
    .bind(&job.project_id)
    // A job on a preview's instance names the preview.
    .bind(job.cluster_id.as_deref().filter(|c| ids::is_id(c, ids::PREVIEW)))
    .fetch_one(conn)
    .await?)
}

/// The oldest pending or running job on `resource`.
pub(crate) async fn active_on(conn: &mut PgConnection, resource: &str) -> Result<Option<Job>, CatalogError> {
    Ok(sqlx::query_as(
        "SELECT * FROM jobs WHERE locked_resource = $1 AND state IN ('pending', 'running') \
         ORDER BY created_at LIMIT 1",
    )
    .bind(resource)
    .fetch_optional(conn)
    .await?)
}

fn interval(d: Duration) -> f64 {
    d.as_secs_f64()
}

impl Catalog {
    /// Enqueues a job, unless another job on its `locked_resource` is pending or running
    /// (then that job is returned as `Err`).
    pub async fn enqueue_job(&self, job: &NewJob) -> Result<Result<Job, Job>, CatalogError> {
        let mut tx = self.pool.begin().await?;
        if let Some(resource) = &job.locked_resource {
            // Serialize enqueues on one resource so two requests cannot both see it free.
            sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
                .bind(resource)
                .execute(&mut *tx)
                .await?;
            if let Some(blocking) = active_on(&mut tx, resource).await? {
                return Ok(Err(blocking));
            }
        }
        let job = insert(&mut tx, job).await?;
        tx.commit().await?;
        Ok(Ok(job))
    }

    pub async fn job(&self, id: &str) -> Result<Option<Job>, CatalogError> {
        Ok(sqlx::query_as("SELECT * FROM jobs WHERE id = $1").bind(id).fetch_optional(&self.pool).await?)
    }

    /// Jobs of an organization (of one project when `project` is set), oldest first.
    pub async fn list_jobs(
        &self,
        organization_id: &str,
        project: Option<&str>,
        page: &Page,
    ) -> Result<Vec<Job>, CatalogError> {
        Ok(sqlx::query_as(
            "SELECT * FROM jobs WHERE organization_id = $1 AND ($2::text IS NULL OR project_id = $2) \
             AND id > $3 ORDER BY id LIMIT $4",
        )
        .bind(organization_id)
        .bind(project)
        .bind(page.after.as_deref().unwrap_or(""))
        .bind(page.limit_plus_one())
        .fetch_all(&self.pool)
        .await?)
    }

    /// Claims the oldest runnable job for `worker`, with a lease of `lease`. A job waits
    /// while another job on its resource runs.
    pub async fn claim_job(&self, worker: &str, lease: Duration) -> Result<Option<Job>, CatalogError> {
        let claimed = sqlx::query_as(
            "UPDATE jobs SET state = 'running', attempts = attempts + 1, claimed_at = now(), \
             claimed_by = $1, lease_expires_at = now() + make_interval(secs => $2), \
             started_at = coalesce(started_at, now()), updated_at = now() \
             WHERE id = (SELECT j.id FROM jobs j WHERE j.state = 'pending' AND j.run_after <= now() \
               AND (j.locked_resource IS NULL OR NOT EXISTS (SELECT 1 FROM jobs r \
                    WHERE r.state = 'running' AND r.locked_resource = j.locked_resource)) \
               ORDER BY j.run_after, j.created_at LIMIT 1 FOR UPDATE SKIP LOCKED) \
             RETURNING *",
        )
        .bind(worker)
        .bind(interval(lease))
        .fetch_optional(&self.pool)
        .await;
        match claimed {
            Ok(job) => Ok(job),
            // Two workers took two jobs of one resource at once: the index let one through.
            Err(e) if CatalogError::is_unique_violation(&e, "jobs_one_running_per_resource") => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Extends the lease of a running attempt; `false` when the attempt lost the job.
    pub async fn heartbeat_job(
        &self,
        id: &str,
        attempt: i32,
        worker: &str,
        lease: Duration,
    ) -> Result<bool, CatalogError> {
        let done = sqlx::query(
            "UPDATE jobs SET lease_expires_at = now() + make_interval(secs => $4), updated_at = now() \
             WHERE id = $1 AND attempts = $2 AND claimed_by = $3 AND state = 'running'",
        )
        .bind(id)
        .bind(attempt)
        .bind(worker)
        .bind(interval(lease))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Puts running jobs whose lease ran out back to `pending` (or `failed` when their
    /// attempts are spent) and returns them as they are now: the caller owes a job that
    /// failed here its handler's clean-up, since the worker that held it never will.
    pub async fn requeue_expired_jobs(&self) -> Result<Vec<Job>, CatalogError> {
        Ok(sqlx::query_as(
            "UPDATE jobs SET \
               state = CASE WHEN attempts >= max_attempts THEN 'failed' ELSE 'pending' END, \
               error = 'the worker running attempt ' || attempts || ' stopped renewing its lease', \
               retry_classification = 'transient', \
               completed_at = CASE WHEN attempts >= max_attempts THEN now() END, \
               lease_expires_at = NULL, updated_at = now() \
             WHERE state = 'running' AND lease_expires_at < now() RETURNING *",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Marks an attempt succeeded.
    pub async fn succeed_job(
        &self,
        id: &str,
        attempt: i32,
        worker: &str,
    ) -> Result<Result<Job, Fenced>, CatalogError> {
        let job = sqlx::query_as(
            "UPDATE jobs SET state = 'succeeded', completed_at = now(), updated_at = now(), \
             lease_expires_at = NULL, error = NULL, retry_classification = NULL \
             WHERE id = $1 AND attempts = $2 AND claimed_by = $3 AND state = 'running' RETURNING *",
        )
        .bind(id)
        .bind(attempt)
        .bind(worker)
        .fetch_optional(&self.pool)
        .await?;
        Ok(job.ok_or_else(|| Fenced { job_id: id.to_owned(), attempt }))
    }

    /// Records a failed attempt: a transient failure with attempts left goes back to
    /// `pending` after `retry_in`, anything else ends the job `failed`.
    pub async fn fail_job(
        &self,
        id: &str,
        attempt: i32,
        worker: &str,
        failure: &Failure,
    ) -> Result<Result<Job, Fenced>, CatalogError> {
        let job = sqlx::query_as(
            "UPDATE jobs SET \
               state = CASE WHEN $4 = 'transient' AND attempts < max_attempts THEN 'pending' ELSE 'failed' END, \
               completed_at = CASE WHEN $4 = 'transient' AND attempts < max_attempts THEN NULL ELSE now() END, \
               run_after = now() + make_interval(secs => $5), \
               retry_classification = $4, error = $6, last_exit_code = $7, last_stdout = $8, \
               last_stderr = $9, lease_expires_at = NULL, updated_at = now() \
             WHERE id = $1 AND attempts = $2 AND claimed_by = $3 AND state = 'running' RETURNING *",
        )
        .bind(id)
        .bind(attempt)
        .bind(worker)
        .bind(failure.classification.as_str())
        .bind(interval(failure.retry_in))
        .bind(&failure.error)
        .bind(failure.exit_code)
        .bind(&failure.stdout)
        .bind(&failure.stderr)
        .fetch_optional(&self.pool)
        .await?;
        Ok(job.ok_or_else(|| Fenced { job_id: id.to_owned(), attempt }))
    }

    /// Cancels a job that has not started; `None` when it is not pending.
    pub async fn cancel_job(&self, id: &str) -> Result<Option<Job>, CatalogError> {
        Ok(sqlx::query_as(
            "UPDATE jobs SET state = 'cancelled', completed_at = now(), updated_at = now() \
             WHERE id = $1 AND state = 'pending' RETURNING *",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?)
    }
}
