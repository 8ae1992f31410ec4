//! The job queue against a real PostgreSQL: claims never overlap, a worker that stops
//! renewing its lease loses the job to another, stale completions are fenced, failures are
//! retried or not as classified, and one resource runs one job at a time.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::Duration;

use catalog::{Catalog, Failure, NewJob, RetryClassification, job_state};
use testkit::TestPg;

const LEASE: Duration = Duration::from_secs(30);

async fn catalog(pg: &TestPg) -> Catalog {
    let catalog = Catalog::connect_socket(pg.socket_dir(), pg.port(), "postgres", "postgres").await.unwrap();
    catalog.migrate().await.unwrap();
    catalog
}

async fn org(catalog: &Catalog) -> String {
    catalog.create_organization("test").await.unwrap().id
}

fn job(org: &str, resource: Option<&str>) -> NewJob {
    NewJob {
        kind: "test".into(),
        organization_id: org.into(),
        project_id: None,
        cluster_id: None,
        locked_resource: resource.map(str::to_owned),
        max_attempts: 3,
        payload: serde_json::json!({}),
    }
}

fn failure(classification: RetryClassification) -> Failure {
    Failure {
        classification,
        error: "initdb failed".into(),
        exit_code: Some(2),
        stdout: Some("out".into()),
        stderr: Some("FATAL: no".into()),
        retry_in: Duration::ZERO,
    }
}

#[tokio::test]
async fn concurrent_workers_never_claim_the_same_job() {
    let pg = TestPg::start().unwrap();
    let catalog = catalog(&pg).await;
    let org = org(&catalog).await;
    for _ in 0..40 {
        catalog.enqueue_job(&job(&org, None)).await.unwrap().unwrap();
    }
    let mut workers = Vec::new();
    for w in 0..4 {
        let catalog = catalog.clone();
        workers.push(tokio::spawn(async move {
            let name = format!("worker-{w}");
            let mut mine = Vec::new();
            while let Some(job) = catalog.claim_job(&name, LEASE).await.unwrap() {
                catalog.succeed_job(&job.id, job.attempts, &name).await.unwrap().unwrap();
                mine.push(job.id);
            }
            mine
        }));
    }
    let mut counts: HashMap<String, usize> = HashMap::new();
    for w in workers {
        for id in w.await.unwrap() {
            *counts.entry(id).or_default() += 1;
        }
    }
    assert_eq!(counts.len(), 40, "every job was claimed");
    assert!(counts.values().all(|&n| n == 1), "a job was claimed twice: {counts:?}");
}

#[tokio::test]
async fn an_expired_lease_goes_to_another_worker_and_the_stale_completion_is_fenced() {
    let pg = TestPg::start().unwrap();
    let catalog = catalog(&pg).await;
    let org = org(&catalog).await;
    let queued = catalog.enqueue_job(&job(&org, Some("proj_x"))).await.unwrap().unwrap();

    // Worker A claims with a short lease and then "dies": no heartbeat, no completion.
    let a = catalog.claim_job("a", Duration::from_millis(200)).await.unwrap().unwrap();
    assert_eq!((a.id.as_str(), a.attempts, a.state.as_str()), (queued.id.as_str(), 1, job_state::RUNNING));
    assert!(catalog.claim_job("b", LEASE).await.unwrap().is_none(), "a running job is not claimable");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(catalog.requeue_expired_jobs().await.unwrap().len(), 1);

    let b = catalog.claim_job("b", LEASE).await.unwrap().unwrap();
    assert_eq!((b.id.as_str(), b.attempts, b.claimed_by.as_deref()), (queued.id.as_str(), 2, Some("b")));
    // A comes back to life: its heartbeat and completion are refused.
    assert!(!catalog.heartbeat_job(&a.id, a.attempts, "a", LEASE).await.unwrap());
    let stale = catalog.succeed_job(&a.id, a.attempts, "a").await.unwrap();
    assert!(stale.is_err(), "stale completion accepted");
    let stale =
        catalog.fail_job(&a.id, a.attempts, "a", &failure(RetryClassification::Permanent)).await.unwrap();
    assert!(stale.is_err(), "stale failure accepted");

    assert!(catalog.heartbeat_job(&b.id, b.attempts, "b", LEASE).await.unwrap());
    let done = catalog.succeed_job(&b.id, b.attempts, "b").await.unwrap().unwrap();
    assert_eq!((done.state.as_str(), done.attempts), (job_state::SUCCEEDED, 2));
    assert!(done.completed_at.is_some() && done.started_at.is_some());
}

