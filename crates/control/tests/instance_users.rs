//! Branches' instances isolated by the OS, end to end through the API and the worker: when
//! tests run as root, each branch's postmaster runs as a user of its own, a schema branch is
//! built by tools running as those users, deleting a branch deletes its user, and a full
//! branch of a parent whose data directory holds a planted link fails without the copy
//! reading through it.

#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use axum::http::{Method, StatusCode};
use common::{Harness, connect, harness};
use serde_json::Value;

async fn ready_project(h: &Harness, name: &str) -> String {
    tokio::task::block_in_place(|| h.control.instances.ensure_template()).unwrap();
    let (_, job) = h.create_project(name).await;
    h.drain_jobs().await;
    let job = h.job(&job).await;
    assert_eq!(job.state, "succeeded", "{:?}", job.error);
    job.cluster_id.unwrap()
}

/// Requests a branch and runs its job; returns the created branch and its finished job.
async fn branch(h: &Harness, body: &str) -> (Value, catalog::Job) {
    let (status, created) = h.post("/v1/projects/shop/branches", body).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    h.drain_jobs().await;
    let job = h.job(created["job"]["id"].as_str().unwrap()).await;
    (created["branch"].clone(), job)
}

fn postmaster_uid(h: &Harness, branch_id: &str) -> u32 {
    let pid = h.control.instances.pid(branch_id).unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(2).unwrap().parse().unwrap()
}

fn user_exists(name: &str) -> bool {
    node::instance_users().unwrap().iter().any(|u| u.name == name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn branches_run_as_users_of_their_own_which_go_with_them() {
    let h = harness().await;
    let main = ready_project(&h, "shop").await;
    let owner = connect(&h, &main, "shop_owner", "shop").await;
    owner.batch_execute("CREATE TABLE kept (i int)").await.unwrap();
    let (full, job) = branch(&h, r#"{"name":"dev","data":"full"}"#).await;
    assert_eq!(job.state, "succeeded", "{:?} {:?}", job.error, job.last_stderr);
    // A schema branch runs pg_dump as main's user and psql as its own.
    let (schema, job) = branch(&h, r#"{"name":"s","data":"schema"}"#).await;
    assert_eq!(job.state, "succeeded", "{:?} {:?}", job.error, job.last_stderr);
    let ids =
        [main.clone(), full["id"].as_str().unwrap().to_owned(), schema["id"].as_str().unwrap().to_owned()];
    let users: Vec<_> =
        ids.iter().map(|id| h.control.instances.os_user(&h.control.instances.root(id)).unwrap()).collect();
    if !users[0].switch {
        return; // not root: everything runs as the current user
    }
    for (id, user) in ids.iter().zip(&users) {
        assert!(user.name.starts_with(node::USER_PREFIX), "{user:?}");
        assert_eq!(postmaster_uid(&h, id), user.uid, "branch {id}");
    }
    let mut uids: Vec<u32> = users.iter().map(|u| u.uid).collect();
    uids.dedup();
    assert_eq!(uids.len(), 3, "{users:?}");

    let (status, body) = h.call(Method::DELETE, "/v1/projects/shop/branches/dev", Some(&h.admin), None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    h.drain_jobs().await;
    assert!(!h.control.instances.root(&ids[1]).exists());
    assert!(!user_exists(&users[1].name), "the deleted branch's user {} is left", users[1].name);
    assert!(user_exists(&users[0].name) && user_exists(&users[2].name));
}

/// Whether any regular file under `dir` holds `needle`.
fn holds(dir: &Path, needle: &[u8]) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else { return false };
    entries.flatten().any(|e| {
        let meta = std::fs::symlink_metadata(e.path()).unwrap();
        if meta.is_dir() {
            holds(&e.path(), needle)
        } else {
            meta.is_file()
                && std::fs::read(e.path()).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle))
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_branch_of_a_parent_holding_a_planted_link_fails_and_copies_no_secret() {
    let h = harness().await;
    let main = ready_project(&h, "shop").await;
    let secret = h.dir.path().join("shadow");
    std::fs::write(&secret, b"root-only-91c2").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    // As the tenant's server could have (its data directory is its user's): a link among
    // its files to one only root may read.
    let data = h.control.instances.data_dir(&main);
    std::os::unix::fs::symlink(&secret, data.join("global/planted")).unwrap();

    let (_, job) = branch(&h, r#"{"name":"dev","data":"full"}"#).await;
    assert_eq!(job.state, "failed", "the copy went through a planted link");
    let error = job.error.unwrap_or_default();
    assert!(error.contains("symbolic link") && error.contains("planted"), "{error}");
    assert!(!holds(&h.dir.path().join("instances"), b"root-only-91c2"), "a copy holds the secret");
}
