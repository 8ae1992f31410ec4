//! The job worker: claims jobs from the catalog, renews the lease while a handler runs,
//! and records the outcome fenced on the attempt. Transient failures come back after an
//! exponential backoff; a job that fails for good gets its handler's clean-up. Several
//! workers (in one process or many) may run against one catalog.

use std::sync::Arc;
use std::time::Duration;

use catalog::{Failure, Job, RetryClassification, job_state};
use tokio_util::sync::CancellationToken;

use crate::Control;
use crate::handlers::{self, JobError};

/// How a worker behaves; tests shorten the durations.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// How long a claim holds without a heartbeat.
    pub lease: Duration,
    /// The first retry's delay; each further retry doubles it (up to a minute).
    pub retry_base: Duration,
    /// How often an idle worker looks for jobs without being notified.
    pub poll: Duration,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        WorkerSettings {
            lease: Duration::from_secs(30),
            retry_base: Duration::from_secs(1),
            poll: Duration::from_secs(1),
        }
    }
}

pub struct Worker {
    control: Arc<Control>,
    name: String,
}

impl Worker {
    pub fn new(control: Arc<Control>, name: impl Into<String>) -> Worker {
        Worker { control, name: name.into() }
    }

    /// Runs jobs until `shutdown`. A job in progress at shutdown is finished first.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut events = self.control.events.subscribe();
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            match self.step().await {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => tracing::error!(worker = %self.name, error = %e, "job queue unavailable"),
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = events.changed() => {}
                () = tokio::time::sleep(self.control.worker.poll) => {}
            }
        }
    }

    /// Claims and runs at most one job; `Ok(true)` when it ran one.
    pub async fn step(&self) -> Result<bool, catalog::CatalogError> {
        let catalog = &self.control.catalog;
        let requeued = catalog.requeue_expired_jobs().await?;
        if requeued > 0 {
            tracing::warn!(worker = %self.name, jobs = requeued, "requeued jobs whose lease expired");
        }
        crate::reaper::reap_expired(&self.control).await?;
        let finished = catalog.finish_expired_graces().await?;
        if finished > 0 {
            tracing::info!(roles = finished, "rotation grace periods over; old passwords refused");
        }
        let Some(job) = catalog.claim_job(&self.name, self.control.worker.lease).await? else {
            return Ok(false);
        };
        self.run_job(job).await?;
        Ok(true)
    }

    async fn run_job(&self, job: Job) -> Result<(), catalog::CatalogError> {
        let catalog = &self.control.catalog;
        tracing::info!(job_id = %job.id, job_type = %job.kind, attempt = job.attempts, worker = %self.name, "job started");
        let heartbeat = self.heartbeat(&job);
        let result = handlers::run(&self.control, &job).await;
        heartbeat.cancel();
        let outcome = match &result {
            Ok(()) => catalog.succeed_job(&job.id, job.attempts, &self.name).await?,
            Err(e) => {
                let failure = self.failure(&job, e);
                catalog.fail_job(&job.id, job.attempts, &self.name, &failure).await?
            }
        };
        match outcome {
            Ok(done) => {
                match &result {
                    Ok(()) => tracing::info!(job_id = %job.id, job_type = %job.kind, "job succeeded"),
                    Err(e) => tracing::warn!(job_id = %job.id, job_type = %job.kind, attempt = job.attempts,
                        classification = e.classification.as_str(), state = %done.state, error = %e.message, "job attempt failed"),
                }
                if done.state == job_state::FAILED {
                    handlers::after_failure(&self.control, &done).await;
                }
            }
            Err(fenced) => tracing::warn!(job_id = %job.id, error = %fenced, "job outcome discarded"),
        }
        Ok(())
    }

    fn failure(&self, job: &Job, e: &JobError) -> Failure {
        let base = self.control.worker.retry_base;
        let exponent = u32::try_from(job.attempts.saturating_sub(1)).unwrap_or(0).min(6);
        Failure {
            classification: e.classification,
            error: e.message.clone(),
            exit_code: e.exit_code,
            stdout: e.stdout.clone(),
            stderr: e.stderr.clone(),
            retry_in: (base * 2u32.pow(exponent)).min(Duration::from_secs(60)),
        }
    }

    /// Renews the lease every third of its length until the returned token is cancelled.
    fn heartbeat(&self, job: &Job) -> CancellationToken {
        let stop = CancellationToken::new();
        let (control, name, id, attempt) =
            (Arc::clone(&self.control), self.name.clone(), job.id.clone(), job.attempts);
        let token = stop.clone();
        tokio::spawn(async move {
            let lease = control.worker.lease;
            loop {
                tokio::select! {
                    () = token.cancelled() => return,
                    () = tokio::time::sleep(lease / 3) => {}
                }
                match control.catalog.heartbeat_job(&id, attempt, &name, lease).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(job_id = %id, attempt, "lost the job's lease");
                        return;
                    }
                    Err(e) => tracing::warn!(job_id = %id, error = %e, "heartbeat failed"),
                }
            }
        });
        stop
    }
}

impl JobError {
    pub fn transient(message: impl Into<String>) -> Self {
        JobError {
            classification: RetryClassification::Transient,
            message: message.into(),
            exit_code: None,
            stdout: None,
            stderr: None,
        }
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        JobError { classification: RetryClassification::Permanent, ..Self::transient(message) }
    }
}
