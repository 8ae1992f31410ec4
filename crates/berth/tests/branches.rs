//! Branches end to end through `berth up`, its CLI and its proxy: `berth branches create`
//! makes `<project>.<branch>`, reachable on the proxy with the project's credentials, while
//! a session on the parent stays connected and pgbench writing on the parent sees no failed
//! transaction (the branch holds every row committed before its job); rotation reaches the branch; a restart of
//! `berth up` starts every branch's instance again; a deleted branch is no longer routed.

#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};

mod common;

use common::*;

/// A CLI command that must succeed; its trimmed output.
fn run(up: &Up, args: &[&str]) -> String {
    let (ok, out, err) = up.cli(args);
    assert!(ok, "berth {args:?}: {out}\n{err}");
    out
}

/// One statement through psql; `Err(stderr)` when it fails.
fn query(uri: &str, sql: &str) -> Result<String, String> {
    let (ok, out, err) = psql(uri, sql);
    if ok { Ok(out) } else { Err(err) }
}

#[test]
fn a_branch_is_served_as_project_dot_branch_through_the_proxy() {
    let dir = data_dir();
    let data = dir.path().join("data");
    let ports = Ports::free();
    let up = berth_up(&data, ports);
    run(&up, &["projects", "create", "shop"]);
    let main_uri = run(&up, &["connection", "shop"]);
    query(&main_uri, "CREATE TABLE t (x int); INSERT INTO t VALUES (1), (2), (3)").unwrap();

    // A session on the parent, through the proxy, open across the branch's creation.
    let mut held = held_psql(&main_uri);
    let pid = held.query("SELECT pg_backend_pid()");
    assert!(pid.parse::<i32>().is_ok_and(|p| p > 0), "no backend pid: {pid:?}");

    // pgbench writes on the parent, through the proxy, while the branch is made.
    query(&main_uri, "CREATE TABLE marks (i bigserial PRIMARY KEY)").unwrap();
    let script = dir.path().join("insert.sql");
    std::fs::write(&script, "INSERT INTO marks DEFAULT VALUES;\n").unwrap();
    let pgbench = Command::new("pgbench")
        .args(["-n", "-c", "2", "-T", "4", "-f"])
        .arg(&script)
        .arg(&main_uri)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("pgbench writes", || query(&main_uri, "SELECT count(*) > 10 FROM marks").as_deref() == Ok("t"));
    let before: i64 = query(&main_uri, "SELECT max(i) FROM marks").unwrap().parse().unwrap();
    let created = run(&up, &["branches", "create", "shop", "dev"]);
    assert!(created.contains("shop.dev") && created.contains("ready"), "{created}");
    let load = pgbench.wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&load.stdout).into_owned() + &String::from_utf8_lossy(&load.stderr);
    assert!(load.status.success(), "pgbench failed on the parent: {report}");
    assert!(report.contains("number of failed transactions: 0 "), "{report}");
    assert_eq!(held.query("SELECT pg_backend_pid()"), pid, "the parent's session was dropped");
    assert_eq!(held.query("SELECT count(*) FROM t"), "3");

    let dev_uri = run(&up, &["connection", "shop", "--branch", "dev"]);
    assert!(dev_uri.contains("/shop.dev?"), "{dev_uri}");
    assert_eq!(
        dev_uri.split('@').next(),
        main_uri.split('@').next(),
        "a branch has the project's credentials"
    );
    wait_for("shop.dev is routed", || query(&dev_uri, "SELECT count(*) FROM t").as_deref() == Ok("3"));
    let kept = query(&dev_uri, &format!("SELECT count(*) FROM marks WHERE i <= {before}")).unwrap();
    assert_eq!(kept, before.to_string(), "rows committed before the branch job are missing");
    let pooled_dev = run(&up, &["connection", "shop", "--branch", "dev", "--pooled"]);
    query(&pooled_dev, "INSERT INTO t VALUES (4)").unwrap();
    assert_eq!(query(&dev_uri, "SELECT count(*) FROM t").unwrap(), "4");
    assert_eq!(query(&main_uri, "SELECT count(*) FROM t").unwrap(), "3");
    let listed = run(&up, &["branches", "list", "shop", "--json"]);
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");

    // Rotation reaches the branch: the new password logs in there, the old one is refused.
    run(&up, &["credentials", "rotate", "shop"]);
    let new_dev_uri = run(&up, &["connection", "shop", "--branch", "dev"]);
    assert_ne!(new_dev_uri, dev_uri);
    assert_eq!(query(&new_dev_uri, "SELECT count(*) FROM t").unwrap(), "4");
    let refused = query(&dev_uri, "SELECT 1").unwrap_err();
    assert!(refused.contains("password authentication failed"), "{refused}");
    assert_eq!(held.query("SELECT 'still here'"), "still here");
    held.close();

    // An empty branch survives a restart of berth up (its instance is started again).
    run(&up, &["branches", "create", "shop", "qa", "--copy", "empty"]);
    let log = up.stop();
    let up = berth_up(&data, ports);
    let qa_uri = run(&up, &["connection", "shop", "--branch", "qa"]);
    wait_for("shop.qa answers after a restart", || {
        query(&qa_uri, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").as_deref() == Ok("0")
    });
    let new_dev_uri = run(&up, &["connection", "shop", "--branch", "dev"]);
    assert_eq!(query(&new_dev_uri, "SELECT count(*) FROM t").unwrap(), "4");

    // A preview database through the CLI: reachable with the project's credentials.
    let created = run(&up, &["previews", "create", "shop", "--ttl", "1h", "--source", "dev", "--json"]);
    let preview: serde_json::Value = serde_json::from_str(&created).unwrap();
    assert_eq!(preview["state"], "ready", "{preview}");
    let preview_id = preview["id"].as_str().unwrap();
    let preview_uri = run(&up, &["previews", "connection", preview_id, "--pooled"]);
    assert!(preview_uri.contains(&format!("/shop.{preview_id}?")), "{preview_uri}");
    wait_for("the preview is routed", || query(&preview_uri, "SELECT count(*) FROM t").as_deref() == Ok("4"));
    run(&up, &["previews", "delete", preview_id]);
    wait_for("the deleted preview is no longer routed", || query(&preview_uri, "SELECT 1").is_err());

    // A deleted branch is no longer routed.
    run(&up, &["branches", "delete", "shop", "dev"]);
    wait_for("shop.dev is no longer routed", || query(&new_dev_uri, "SELECT 1").is_err());
    let log = log + &up.stop();
    let password = new_dev_uri["postgresql://shop_owner:".len()..].split('@').next().unwrap();
    assert!(!log.contains(password), "the log holds a password");
}
