//! Leases with real instances: a job whose worker died mid-handler (claimed, part of the
//! work done, never renewed or finished) goes to the next worker once the lease runs out,
//! and when the last attempt's lease runs out the job fails with its clean-up (the project
//! `failed`, its instance gone) instead of staying `provisioning`; a worker that lost its
//! lease to another stops its handler and leaves the new owner's outcome standing.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use catalog::{job_state, project_state};
use common::{Harness, harness};
use control::handlers::JobError;
use control::{Handler, Worker};
use tokio::sync::Notify;
use tokio::time::Instant;

/// Every wait in these tests gives up after this long.
const DEADLINE: Duration = Duration::from_secs(60);
/// The lease a dead worker's claim takes: short, so the tests need not wait long for it.
const DEAD_LEASE: Duration = Duration::from_millis(200);

/// Claims the next runnable job as a worker that then dies (no heartbeat, no outcome),
/// requeueing expired leases first as every worker does; waits for one to be claimable.
async fn claim_and_die(h: &Harness, worker: &str) -> catalog::Job {
    let until = Instant::now() + DEADLINE;
    loop {
        h.control.catalog.requeue_expired_jobs().await.unwrap();
        if let Some(job) = h.control.catalog.claim_job(worker, DEAD_LEASE).await.unwrap() {
            return job;
        }
        assert!(Instant::now() < until, "{worker} never got a job to claim");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Steps `worker` until `done` holds of the job, within the deadline.
async fn step_until(h: &Harness, worker: &Worker, job_id: &str, done: impl Fn(&catalog::Job) -> bool) {
    let until = Instant::now() + DEADLINE;
    loop {
        worker.step().await.unwrap();
        let job = h.job(job_id).await;
        if done(&job) {
            return;
        }
        assert!(Instant::now() < until, "the job never got there: {job:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn project_state(h: &Harness, id: &str) -> String {
    h.control.catalog.project(id).await.unwrap().unwrap().state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_that_run_out_are_retried_and_the_last_one_ends_in_the_clean_up() {
    let h = harness().await;
    tokio::task::block_in_place(|| h.control.instances.ensure_template()).unwrap();
    let worker = Worker::new(Arc::clone(&h.control), "survivor");

    // The first attempt's worker dies after starting the instance, before the database
    // exists: the next worker takes the job when the lease runs out and finishes it.
    let (kept, job_id) = h.create_project("kept").await;
    let dead = claim_and_die(&h, "dead-1").await;
    assert_eq!((dead.id.as_str(), dead.attempts), (job_id.as_str(), 1));
    let branch = dead.cluster_id.clone().unwrap();
    tokio::task::block_in_place(|| h.control.instances.provision(&branch)).unwrap();
    step_until(&h, &worker, &job_id, catalog::Job::is_finished).await;
    let job = h.job(&job_id).await;
    assert_eq!(job.state, job_state::SUCCEEDED, "{:?}", job.error);
    assert_eq!((job.attempts, job.claimed_by.as_deref()), (2, Some("survivor")));
    assert_eq!(project_state(&h, &kept).await, project_state::READY);
    assert!(h.control.instances.is_running(&branch));

    // Every attempt's worker dies: when the last lease runs out the job fails and its
    // clean-up runs, so the project is `failed` with no instance left, not `provisioning`.
    let (doomed, job_id) = h.create_project("doomed").await;
    let mut branch = None;
    for attempt in 1..=h.control.max_attempts {
        let dead = claim_and_die(&h, &format!("dead-{attempt}")).await;
        assert_eq!((dead.id.as_str(), dead.attempts), (job_id.as_str(), attempt));
        let id = dead.cluster_id.clone().unwrap();
        tokio::task::block_in_place(|| h.control.instances.provision(&id)).unwrap();
        branch = Some(id);
    }
    let branch = branch.unwrap();
    let root = h.control.instances.root(&branch);
    assert!(root.exists());
    step_until(&h, &worker, &job_id, catalog::Job::is_finished).await;
    let job = h.job(&job_id).await;
    assert_eq!(job.state, job_state::FAILED);
    assert!(job.error.as_deref().unwrap_or_default().contains("lease"), "{:?}", job.error);
    assert_eq!(project_state(&h, &doomed).await, project_state::FAILED, "the clean-up never ran");
    assert!(!root.exists(), "the failed project's instance was left behind");
    assert!(!worker.step().await.unwrap(), "a failed job ran again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_lost_its_lease_stops_and_leaves_the_new_owners_outcome() {
    let h = harness().await;
    let (project, job_id) = h.create_project("contested").await;

    // A stalls in its handler (cut off, or stuck in a command); were it to go on, its next
    // step would be provisioning's last: the project becomes `ready`.
    let (started, release, resumed) =
        (Arc::new(Notify::new()), Arc::new(Notify::new()), Arc::new(AtomicBool::new(false)));
    let stalling: Handler = {
        let (started, release, resumed) = (Arc::clone(&started), Arc::clone(&release), Arc::clone(&resumed));
        Arc::new(move |control, job| {
            let (started, release, resumed) =
                (Arc::clone(&started), Arc::clone(&release), Arc::clone(&resumed));
            Box::pin(async move {
                started.notify_one();
                release.notified().await;
                resumed.store(true, Ordering::SeqCst);
                let project = job.project_id.as_deref().unwrap();
                control.catalog.set_project_state(project, project_state::READY).await?;
                Ok(())
            })
        })
    };
    let a = Worker::new(Arc::clone(&h.control), "a").with_handler(stalling);
    let mut a = tokio::spawn(async move { a.step().await.unwrap() });
    tokio::time::timeout(DEADLINE, started.notified()).await.expect("A never started the job");

    // A's lease runs out as far as the catalog knows (its renewals stopped getting
    // through), and B takes the job; B's attempt fails for good, and its clean-up marks
    // the project `failed`.
    let failing: Handler = Arc::new(|_, _| {
        Box::pin(async { Err(JobError::permanent("b's verdict: this project cannot be provisioned")) })
    });
    let b = Worker::new(Arc::clone(&h.control), "b").with_handler(failing);
    let until = Instant::now() + DEADLINE;
    loop {
        // Renewals from A may land in between: expire the lease again until B has the job.
        sqlx::query("UPDATE jobs SET lease_expires_at = now() - interval '1 second' WHERE id = $1 AND claimed_by = 'a'")
            .bind(&job_id)
            .execute(h.control.catalog.pool())
            .await
            .unwrap();
        if b.step().await.unwrap() {
            break;
        }
        assert!(Instant::now() < until, "B never got the job");
    }
    let job = h.job(&job_id).await;
    assert_eq!(
        (job.state.as_str(), job.attempts, job.claimed_by.as_deref()),
        (job_state::FAILED, 2, Some("b"))
    );
    assert_eq!(project_state(&h, &project).await, project_state::FAILED);

    // A's next renewal finds the job gone to B: A drops its handler and records nothing.
    let stopped = tokio::time::timeout(DEADLINE, &mut a).await.ok();
    let a_stopped = stopped.is_some();
    release.notify_one();
    let ran = match stopped {
        Some(ran) => ran.unwrap(),
        None => a.await.unwrap(),
    };
    assert!(ran, "A's step ran no job");
    assert!(a_stopped, "A kept running its handler after losing its lease");
    assert!(!resumed.load(Ordering::SeqCst), "A's handler went on after losing its lease");
    let job = h.job(&job_id).await;
    assert_eq!(
        (job.state.as_str(), job.attempts, job.claimed_by.as_deref()),
        (job_state::FAILED, 2, Some("b"))
    );
    assert!(job.error.as_deref().unwrap_or_default().starts_with("b's verdict"), "{:?}", job.error);
    assert_eq!(project_state(&h, &project).await, project_state::FAILED, "A overwrote B's outcome");
}
