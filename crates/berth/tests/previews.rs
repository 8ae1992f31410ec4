//! A preview database whose time to live runs out, end to end through `berth up`: the worker's
//! reaper (every pass, about once a second) deletes it, and sessions held open on it through
//! the proxy, direct and pooled, end with `57P01` saying the database no longer exists, not
//! with PostgreSQL's own "administrator command"; the API answers 404 and a new login is refused.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::Value;

fn get(up: &Up, path: &str) -> (u16, Value) {
    api_json(&up.data, "GET", path, "")
}

#[test]
fn an_expired_preview_is_reaped_and_its_open_sessions_are_told_it_no_longer_exists() {
    let dir = data_dir();
    let up = berth_up(dir.path(), Ports::free());
    up.create_project("shop");
    let (ok, _, err) =
        psql(&up.connection("shop", false), "CREATE TABLE t (x int); INSERT INTO t VALUES (1), (2)");
    assert!(ok, "{err}");

    // Long enough to make the preview and open sessions on it on a busy machine; checked below.
    let (status, body) =
        api(&up.data, "POST", "/v1/projects/shop/preview-databases", r#"{"ttl_seconds":15}"#);
    assert_eq!(status, 201, "{body}");
    let created: Value = serde_json::from_str(&body).unwrap();
    let id = created["preview"]["id"].as_str().unwrap().to_owned();
    let job = ended_job(&up.data, created["job"]["id"].as_str().unwrap());
    assert_eq!(job["state"], "succeeded", "{job}");
    let (status, connections) = get(&up, &format!("/v1/preview-databases/{id}/connections"));
    assert_eq!(status, 200, "{connections}");
    let direct = connections["connections"]["direct_url"].as_str().unwrap().to_owned();
    let pooled = connections["connections"]["pooled_url"].as_str().unwrap().to_owned();
    wait_for("the preview is routed", || psql(&direct, "SELECT count(*) FROM t").1 == "2");

    let mut sessions = [("direct", held_psql(&direct)), ("pooled", held_psql(&pooled))];
    for (port, held) in &mut sessions {
        assert_eq!(held.query("SELECT count(*) FROM t"), "2", "{port} session on the preview");
    }
    let (status, preview) = get(&up, &format!("/v1/preview-databases/{id}"));
    assert_eq!(
        status, 200,
        "the preview expired before its sessions were open (raise ttl_seconds): {preview}"
    );
    assert_eq!(preview["state"], "ready", "{preview}");

    // The reaper: gone from the API, its job done, its instance removed.
    wait_for("the expired preview to leave the API", || {
        get(&up, &format!("/v1/preview-databases/{id}")).0 == 404
    });
    let mut reap = Value::Null;
    wait_for("the reap job", || {
        let (_, jobs) = get(&up, "/v1/jobs?limit=100");
        let found = jobs["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["type"] == "reap_preview" && j["preview_database_id"] == id.as_str());
        reap = found.cloned().unwrap_or_default();
        !reap.is_null()
    });
    let reap = ended_job(&up.data, reap["id"].as_str().unwrap());
    assert_eq!(reap["state"], "succeeded", "{reap}");
    assert!(!up.data.join("instances").join(&id).exists(), "the reaped preview's instance remains");

    // The held sessions were ended by the proxy, with its own words.
    for (port, mut held) in sessions {
        assert_eq!(
            held.query("SELECT 'after'"),
            "",
            "a {port} session on the reaped preview is still served"
        );
        let said = held.ended();
        assert!(said.contains("FATAL:  57P01"), "{port} session ended without 57P01: {said}");
        assert!(
            said.contains(&format!(
                "database \"shop.{id}\" no longer exists (it was deleted, or its preview expired)"
            )),
            "{port} session ended without saying why: {said}"
        );
    }

    // A new login to it is refused, on both ports, as for any database that does not exist
    // (the same 28P01 as a wrong password, so names cannot be probed).
    for uri in [&direct, &pooled] {
        let (ok, _, err) = psql(uri, "SELECT 1");
        assert!(!ok, "a new session on the reaped preview was served");
        assert!(err.contains("password authentication failed for user \"shop_owner\""), "{err}");
    }
    let log = up.stop();
    assert!(log.contains("preview expired; reaping"), "the reaping was not logged");
}
