//! Branches with real instances: a full branch is an online copy of the running parent
//! (sessions on the parent keep working, a writer never fails, the copy is a consistent
//! snapshot holding every row committed before the job) and is independent afterwards;
//! schema and empty branches; reset; delete rules; the API's errors; rotation reaching
//! every branch; project deletion removing every branch's instance.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use axum::http::{Method, StatusCode};
use catalog::Scope;
use common::{Harness, connect, harness, key};
use serde_json::Value;

/// A ready project `name`; returns its main branch id.
async fn ready_project(h: &Harness, name: &str) -> String {
    tokio::task::block_in_place(|| h.control.instances.ensure_template()).unwrap();
    let (_, job) = h.create_project(name).await;
    h.drain_jobs().await;
    let job = h.job(&job).await;
    assert_eq!(job.state, "succeeded", "{:?}", job.error);
    job.cluster_id.unwrap()
}

/// Requests a branch and runs its job; returns the branch as the API shows it after.
async fn branch(h: &Harness, project: &str, body: &str) -> Value {
    let (status, created) = h.post(&format!("/v1/projects/{project}/branches"), body).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["branch"]["state"], "creating");
    assert_eq!(created["job"]["type"], "create_branch");
    h.drain_jobs().await;
    let job = h.job(created["job"]["id"].as_str().unwrap()).await;
    assert_eq!(job.state, "succeeded", "{:?} {:?}", job.error, job.last_stderr);
    let (status, b) = h
        .get(&format!("/v1/projects/{project}/branches/{}", created["branch"]["id"].as_str().unwrap()))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(b["state"], "ready", "{b}");
    b
}

async fn count(c: &tokio_postgres::Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).await.unwrap().get(0)
}

fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_else(|| panic!("no error shape: {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_branch_is_an_online_consistent_copy_and_independent_afterwards() {
    let h = harness().await;
    let main = ready_project(&h, "shop").await;
    let owner = connect(&h, &main, "shop_owner", "shop").await;
    owner
        .batch_execute(
            "CREATE TABLE a (i int PRIMARY KEY); CREATE TABLE b (i int PRIMARY KEY); \
             INSERT INTO a SELECT g FROM generate_series(1, 20000) g; INSERT INTO b SELECT * FROM a",
        )
        .await
        .unwrap();
    // A session inside an open transaction, and a writer committing pairs of rows.
    let held = connect(&h, &main, "shop_owner", "shop").await;
    held.batch_execute("BEGIN; INSERT INTO a VALUES (-100)").await.unwrap();
    let pid_before: i32 = held.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
    let committed = Arc::new(AtomicI64::new(20000));
    let stop = tokio_util::sync::CancellationToken::new();
    let writer = tokio::spawn({
        let (client, committed, stop) =
            (connect(&h, &main, "shop_owner", "shop").await, Arc::clone(&committed), stop.clone());
        async move {
            let mut next = 20001i64;
            while !stop.is_cancelled() {
                client
                    .batch_execute(&format!(
                        "BEGIN; INSERT INTO a VALUES ({next}); INSERT INTO b VALUES ({next}); COMMIT"
                    ))
                    .await
                    .expect("a write on the parent failed while the branch was made");
                committed.store(next, Ordering::SeqCst);
                next += 1;
            }
        }
    });
    while committed.load(Ordering::SeqCst) < 20010 {
        tokio::task::yield_now().await;
    }

    let (status, created) = h.post("/v1/projects/shop/branches", r#"{"name":"dev"}"#).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["branch"]["data"], "full");
    assert_eq!(created["branch"]["database"], "shop.dev");
    let before_job = committed.load(Ordering::SeqCst);
    h.drain_jobs().await;
    let after_job = committed.load(Ordering::SeqCst);
    stop.cancel();
    writer.await.unwrap();
    assert!(after_job > before_job, "the writer made no progress while the branch was made");

    let job_id = created["job"]["id"].as_str().unwrap();
    let (_, job) = h.get(&format!("/v1/jobs/{job_id}")).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let total = job["progress_bytes_total"].as_i64().unwrap();
    assert!(total > 1 << 20, "progress total {total}");
    assert_eq!(job["progress_bytes_done"].as_i64(), Some(total));

    // The parent's sessions never noticed.
    held.batch_execute("INSERT INTO a VALUES (-101); COMMIT").await.unwrap();
    let pid_after: i32 = held.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
    assert_eq!(pid_before, pid_after);

    // The branch is a consistent snapshot: pairs whole, no gaps, everything committed
    // before the job started; the transaction open at copy time is not there.
    let branch_id = created["branch"]["id"].as_str().unwrap();
    let copy = connect(&h, branch_id, "shop_owner", "shop").await;
    let in_a = count(&copy, "SELECT count(*) FROM a").await;
    assert_eq!(in_a, count(&copy, "SELECT count(*) FROM b").await);
    assert_eq!(in_a, count(&copy, "SELECT count(*) FROM a JOIN b USING (i)").await);
    assert_eq!(count(&copy, "SELECT max(i)::int8 FROM a").await, in_a, "rows are missing in the copy");
    assert!(in_a >= before_job, "copy has {in_a} rows, {before_job} were committed before the job");
    assert!(in_a <= after_job);

    // Independent from now on, both ways.
    copy.batch_execute("INSERT INTO a VALUES (-1); DELETE FROM b WHERE i = 1").await.unwrap();
    owner.batch_execute("INSERT INTO a VALUES (-2)").await.unwrap();
    assert_eq!(count(&owner, "SELECT count(*) FROM a WHERE i = -1").await, 0);
    assert_eq!(count(&owner, "SELECT count(*) FROM b WHERE i = 1").await, 1);
    assert_eq!(count(&copy, "SELECT count(*) FROM a WHERE i IN (-2, -100, -101)").await, 0);
    assert_eq!(count(&owner, "SELECT count(*) FROM a WHERE i IN (-2, -100, -101)").await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_and_empty_branches_reset_and_the_rules_of_delete() {
    let h = harness().await;
    let main = ready_project(&h, "shop").await;
    let owner = connect(&h, &main, "shop_owner", "shop").await;
    owner
        .batch_execute(
            "CREATE TABLE t (x int); INSERT INTO t VALUES (1), (2), (3); \
             CREATE VIEW v AS SELECT x FROM t; CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 42'",
        )
        .await
        .unwrap();

    // One job at a time per project: a second request while the first waits gets 423.
    let (status, first) = h.post("/v1/projects/shop/branches", r#"{"name":"s","data":"schema"}"#).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let (status, body) = h.post("/v1/projects/shop/branches", r#"{"name":"e","data":"empty"}"#).await;
    assert_eq!(status, StatusCode::LOCKED, "{body}");
    assert_eq!(body["job"]["id"], first["job"]["id"]);
    h.drain_jobs().await;
    assert_eq!(h.job(first["job"]["id"].as_str().unwrap()).await.state, "succeeded");

    let s = connect(&h, first["branch"]["id"].as_str().unwrap(), "shop_owner", "shop").await;
    assert_eq!(count(&s, "SELECT count(*) FROM t").await, 0, "a schema branch has no rows");
    assert_eq!(count(&s, "SELECT count(*) FROM v").await, 0);
    assert_eq!(s.query_one("SELECT f()", &[]).await.unwrap().get::<_, i32>(0), 42);
    let owner_of_t: String = s
        .query_one("SELECT tableowner::text FROM pg_tables WHERE tablename = 't'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(owner_of_t, "shop_owner");

    let e = branch(&h, "shop", r#"{"name":"e","data":"empty","parent":"s"}"#).await;
    assert_eq!(e["data"], "empty");
    assert_eq!(e["parent_id"], first["branch"]["id"]);
    let e = connect(&h, e["id"].as_str().unwrap(), "shop_owner", "shop").await;
    assert_eq!(count(&e, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").await, 0);
    e.batch_execute("CREATE TABLE mine (y int)").await.unwrap();

    // A branch of a branch of a branch.
    let dev = branch(&h, "shop", r#"{"name":"dev","data":"full"}"#).await;
    let feat = branch(&h, "shop", r#"{"name":"feat","parent":"dev"}"#).await;
    let deep =
        branch(&h, "shop", &format!(r#"{{"name":"deep","parent":"{}"}}"#, feat["id"].as_str().unwrap()))
            .await;
    let deep_conn = connect(&h, deep["id"].as_str().unwrap(), "shop_owner", "shop").await;
    assert_eq!(count(&deep_conn, "SELECT count(*) FROM t").await, 3);
    drop(deep_conn);

    // Reset brings back the parent's current state.
    let dev_id = dev["id"].as_str().unwrap().to_owned();
    let d = connect(&h, &dev_id, "shop_owner", "shop").await;
    d.batch_execute("DELETE FROM t; CREATE TABLE only_in_dev (z int)").await.unwrap();
    drop(d);
    owner.batch_execute("INSERT INTO t VALUES (4)").await.unwrap();
    let (status, reset) =
        h.call(Method::POST, "/v1/projects/shop/branches/dev/reset", Some(&h.admin), Some("")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{reset}");
    assert_eq!(reset["job"]["type"], "reset_branch");
    h.drain_jobs().await;
    assert_eq!(h.job(reset["job"]["id"].as_str().unwrap()).await.state, "succeeded");
    let d = connect(&h, &dev_id, "shop_owner", "shop").await;
    assert_eq!(count(&d, "SELECT count(*) FROM t").await, 4);
    assert_eq!(count(&d, "SELECT count(*) FROM pg_tables WHERE tablename = 'only_in_dev'").await, 0);
    // A schema branch resets to the parent's current schema, still without rows.
    owner.batch_execute("CREATE TABLE later (w int); INSERT INTO later VALUES (1)").await.unwrap();
    let (status, _) =
        h.call(Method::POST, "/v1/projects/shop/branches/s/reset", Some(&h.admin), Some("")).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    h.drain_jobs().await;
    let s = connect(&h, first["branch"]["id"].as_str().unwrap(), "shop_owner", "shop").await;
    assert_eq!(count(&s, "SELECT count(*) FROM later").await, 0);
    let (status, body) =
        h.call(Method::POST, "/v1/projects/shop/branches/main/reset", Some(&h.admin), Some("")).await;
    assert_eq!((status, error_code(&body)), (StatusCode::CONFLICT, "conflict"), "{body}");

    // Delete: refused with children and for main, 404 for unknown, else a job.
    let h = &h;
    let del = |b: &str| {
        let path = format!("/v1/projects/shop/branches/{b}");
        async move { h.call(Method::DELETE, &path, Some(&h.admin), None).await }
    };
    let (status, body) = del("dev").await;
    assert_eq!((status, error_code(&body)), (StatusCode::CONFLICT, "branch_has_children"), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("feat"), "{body}");
    let (status, body) = del("main").await;
    assert_eq!((status, error_code(&body)), (StatusCode::CONFLICT, "conflict"), "{body}");
    let (status, body) = del("nope").await;
    assert_eq!((status, error_code(&body)), (StatusCode::NOT_FOUND, "not_found"), "{body}");
    let deep_root = h.control.instances.root(deep["id"].as_str().unwrap());
    assert!(deep_root.exists());
    let (status, body) = del("deep").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["job"]["type"], "delete_branch");
    let (status, _) = h.get("/v1/projects/shop/branches/deep").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "a deleting branch is invisible at once");
    h.drain_jobs().await;
    assert!(!deep_root.exists(), "the deleted branch's instance remains");
    let (status, body) = del("deep").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    branch(h, "shop", r#"{"name":"deep","parent":"feat","data":"empty"}"#).await;

    // Deleting the project removes every branch's instance.
    let (_, list) = h.get("/v1/projects/shop/branches?limit=100").await;
    let roots: Vec<_> = list["branches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| h.control.instances.root(b["id"].as_str().unwrap()))
        .collect();
    assert_eq!(roots.len(), 6, "{list}");
    assert!(roots.iter().all(|r| r.exists()));
    drop((owner, s, e, d));
    let (status, body) = h.call(Method::DELETE, "/v1/projects/shop", Some(&h.admin), None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    h.drain_jobs().await;
    assert_eq!(h.job(body["job"]["id"].as_str().unwrap()).await.state, "succeeded");
    for root in roots {
        assert!(!root.exists(), "{} remains after the project was deleted", root.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn branch_requests_are_checked_scoped_and_paginated() {
    let h = harness().await;
    ready_project(&h, "shop").await;
    let (status, provisioning) = h.post("/v1/projects", r#"{"name":"blog"}"#).await;
    assert_eq!(status, StatusCode::CREATED);

    for (body, status, code) in [
        (r#"{"name":"a.b"}"#, 422, "invalid_request"),
        (r#"{"name":""}"#, 422, "invalid_request"),
        (r#"{"name":"sp ace"}"#, 422, "invalid_request"),
        (r#"{"name":"dev","data":"some"}"#, 422, "invalid_request"),
        (r#"{"name":"dev","colour":"red"}"#, 422, "invalid_request"),
        (r#"{"name":"dev","parent":"nope"}"#, 422, "invalid_request"),
        (r#"{"name":"main"}"#, 409, "conflict"),
        (r#"{"name":"dev""#, 400, "invalid_json"),
    ] {
        let (got, json) = h.post("/v1/projects/shop/branches", body).await;
        assert_eq!((got.as_u16(), error_code(&json)), (status, code), "{body}: {json}");
    }
    let long = format!(r#"{{"name":"{}"}}"#, "x".repeat(49));
    let id_shaped = format!(r#"{{"name":"{}"}}"#, catalog::ids::generate(catalog::ids::BRANCH));
    for body in [long, id_shaped] {
        let (got, json) = h.post("/v1/projects/shop/branches", &body).await;
        assert_eq!(got, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {json}");
    }
    let (status, json) = h.post("/v1/projects/blog/branches", r#"{"name":"dev"}"#).await;
    assert_eq!(
        (status, error_code(&json)),
        (StatusCode::CONFLICT, "conflict"),
        "a provisioning project: {json}"
    );
    let (status, json) = h.post("/v1/projects/nope/branches", r#"{"name":"dev"}"#).await;
    assert_eq!((status, error_code(&json)), (StatusCode::NOT_FOUND, "not_found"));
    let (_, list) = h.get("/v1/jobs?limit=100").await;
    assert_eq!(list["jobs"].as_array().unwrap().len(), 2, "a refused request left a job: {list}");

    // Idempotency-Key: the retry gets the first answer, and no second branch.
    let headers = [("idempotency-key", "branch-dev-1")];
    let (s1, b1) = h
        .call_with(
            Method::POST,
            "/v1/projects/shop/branches",
            Some(&h.admin),
            Some(r#"{"name":"dev","data":"empty"}"#),
            &headers,
        )
        .await;
    let (s2, b2) = h
        .call_with(
            Method::POST,
            "/v1/projects/shop/branches",
            Some(&h.admin),
            Some(r#"{"name":"dev","data":"empty"}"#),
            &headers,
        )
        .await;
    assert_eq!((s1, s2), (StatusCode::CREATED, StatusCode::CREATED));
    assert_eq!(b1["branch"]["id"], b2["branch"]["id"]);
    h.drain_jobs().await;
    branch(&h, "shop", r#"{"name":"qa","data":"empty"}"#).await;

    // List with a cursor, get by id and name.
    let (_, page1) = h.get("/v1/projects/shop/branches?limit=2").await;
    let names: Vec<&str> =
        page1["branches"].as_array().unwrap().iter().map(|b| b["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["main", "dev"]);
    assert!(page1["branches"][0]["parent_id"].is_null());
    assert_eq!(page1["branches"][0]["database"], "shop");
    let cursor = page1["next_cursor"].as_str().unwrap();
    let (_, page2) = h.get(&format!("/v1/projects/shop/branches?limit=2&cursor={cursor}")).await;
    assert_eq!(page2["branches"][0]["name"], "qa");
    assert!(page2["next_cursor"].is_null());
    let dev_id = b1["branch"]["id"].as_str().unwrap();
    let (_, by_id) = h.get(&format!("/v1/projects/shop/branches/{dev_id}")).await;
    let (_, by_name) = h.get("/v1/projects/shop/branches/dev").await;
    assert_eq!(by_id["id"], by_name["id"]);
    assert_eq!(by_name["database"], "shop.dev");
    let (status, _) = h.get("/v1/projects/shop/branches/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Connection strings name `<project>.<branch>`.
    let (_, c) = h.get("/v1/projects/shop/connection?branch=dev&pooled=true").await;
    assert_eq!(c["branch"], "dev");
    assert!(c["connectionUri"].as_str().unwrap().contains(":6432/shop.dev?sslmode=require"), "{c}");
    let (_, c) = h.get("/v1/projects/shop/connections?branch=dev").await;
    assert!(c["connections"]["direct_url"].as_str().unwrap().contains(":6433/shop.dev?"), "{c}");
    let (_, c) = h.get("/v1/projects/shop/connections").await;
    assert!(c["connections"]["direct_url"].as_str().unwrap().contains(":6433/shop?"), "{c}");
    let (status, _) = h.get("/v1/projects/shop/connections?branch=nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // A key scoped to another project sees none of it.
    let blog_id = provisioning["project"]["id"].as_str().unwrap();
    let other = key(&h.control, &h.org, Some(blog_id), &Scope::ALL).await;
    let as_other =
        |m: Method, path: &'static str, body: Option<&'static str>| h.call(m, path, Some(&other), body);
    for (method, path, body) in [
        (Method::GET, "/v1/projects/shop/branches", None),
        (Method::GET, "/v1/projects/shop/branches/dev", None),
        (Method::POST, "/v1/projects/shop/branches", Some(r#"{"name":"x"}"#)),
        (Method::DELETE, "/v1/projects/shop/branches/dev", None),
        (Method::POST, "/v1/projects/shop/branches/dev/reset", Some("")),
        (Method::GET, "/v1/projects/shop/connection?branch=dev", None),
    ] {
        let (status, json) = as_other(method.clone(), path, body).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {json}");
    }
    let read_only = key(&h.control, &h.org, None, &[Scope::ProjectsRead]).await;
    let (status, _) =
        h.call(Method::POST, "/v1/projects/shop/branches", Some(&read_only), Some(r#"{"name":"x"}"#)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_reaches_every_branch() {
    let h = harness().await;
    ready_project(&h, "shop").await;
    let dev = branch(&h, "shop", r#"{"name":"dev"}"#).await;
    let empty = branch(&h, "shop", r#"{"name":"e","data":"empty"}"#).await;
    let (status, body) =
        h.call(Method::POST, "/v1/projects/shop/credentials/rotate", Some(&h.admin), Some("")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    h.drain_jobs().await;
    assert_eq!(h.job(body["job"]["id"].as_str().unwrap()).await.state, "succeeded");
    let (_, c) = h.get("/v1/projects/shop/connection?branch=dev").await;
    let uri = c["connectionUri"].as_str().unwrap();
    let password = uri["postgresql://shop_owner:".len()..].split('@').next().unwrap();
    for b in [&dev, &empty] {
        let su = connect(&h, b["id"].as_str().unwrap(), "postgres", "postgres").await;
        let stored: String = su
            .query_one("SELECT rolpassword FROM pg_authid WHERE rolname = 'shop_owner'", &[])
            .await
            .unwrap()
            .get(0);
        let stored = wire::scram::ScramVerifier::parse(&stored).unwrap();
        assert_eq!(
            wire::scram::ScramVerifier::derive(password, &stored.salt, stored.iterations),
            stored,
            "branch {} kept the old password",
            b["name"]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_branch_that_cannot_be_copied_fails_cleanly_and_can_be_deleted() {
    let h = harness().await;
    let main = ready_project(&h, "shop").await;
    // Something the copy refuses (a tablespace: a directory outside the data directory).
    let link = h.control.instances.data_dir(&main).join("pg_tblspc").join("16999");
    std::os::unix::fs::symlink("/nonexistent", &link).unwrap();
    let (status, created) = h.post("/v1/projects/shop/branches", r#"{"name":"dev"}"#).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    h.drain_jobs().await;
    let job = h.job(created["job"]["id"].as_str().unwrap()).await;
    assert_eq!(job.state, "failed");
    assert_eq!(job.retry_classification.as_deref(), Some("permanent"));
    assert!(job.error.as_deref().unwrap_or_default().contains("tablespaces"), "{:?}", job.error);
    let (_, failed) = h.get("/v1/projects/shop/branches/dev").await;
    assert_eq!(failed["state"], "failed");
    let branch_id = failed["id"].as_str().unwrap();
    assert!(!h.control.instances.root(branch_id).exists(), "a half-made branch was left");
    let routed = h.control.catalog.route_snapshot().await.unwrap();
    assert_eq!(routed.iter().map(|r| r.database.as_str()).collect::<Vec<_>>(), ["shop"]);

    // The parent is untouched and the failed branch can be deleted, freeing its name.
    std::fs::remove_file(&link).unwrap();
    let owner = connect(&h, &main, "shop_owner", "shop").await;
    owner.batch_execute("SELECT 1").await.unwrap();
    let (status, body) = h.call(Method::DELETE, "/v1/projects/shop/branches/dev", Some(&h.admin), None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    h.drain_jobs().await;
    let again = branch(&h, "shop", r#"{"name":"dev"}"#).await;
    assert_ne!(again["id"], failed["id"]);
    let routed = h.control.catalog.route_snapshot().await.unwrap();
    assert!(routed.iter().any(|r| r.database == "shop.dev" && r.dbname == "shop"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preview_is_a_branch_with_a_time_to_live_reaped_when_it_expires() {
    let h = harness().await;
    let main = ready_project(&h, "shop").await;
    let owner = connect(&h, &main, "shop_owner", "shop").await;
    owner.batch_execute("CREATE TABLE t (x int); INSERT INTO t VALUES (1), (2)").await.unwrap();

    for (body, status) in [
        (r#"{"ttl_seconds":0}"#, 422),
        (r#"{"ttl_seconds":-5}"#, 422),
        (r#"{"ttl_seconds":2592001}"#, 422),
        (r#"{}"#, 422),
        (r#"{"ttl_seconds":60,"mode":"schema"}"#, 422),
        (r#"{"ttl_seconds":60,"source_branch":"nope"}"#, 422),
        (r#"{"ttl_seconds":60,"name":"a.b"}"#, 422),
    ] {
        let (got, json) = h.post("/v1/projects/shop/preview-databases", body).await;
        assert_eq!(got.as_u16(), status, "{body}: {json}");
    }

    // A long-lived empty preview and a clone that lives two seconds.
    let (status, kept) = h
        .post("/v1/projects/shop/preview-databases", r#"{"ttl_seconds":3600,"mode":"empty","name":"pr-7"}"#)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{kept}");
    h.drain_jobs().await;
    let (status, created) = h.post("/v1/projects/shop/preview-databases", r#"{"ttl_seconds":2}"#).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["job"]["type"], "create_preview");
    let id = created["preview"]["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("prev_"), "{created}");
    assert_eq!(created["job"]["preview_database_id"], id.as_str());
    assert_eq!(created["preview"]["mode"], "clone");
    h.drain_jobs().await;
    let (_, preview) = h.get(&format!("/v1/preview-databases/{id}")).await;
    assert_eq!(preview["state"], "ready", "{preview}");
    assert_eq!(preview["database"], format!("shop.{id}"));
    let (_, c) = h.get(&format!("/v1/preview-databases/{id}/connections")).await;
    assert!(c["connections"]["pooled_url"].as_str().unwrap().contains(&format!(":6432/shop.{id}?")), "{c}");
    assert_eq!(c["connections"]["username"], "shop_owner");
    let copy = connect(&h, &id, "shop_owner", "shop").await;
    assert_eq!(count(&copy, "SELECT count(*) FROM t").await, 2);
    let (_, list) = h.get("/v1/projects/shop/preview-databases").await;
    assert_eq!(list["preview_databases"].as_array().unwrap().len(), 2, "{list}");
    let (_, branches) = h.get("/v1/projects/shop/branches").await;
    assert_eq!(branches["branches"].as_array().unwrap().len(), 1, "previews are not listed as branches");
    let routes = h.control.catalog.route_snapshot().await.unwrap();
    assert!(routes.iter().any(|r| r.database == format!("shop.{id}")));

    // Once expired, the worker reaps it: gone from the API and the routes, its instance
    // removed and its sessions ended; the other preview stays.
    let expires: chrono::DateTime<chrono::Utc> = preview["expires_at"].as_str().unwrap().parse().unwrap();
    let wait = (expires - chrono::Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(wait + std::time::Duration::from_millis(100)).await;
    h.drain_jobs().await;
    let (status, _) = h.get(&format!("/v1/preview-databases/{id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, jobs) = h.get("/v1/jobs?limit=100").await;
    let reap =
        jobs["jobs"].as_array().unwrap().iter().find(|j| j["type"] == "reap_preview").expect("a reap job");
    assert_eq!(reap["state"], "succeeded", "{reap}");
    assert_eq!(reap["preview_database_id"], id.as_str());
    assert!(!h.control.instances.root(&id).exists(), "the expired preview's instance remains");
    assert!(copy.batch_execute("SELECT 1").await.is_err(), "a session on the reaped preview survived");
    let routes = h.control.catalog.route_snapshot().await.unwrap();
    assert!(!routes.iter().any(|r| r.database == format!("shop.{id}")));
    let (_, list) = h.get("/v1/projects/shop/preview-databases").await;
    assert_eq!(list["preview_databases"].as_array().unwrap().len(), 1, "{list}");

    // Deleting by id; a key of another project sees nothing.
    let kept_id = kept["preview"]["id"].as_str().unwrap();
    let (_, blog) = h.post("/v1/projects", r#"{"name":"blog"}"#).await;
    let other = key(&h.control, &h.org, Some(blog["project"]["id"].as_str().unwrap()), &Scope::ALL).await;
    for path in
        [format!("/v1/preview-databases/{kept_id}"), format!("/v1/preview-databases/{kept_id}/connections")]
    {
        let (status, _) = h.call(Method::GET, &path, Some(&other), None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
    }
    let (status, _) =
        h.call(Method::DELETE, &format!("/v1/preview-databases/{kept_id}"), Some(&other), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) =
        h.call(Method::DELETE, &format!("/v1/preview-databases/{kept_id}"), Some(&h.admin), None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["job"]["type"], "delete_preview");
    h.drain_jobs().await;
    let (status, _) = h.get(&format!("/v1/preview-databases/{kept_id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