#[tokio::test]
async fn an_expired_lease_on_the_last_attempt_fails_the_job() {
    let pg = TestPg::start().unwrap();
    let catalog = catalog(&pg).await;
    let org = org(&catalog).await;
    let mut one_shot = job(&org, None);
    one_shot.max_attempts = 1;
    let queued = catalog.enqueue_job(&one_shot).await.unwrap().unwrap();
    catalog.claim_job("a", Duration::from_millis(100)).await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let requeued = catalog.requeue_expired_jobs().await.unwrap();
    assert_eq!(requeued.len(), 1);
    assert_eq!(
        (requeued[0].id.as_str(), requeued[0].state.as_str()),
        (queued.id.as_str(), job_state::FAILED)
    );
    let failed = catalog.job(&queued.id).await.unwrap().unwrap();
    assert_eq!(failed.state, job_state::FAILED);
    assert!(failed.error.unwrap().contains("lease"));
}

#[tokio::test]
async fn transient_failures_retry_until_attempts_run_out_and_keep_the_output() {
    let pg = TestPg::start().unwrap();
    let catalog = catalog(&pg).await;
    let org = org(&catalog).await;
    let queued = catalog.enqueue_job(&job(&org, None)).await.unwrap().unwrap();
    for attempt in 1..=3 {
        let j = catalog.claim_job("w", LEASE).await.unwrap().unwrap();
        assert_eq!(j.attempts, attempt);
        let after = catalog.fail_job(&j.id, j.attempts, "w", &failure(RetryClassification::Transient)).await;
        let after = after.unwrap().unwrap();
        let expected = if attempt < 3 { job_state::PENDING } else { job_state::FAILED };
        assert_eq!(after.state, expected, "after attempt {attempt}");
    }
    let failed = catalog.job(&queued.id).await.unwrap().unwrap();
    assert_eq!(failed.retry_classification.as_deref(), Some("transient"));
    assert_eq!(failed.last_exit_code, Some(2));
    assert_eq!(failed.last_stdout.as_deref(), Some("out"));
    assert_eq!(failed.last_stderr.as_deref(), Some("FATAL: no"));
    assert!(catalog.claim_job("w", LEASE).await.unwrap().is_none(), "a failed job is not claimed again");
}

#[tokio::test]
async fn a_permanent_failure_is_not_retried_and_a_backoff_delays_the_retry() {
    let pg = TestPg::start().unwrap();
    let catalog = catalog(&pg).await;
    let org = org(&catalog).await;
    let permanent = catalog.enqueue_job(&job(&org, None)).await.unwrap().unwrap();
    let j = catalog.claim_job("w", LEASE).await.unwrap().unwrap();
    let after =
        catalog.fail_job(&j.id, 1, "w", &failure(RetryClassification::Permanent)).await.unwrap().unwrap();
    assert_eq!((after.id, after.state.as_str()), (permanent.id, job_state::FAILED));

    catalog.enqueue_job(&job(&org, None)).await.unwrap().unwrap();
    let j = catalog.claim_job("w", LEASE).await.unwrap().unwrap();
    let mut later = failure(RetryClassification::Transient);
    later.retry_in = Duration::from_secs(3600);
    catalog.fail_job(&j.id, 1, "w", &later).await.unwrap().unwrap();
    assert!(catalog.claim_job("w", LEASE).await.unwrap().is_none(), "retried before its backoff");
}

#[tokio::test]
async fn one_resource_runs_one_job_at_a_time_and_enqueues_conflict() {
    let pg = TestPg::start().unwrap();
    let catalog = catalog(&pg).await;
    let org = org(&catalog).await;
    let first = catalog.enqueue_job(&job(&org, Some("proj_a"))).await.unwrap().unwrap();
    let blocked = catalog.enqueue_job(&job(&org, Some("proj_a"))).await.unwrap();
    assert_eq!(blocked.unwrap_err().id, first.id, "the blocking job is named");
    let other = catalog.enqueue_job(&job(&org, Some("proj_b"))).await.unwrap().unwrap();

    let a = catalog.claim_job("w1", LEASE).await.unwrap().unwrap();
    assert_eq!(a.id, first.id);
    let b = catalog.claim_job("w2", LEASE).await.unwrap().unwrap();
    assert_eq!(b.id, other.id, "another resource is not held up");
    assert!(catalog.enqueue_job(&job(&org, Some("proj_a"))).await.unwrap().is_err(), "running blocks too");
    catalog.succeed_job(&a.id, 1, "w1").await.unwrap().unwrap();
    assert!(catalog.enqueue_job(&job(&org, Some("proj_a"))).await.unwrap().is_ok());
    let cancelled = catalog.cancel_job(&b.id).await.unwrap();
    assert!(cancelled.is_none(), "a running job cannot be cancelled");
}
