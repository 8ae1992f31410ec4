//! Jobs end to end with real instances: creating a project provisions a started instance
//! with a database owned by a plain login role; long-polling sees the job finish; deleting
//! removes the instance and gives the name back; an instance that cannot start fails its
//! job with PostgreSQL's own words, after retries, and leaves nothing half-made.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use common::{connect, harness};
use control::Worker;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_created_project_is_provisioned_and_deleted_through_jobs() {
    let h = harness().await;
    tokio::task::block_in_place(|| h.control.instances.ensure_template()).unwrap();
    let (id, job_id) = h.create_project("shop").await;
    let (_, project) = h.get("/v1/projects/shop").await;
    assert_eq!(project["state"], "provisioning");

    // A worker runs in the background; the request long-polls for the job.
    let stop = CancellationToken::new();
    let events = tokio::spawn({
        let control = Arc::clone(&h.control);
        let stop = stop.clone();
        async move { control.events.listen(control.catalog.clone(), stop).await }
    });
    let worker = tokio::spawn(Worker::new(Arc::clone(&h.control), "w1").run(stop.clone()));
    let (status, job) = h.get(&format!("/v1/jobs/{job_id}?wait=60")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["type"], "provision_project");
    assert_eq!(job["attempts"], 1);
    assert_eq!(job["locked_resource"], id.as_str());
    for field in [
        "claimed_at",
        "claimed_by",
        "cluster_id",
        "started_at",
        "completed_at",
        "organization_id",
        "project_id",
    ] {
        assert!(!job[field].is_null(), "{field} is null: {job}");
    }
    let (_, project) = h.get("/v1/projects/shop").await;
    assert_eq!(project["state"], "ready");

    // The instance runs; the owner role is a plain login role owning the database, and
    // can create schemas and tables in it.
    let branch = job["cluster_id"].as_str().unwrap().to_owned();
    let owner = connect(&h, &branch, "shop_owner", "shop").await;
    owner
        .batch_execute("CREATE SCHEMA app; CREATE TABLE app.t (x int); CREATE TABLE t (y int)")
        .await
        .unwrap();
    let row = owner
        .query_one(
            "SELECT rolsuper, rolcreatedb, rolcreaterole, rolcanlogin, \
             pg_get_userbyid(d.datdba) FROM pg_roles, pg_database d \
             WHERE rolname = current_user AND d.datname = current_database()",
            &[],
        )
        .await
        .unwrap();
    let attrs: (bool, bool, bool, bool, String) =
        (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
    assert_eq!(attrs, (false, false, false, true, "shop_owner".into()));
    drop(owner);

    // Delete: 202 with a job, then 404, the instance gone, and the name free again.
    let (status, body) = h.call(Method::DELETE, "/v1/projects/shop", Some(&h.admin), None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let delete_job = body["job"]["id"].as_str().unwrap().to_owned();
    let (status, body) = h.call(Method::DELETE, "/v1/projects/shop", Some(&h.admin), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "deleting twice: {body}");
    let (_, job) = h.get(&format!("/v1/jobs/{delete_job}?wait=60")).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert!(!h.control.instances.root(&branch).exists(), "the instance directory remains");
    let (status, _) = h.get(&format!("/v1/projects/{id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (again, _) = h.create_project("shop").await;
    assert_ne!(again, id);

    stop.cancel();
    worker.await.unwrap();
    events.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_cannot_start_fails_its_job_with_the_server_log_after_retries() {
    let h = harness().await;
    tokio::task::block_in_place(|| h.control.instances.ensure_template()).unwrap();
    let (id, job_id) = h.create_project("broken").await;
    let branch = h.job(&job_id).await.cluster_id.unwrap();

    // Make the branch's instance unstartable before any worker gets to it.
    let root = h.control.instances.root(&branch);
    let bins = node::PgBinaries::find().unwrap();
    std::fs::create_dir_all(root.parent().unwrap()).unwrap();
    drop(node::Instance::from_template(&bins, &h.dir.path().join("template"), &root).unwrap());
    let conf = root.join("data").join("postgresql.conf");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str("\nshared_buffers = 'lots'\n");
    std::fs::write(&conf, text).unwrap();

    let worker = Worker::new(Arc::clone(&h.control), "w1");
    for attempt in 1..=3 {
        // Wait out the (short) retry backoff.
        let mut ran = false;
        for _ in 0..200 {
            if worker.step().await.unwrap() {
                ran = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(ran, "attempt {attempt} never ran");
        let job = h.job(&job_id).await;
        assert_eq!(job.attempts, attempt);
        assert_eq!(job.retry_classification.as_deref(), Some("transient"));
        assert!(
            job.last_stderr.as_deref().unwrap_or_default().contains("shared_buffers"),
            "{:?}",
            job.last_stderr
        );
        assert!(job.last_exit_code.is_some());
    }
    let job = h.job(&job_id).await;
    assert_eq!(job.state, "failed");
    assert!(job.error.unwrap().contains("exited during startup"));
    assert!(!worker.step().await.unwrap(), "a failed job ran again");

    let (_, project) = h.get(&format!("/v1/projects/{id}")).await;
    assert_eq!(project["state"], "failed");
    assert!(!root.exists(), "the failed instance was left behind");
    // A failed project can be deleted (no job holds it now).
    let (status, body) = h.call(Method::DELETE, "/v1/projects/broken", Some(&h.admin), None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    h.drain_jobs().await;
    let (status, _) = h.get(&format!("/v1/projects/{id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn limits_update_live_and_a_long_poll_times_out_on_an_unfinished_job() {
    let h = harness().await;
    let (_, job_id) = h.create_project("shop").await;
    let body = r#"{"limits":{"max_direct_connections":5,"query_timeout_ms":1500},"pool_config":{"pool_size":4,"pool_mode":"session"}}"#;
    let (status, project) = h.call(Method::PATCH, "/v1/projects/shop", Some(&h.admin), Some(body)).await;
    assert_eq!(status, StatusCode::OK, "{project}");
    assert_eq!(project["limits"]["max_direct_connections"], 5);
    assert_eq!(project["pool_config"]["pool_mode"], "session");
    // null removes one limit, the others stay.
    let (_, project) = h
        .call(
            Method::PATCH,
            "/v1/projects/shop",
            Some(&h.admin),
            Some(r#"{"limits":{"query_timeout_ms":null}}"#),
        )
        .await;
    assert!(project["limits"]["query_timeout_ms"].is_null());
    assert_eq!(project["limits"]["max_direct_connections"], 5);
    assert_eq!(project["pool_config"]["pool_size"], 4);

    // Nobody runs the job: the long poll returns it pending when the wait is over.
    let (status, job) = h.get(&format!("/v1/jobs/{job_id}?wait=1")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(job["state"], "pending");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_sets_a_new_verifier_with_the_old_salt_and_locks_the_project_meanwhile() {
    let h = harness().await;
    tokio::task::block_in_place(|| h.control.instances.ensure_template()).unwrap();
    let (_, job_id) = h.create_project("shop").await;
    h.drain_jobs().await;
    let (_, before) = h.get("/v1/projects/shop/connection").await;
    let old_uri = before["connectionUri"].as_str().unwrap().to_owned();

    let rotate = || h.call(Method::POST, "/v1/projects/shop/credentials/rotate", Some(&h.admin), Some(""));
    let (status, body) = rotate().await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let rotation = body["job"]["id"].as_str().unwrap().to_owned();
    assert_eq!(body["job"]["type"], "rotate_credentials");
    let (status, body) = rotate().await;
    assert_eq!(status, StatusCode::LOCKED, "{body}");
    assert_eq!(body["job"]["id"], rotation.as_str());
    let (status, _) = h.call(Method::DELETE, "/v1/projects/shop", Some(&h.admin), None).await;
    assert_eq!(status, StatusCode::LOCKED, "deleting during a rotation");
    h.drain_jobs().await;
    assert_eq!(h.job(&rotation).await.state, "succeeded");

    let (_, after) = h.get("/v1/projects/shop/connection").await;
    let new_uri = after["connectionUri"].as_str().unwrap();
    assert_ne!(new_uri, old_uri);
    let password = |uri: &str| uri["postgresql://shop_owner:".len()..].split('@').next().unwrap().to_owned();
    let (old, new) = (password(&old_uri), password(new_uri));

    // The instance holds the new password's verifier, derived with the old salt.
    let branch = h.job(&job_id).await.cluster_id.unwrap();
    let stored = stored_verifier(&h, &branch, "shop_owner").await;
    let stored = wire::scram::ScramVerifier::parse(&stored).unwrap();
    assert_eq!(wire::scram::ScramVerifier::derive(&new, &stored.salt, stored.iterations), stored);
    assert_ne!(wire::scram::ScramVerifier::derive(&old, &stored.salt, stored.iterations), stored);
    let roles = h.control.catalog.roles(h.job(&job_id).await.project_id.as_deref().unwrap()).await.unwrap();
    assert!(roles[0].next_verifier.is_none(), "the rotation was left half-done");
    assert_eq!(roles[0].verifier, stored.to_pg_authid());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_with_grace_keeps_both_passwords_until_the_grace_is_over() {
    let h = harness().await;
    tokio::task::block_in_place(|| h.control.instances.ensure_template()).unwrap();
    let (_, job_id) = h.create_project("shop").await;
    h.drain_jobs().await;
    let project = h.job(&job_id).await.project_id.unwrap();
    let old_verifier = h.control.catalog.roles(&project).await.unwrap()[0].verifier.clone();
    let rotate = |body: &'static str| {
        h.call(Method::POST, "/v1/projects/shop/credentials/rotate", Some(&h.admin), Some(body))
    };
    for (body, status) in [
        (r#"{"grace_seconds": 86401}"#, StatusCode::UNPROCESSABLE_ENTITY),
        (r#"{"grace_seconds": -1}"#, StatusCode::UNPROCESSABLE_ENTITY),
        ("{", StatusCode::BAD_REQUEST),
        (r#"{"grace": 1}"#, StatusCode::UNPROCESSABLE_ENTITY),
    ] {
        let (got, text) = rotate(body).await;
        assert_eq!(got, status, "{body}: {text}");
    }
    let (status, body) = rotate(r#"{"grace_seconds": 2}"#).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let rotation = body["job"]["id"].as_str().unwrap().to_owned();
    h.drain_jobs().await;
    assert_eq!(h.job(&rotation).await.state, "succeeded");

    // During the grace: both verifiers are published, and connection strings show the new one.
    let role = h.control.catalog.roles(&project).await.unwrap().remove(0);
    assert_eq!(role.verifier, old_verifier, "the old verifier was dropped before the grace ended");
    let next = role.next_verifier.clone().expect("the new verifier is published");
    assert!(role.grace_until.is_some());
    let (_, conn) = h.get("/v1/projects/shop/connection").await;
    let uri = conn["connectionUri"].as_str().unwrap();
    let password = uri["postgresql://shop_owner:".len()..].split('@').next().unwrap();
    let parsed = wire::scram::ScramVerifier::parse(&next).unwrap();
    assert_eq!(
        wire::scram::ScramVerifier::derive(password, &parsed.salt, parsed.iterations).to_pg_authid(),
        next
    );

    // After it, a worker pass leaves only the new one.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    h.drain_jobs().await;
    let role = h.control.catalog.roles(&project).await.unwrap().remove(0);
    assert_eq!(
        (role.verifier.as_str(), role.next_verifier.is_none(), role.grace_until.is_none()),
        (next.as_str(), true, true)
    );
}

/// The verifier stored for `role` on a branch's instance.
async fn stored_verifier(h: &common::Harness, branch_id: &str, role: &str) -> String {
    let su = connect(h, branch_id, "postgres", "postgres").await;
    su.query_one("SELECT rolpassword FROM pg_authid WHERE rolname = $1", &[&role]).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_that_fails_for_good_retires_its_new_password() {
    let h = harness().await;
    tokio::task::block_in_place(|| h.control.instances.ensure_template()).unwrap();
    let (project, job_id) = h.create_project("shop").await;
    h.drain_jobs().await;
    let main = h.job(&job_id).await.cluster_id.unwrap();
    // Rotations alter the branches in id order: one that sorts after main is stopped, so the
    // job reaches main, then fails on it, attempt after attempt.
    let mut stopped = None;
    for n in 0..8 {
        let (status, created) = h.post("/v1/projects/shop/branches", &format!(r#"{{"name":"b{n}"}}"#)).await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        h.drain_jobs().await;
        let id = created["branch"]["id"].as_str().unwrap().to_owned();
        let order: Vec<String> =
            h.control.catalog.branches(&project).await.unwrap().into_iter().map(|b| b.id).collect();
        let at = |id: &str| order.iter().position(|b| b == id).unwrap();
        if at(&id) > at(&main) {
            stopped = Some(id);
            break;
        }
    }
    let stopped = stopped.expect("no branch id sorted after main's in 8 tries");
    tokio::task::block_in_place(|| h.control.instances.stop(&stopped)).unwrap();
    let old_verifier = h.control.catalog.roles(&project).await.unwrap()[0].verifier.clone();
    let (_, before) = h.get("/v1/projects/shop/connection").await;

    let (status, body) = h.post("/v1/projects/shop/credentials/rotate", "").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let rotation = body["job"]["id"].as_str().unwrap().to_owned();
    let worker = Worker::new(Arc::clone(&h.control), "test-worker");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    // Step by step: after the first attempt the new verifier is on main's instance and
    // published beside the old one, which is what the failure must undo.
    assert!(worker.step().await.unwrap());
    let role = h.control.catalog.roles(&project).await.unwrap().remove(0);
    let next = role.next_verifier.clone().expect("the first attempt published the new verifier");
    assert_eq!(stored_verifier(&h, &main, "shop_owner").await, next, "the first attempt did not reach main");
    while h.job(&rotation).await.state != "failed" {
        assert!(tokio::time::Instant::now() < deadline, "the rotation did not fail for good");
        if !worker.step().await.unwrap() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    let role = h.control.catalog.roles(&project).await.unwrap().remove(0);
    assert_eq!(
        (role.verifier.as_str(), role.next_verifier.as_deref(), role.grace_until),
        (old_verifier.as_str(), None, None),
        "the new password stays valid after the rotation failed"
    );
    assert_eq!(
        stored_verifier(&h, &main, "shop_owner").await,
        old_verifier,
        "main kept the abandoned password"
    );
    let (_, after) = h.get("/v1/projects/shop/connection").await;
    assert_eq!(after["connectionUri"], before["connectionUri"]);

    // With the branch back, a new rotation goes through.
    tokio::task::block_in_place(|| h.control.instances.start(&stopped)).unwrap();
    let (status, body) = h.post("/v1/projects/shop/credentials/rotate", "").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let again = body["job"]["id"].as_str().unwrap().to_owned();
    h.drain_jobs().await;
    assert_eq!(h.job(&again).await.state, "succeeded");
    let role = h.control.catalog.roles(&project).await.unwrap().remove(0);
    assert_ne!(role.verifier, old_verifier);
    assert_eq!(stored_verifier(&h, &stopped, "shop_owner").await, role.verifier);

    // A rotation the clean-up abandoned while another attempt had adopted it (the failed job
    // let go of the project first) is not reported finished: that attempt fails and retries.
    let catalog = &h.control.catalog;
    catalog.begin_rotation(&role.id, b"sealed", &old_verifier).await.unwrap();
    assert!(catalog.abandon_rotation(&role.id).await.unwrap());
    assert!(!catalog.finish_rotation_after(&role.id, Duration::ZERO).await.unwrap());
    assert!(!catalog.finish_rotation_after(&role.id, Duration::from_secs(5)).await.unwrap());
    let after = catalog.roles(&project).await.unwrap().remove(0);
    assert_eq!((after.verifier, after.next_verifier, after.grace_until), (role.verifier, None, None));
}
