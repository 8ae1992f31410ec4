//! The job worker: claims jobs from the catalog, renews the lease while a handler runs,
//! and records the outcome fenced on the attempt. A worker that loses its lease (another
//! worker requeued the job, or the lease ran out before a renewal got through) drops its
//! handler at once and records nothing: the job belongs to the next claimer. Transient
//! failures come back after an exponential backoff; a job that fails for good gets its
//! handler's clean-up, also when it failed because its last attempt's lease ran out.
//! Several workers (in one process or many) may run against one catalog.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use catalog::{Failure, Job, RetryClassification, job_state};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::Control;
use crate::handlers::{self, JobError};

/// How a worker behaves; tests shorten the durations.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// How long a claim holds without a heartbeat.
    pub lease: Duration,
    /// How often a running job's lease is renewed; kept under half of `lease`, so one
    /// renewal can fail without losing the job.
    pub heartbeat: Duration,
    /// The first retry's delay; each further retry doubles it (up to a minute).
    pub retry_base: Duration,
    /// How often an idle worker looks for jobs without being notified.
    pub poll: Duration,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        WorkerSettings {
            lease: Duration::from_secs(30),
            heartbeat: Duration::from_secs(10),
            retry_base: Duration::from_secs(1),
            poll: Duration::from_secs(1),
        }
    }
}

/// What runs a claimed job: Berth's handlers, unless a test stands in its own (one that
/// stalls, or fails on purpose) with [`Worker::with_handler`].
pub type Handler = Arc<
    dyn Fn(Arc<Control>, Job) -> Pin<Box<dyn Future<Output = Result<(), JobError>> + Send>> + Send + Sync,
>;

pub struct Worker {
    control: Arc<Control>,
    name: String,
    handler: Option<Handler>,
}

impl Worker {
    pub fn new(control: Arc<Control>, name: impl Into<String>) -> Worker {
        Worker { control, name: name.into(), handler: None }
    }

    /// Runs `handler` instead of Berth's job handlers; the lease, the fencing of the
    /// outcome and the clean-up after a failure stay the worker's.
    pub fn with_handler(mut self, handler: Handler) -> Worker {
        self.handler = Some(handler);
        self
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
        for job in catalog.requeue_expired_jobs().await? {
            tracing::warn!(worker = %self.name, job_id = %job.id, job_type = %job.kind, attempt = job.attempts,
                state = %job.state, "requeued a job whose lease expired");
            // Its worker stopped renewing the lease on the last attempt: nobody else will
            // clean up after it (a project would stay `provisioning` for good).
            if job.state == job_state::FAILED {
                handlers::after_failure(&self.control, &job).await;
            }
        }
        crate::reaper::reap_expired(&self.control).await?;
        let finished = catalog.finish_expired_graces().await?;
        if finished > 0 {
            tracing::info!(roles = finished, "rotation grace periods over; old passwords refused");
        }
        // The catalog starts the lease when it takes the claim, after this instant: the
        // worker's own reckoning of it never outlasts the catalog's.
        let asked = Instant::now();
        let Some(job) = catalog.claim_job(&self.name, self.control.worker.lease).await? else {
            return Ok(false);
        };
        self.run_job(job, asked).await?;
        Ok(true)
    }

    async fn run_job(&self, job: Job, claimed: Instant) -> Result<(), catalog::CatalogError> {
        let catalog = &self.control.catalog;
        tracing::info!(job_id = %job.id, job_type = %job.kind, attempt = job.attempts, worker = %self.name, "job started");
        let lease = self.hold_lease(&job, claimed);
        let handler = match &self.handler {
            Some(h) => h(Arc::clone(&self.control), job.clone()),
            None => {
                let (control, job) = (Arc::clone(&self.control), job.clone());
                Box::pin(async move { handlers::run(&control, &job).await })
            }
        };
        let result = tokio::select! {
            biased;
            () = lease.lost.cancelled() => {
                // Dropping the handler stops it at its next await. Handlers are idempotent,
                // so the next claimer's attempt redoes or finishes what this one started.
                tracing::warn!(job_id = %job.id, job_type = %job.kind, attempt = job.attempts, worker = %self.name,
                    "lost the job's lease: handler stopped, outcome left to the next claimer");
                return Ok(());
            }
            result = handler => result,
        };
        lease.stop.cancel();
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

    /// Renews the lease every `heartbeat` until `stop`. The lease is lost, and `lost`
    /// cancelled, when the catalog says another attempt holds the job, or when the lease
    /// would have run out before a renewal got through (the catalog unreachable, or too
    /// slow): by then another worker may have requeued and claimed the job.
    fn hold_lease(&self, job: &Job, claimed: Instant) -> Lease {
        let lease = Lease { stop: CancellationToken::new(), lost: CancellationToken::new() };
        let (control, name, id, attempt) =
            (Arc::clone(&self.control), self.name.clone(), job.id.clone(), job.attempts);
        let (stop, lost) = (lease.stop.clone(), lease.lost.clone());
        tokio::spawn(async move {
            let length = control.worker.lease;
            let every = control.worker.heartbeat.min(length / 2);
            let mut held_until = claimed + length;
            let mut next = Instant::now() + every;
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep_until(next.min(held_until)) => {}
                }
                let sent = Instant::now();
                if sent >= held_until {
                    tracing::warn!(job_id = %id, attempt, "the job's lease ran out before it could be renewed");
                    break;
                }
                let renewal = control.catalog.heartbeat_job(&id, attempt, &name, length);
                match tokio::time::timeout_at(held_until, renewal).await {
                    Ok(Ok(true)) => held_until = sent + length,
                    Ok(Ok(false)) => {
                        tracing::warn!(job_id = %id, attempt, "another attempt holds the job now");
                        break;
                    }
                    Ok(Err(e)) => tracing::warn!(job_id = %id, error = %e, "heartbeat failed"),
                    Err(_) => {
                        tracing::warn!(job_id = %id, attempt, "the job's lease ran out before it could be renewed");
                        break;
                    }
                }
                next = sent + every;
            }
            lost.cancel();
        });
        lease
    }
}

/// A running attempt's hold on its job.
struct Lease {
    /// Cancelled by the worker when the handler is done: renewals stop.
    stop: CancellationToken,
    /// Cancelled by the renewals when the attempt no longer holds the job.
    lost: CancellationToken,
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
