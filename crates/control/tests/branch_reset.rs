//! A reset keeps the branch's data until the new instance serves: when the new copy cannot
//! start, the job fails saying so and the branch holds and serves its old rows; data a
//! swap cut short set aside comes back at the branch's next start; once the cause is gone,
//! a reset brings the parent's state as usual.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use axum::http::{Method, StatusCode};
use common::{Harness, connect, harness};
use control::Worker;
use tokio::time::Instant;

const DEADLINE: Duration = Duration::from_secs(120);

async fn count(c: &tokio_postgres::Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).await.unwrap().get(0)
}

/// Runs jobs (retries included, after their backoff) until `job_id` has finished.
async fn finish(h: &Harness, job_id: &str) -> catalog::Job {
    let worker = Worker::new(std::sync::Arc::clone(&h.control), "w");
    let until = Instant::now() + DEADLINE;
    loop {
        worker.step().await.unwrap();
        let job = h.job(job_id).await;
        if job.is_finished() {
            return job;
        }
        assert!(Instant::now() < until, "the job never finished: {job:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn reset(h: &Harness, branch: &str) -> catalog::Job {
    let path = format!("/v1/projects/shop/branches/{branch}/reset");
    let (status, body) = h.call(Method::POST, &path, Some(&h.admin), Some("")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    finish(h, body["job"]["id"].as_str().unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_whose_new_instance_cannot_start_keeps_the_old_data_serving() {
    let h = harness().await;
    tokio::task::block_in_place(|| h.control.instances.ensure_template()).unwrap();
    let (_, job) = h.create_project("shop").await;
    let main = finish(&h, &job).await.cluster_id.unwrap();
    let owner = connect(&h, &main, "shop_owner", "shop").await;
    owner.batch_execute("CREATE TABLE t (x int); INSERT INTO t VALUES (1), (2), (3)").await.unwrap();
    let (status, created) = h.post("/v1/projects/shop/branches", r#"{"name":"dev","data":"full"}"#).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let job = finish(&h, created["job"]["id"].as_str().unwrap()).await;
    assert_eq!(job.state, "succeeded", "{:?}", job.error);
    let dev = created["branch"]["id"].as_str().unwrap().to_owned();
    let d = connect(&h, &dev, "shop_owner", "shop").await;
    d.batch_execute("CREATE TABLE only_in_dev (z int); INSERT INTO only_in_dev VALUES (7); DELETE FROM t")
        .await
        .unwrap();
    drop(d);

    // The parent now carries a setting its next start would refuse (it keeps running: the
    // setting is read at start only), and a full copy carries it too: the reset's new
    // instance cannot start.
    let superuser = h.control.instances.superuser().to_owned();
    let main_su = connect(&h, &main, &superuser, "postgres").await;
    main_su
        .batch_execute("ALTER SYSTEM SET shared_preload_libraries = 'berth_no_such_library'")
        .await
        .unwrap();
    owner.batch_execute("INSERT INTO t VALUES (4)").await.unwrap();
    let job = reset(&h, "dev").await;
    assert_eq!(job.state, "failed");
    assert_eq!(job.attempts, h.control.max_attempts, "a start failure is retried");
    assert!(
        job.last_stderr.as_deref().unwrap_or_default().contains("berth_no_such_library"),
        "{:?}",
        job.last_stderr
    );

    // The branch holds its own rows and serves them; nothing of the reset is left.
    assert!(h.control.instances.is_running(&dev), "the branch does not serve after a failed reset");
    let d = connect(&h, &dev, "shop_owner", "shop").await;
    assert_eq!(count(&d, "SELECT count(*) FROM only_in_dev").await, 1);
    assert_eq!(count(&d, "SELECT count(*) FROM t").await, 0);
    d.batch_execute("INSERT INTO only_in_dev VALUES (8)").await.unwrap();
    drop(d);
    let error = job.error.clone().unwrap_or_default();
    assert!(error.contains("did not start") && error.contains("keeps its old data"), "{error}");
    for leftover in [h.control.instances.staging_root(&dev), h.control.instances.previous_root(&dev)] {
        assert!(!leftover.exists(), "{} was left", leftover.display());
    }
    let (_, branch) = h.get("/v1/projects/shop/branches/dev").await;
    assert_eq!(branch["state"], "ready");

    // A worker that died in the middle of a swap, after setting the old data aside: the
    // branch's next start puts it back.
    let instances = std::sync::Arc::clone(&h.control.instances);
    let (root, previous) = (instances.root(&dev), instances.previous_root(&dev));
    tokio::task::block_in_place(|| instances.stop(&dev)).unwrap();
    std::fs::rename(&root, &previous).unwrap();
    tokio::task::block_in_place(|| instances.start(&dev)).unwrap();
    assert!(!previous.exists());
    let d = connect(&h, &dev, "shop_owner", "shop").await;
    assert_eq!(count(&d, "SELECT count(*) FROM only_in_dev").await, 2);
    drop(d);

    // With the setting gone, a reset brings the parent's current state.
    main_su.batch_execute("ALTER SYSTEM RESET shared_preload_libraries").await.unwrap();
    let job = reset(&h, "dev").await;
    assert_eq!(job.state, "succeeded", "{:?} {:?}", job.error, job.last_stderr);
    let d = connect(&h, &dev, "shop_owner", "shop").await;
    assert_eq!(count(&d, "SELECT count(*) FROM t").await, 4);
    assert_eq!(count(&d, "SELECT count(*) FROM pg_tables WHERE tablename = 'only_in_dev'").await, 0);
    assert!(!h.control.instances.previous_root(&dev).exists(), "the old data was kept after the reset");
}
