//! The authorization matrix: every endpoint against an organization key, a project key of
//! the project addressed and of another project, a key of another organization, no key, a
//! revoked key, and a key lacking the endpoint's scope.

#![allow(clippy::unwrap_used)]

mod common;

use axum::http::{Method, StatusCode};
use catalog::Scope;
use common::{harness, key};

/// (method, path, body, scope, [org key, P1 key, P2 key, other organization's key])
type Row<'a> = (Method, String, Option<&'a str>, Scope, [Expect; 4]);

#[derive(Clone, Copy, Debug)]
enum Expect {
    Ok(u16),
    Status(u16),
}

#[tokio::test]
async fn every_endpoint_against_every_kind_of_caller() {
    let h = harness().await;
    let (p1, p1_job) = h.create_project("alpha").await;
    let (p2, _) = h.create_project("beta").await;
    let p1_key = key(&h.control, &h.org, Some(&p1), &Scope::ALL).await;
    let p2_key = key(&h.control, &h.org, Some(&p2), &Scope::ALL).await;
    let other_org = h.control.catalog.create_organization("other").await.unwrap().id;
    let other_key = key(&h.control, &other_org, None, &Scope::ALL).await;
    let revoked = key(&h.control, &h.org, None, &Scope::ALL).await;
    let (status, body) = h.call(Method::GET, "/v1/keys", Some(&revoked), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let revoked_id = body["keys"].as_array().unwrap().last().unwrap()["id"].as_str().unwrap().to_owned();
    let (status, _) = h.call(Method::DELETE, &format!("/v1/keys/{revoked_id}"), Some(&h.admin), None).await;
    assert_eq!(status, StatusCode::OK);
    // A key of P1 for the revoke row to revoke.
    let victim_key = key(&h.control, &h.org, Some(&p1), &[Scope::JobsRead]).await;
    let (_, body) = h.call(Method::GET, "/v1/keys", Some(&p1_key), None).await;
    let victim = body["keys"].as_array().unwrap().last().unwrap()["id"].as_str().unwrap().to_owned();
    drop(victim_key);

    use Expect::{Ok, Status};
    let limits = r#"{"limits":{"max_direct_connections":7}}"#;
    let new_key = r#"{"name":"ci","scopes":["jobs:read"]}"#;
    // (method, path, body, scope, [org key, P1 key, P2 key, other organization's key])
    let rows: Vec<Row> = vec![
        (Method::GET, "/v1/projects".into(), None, Scope::ProjectsRead, [Ok(200), Ok(200), Ok(200), Ok(200)]),
        (
            Method::POST,
            "/v1/projects".into(),
            Some(r#"{"name":"gamma"}"#),
            Scope::ProjectsWrite,
            [Ok(201), Status(403), Status(403), Ok(201)],
        ),
        (
            Method::GET,
            format!("/v1/projects/{p1}"),
            None,
            Scope::ProjectsRead,
            [Ok(200), Ok(200), Status(404), Status(404)],
        ),
        (
            Method::GET,
            "/v1/projects/alpha".into(),
            None,
            Scope::ProjectsRead,
            [Ok(200), Ok(200), Status(404), Status(404)],
        ),
        (
            Method::PATCH,
            format!("/v1/projects/{p1}"),
            Some(limits),
            Scope::ProjectsWrite,
            [Ok(200), Ok(200), Status(404), Status(404)],
        ),
        // The provisioning job is still pending (no worker runs here): deletion is locked.
        (
            Method::DELETE,
            format!("/v1/projects/{p1}"),
            None,
            Scope::ProjectsWrite,
            [Status(423), Status(423), Status(404), Status(404)],
        ),
        (
            Method::GET,
            format!("/v1/projects/{p1}/connection"),
            None,
            Scope::CredentialsRead,
            [Ok(200), Ok(200), Status(404), Status(404)],
        ),
        (
            Method::GET,
            format!("/database/v1/projects/{p1}/connection?pooled=true"),
            None,
            Scope::CredentialsRead,
            [Ok(200), Ok(200), Status(404), Status(404)],
        ),
        (
            Method::GET,
            format!("/v1/projects/{p1}/connections"),
            None,
            Scope::CredentialsRead,
            [Ok(200), Ok(200), Status(404), Status(404)],
        ),
        // Still provisioning: rotation is refused as a conflict, after authorization.
        (
            Method::POST,
            format!("/v1/projects/{p1}/credentials/rotate"),
            Some("{}"),
            Scope::CredentialsWrite,
            [Status(409), Status(409), Status(404), Status(404)],
        ),
        (Method::GET, "/v1/jobs".into(), None, Scope::JobsRead, [Ok(200), Ok(200), Ok(200), Ok(200)]),
        (
            Method::GET,
            format!("/v1/jobs/{p1_job}"),
            None,
            Scope::JobsRead,
            [Ok(200), Ok(200), Status(404), Status(404)],
        ),
        (Method::GET, "/v1/keys".into(), None, Scope::KeysWrite, [Ok(200), Ok(200), Ok(200), Ok(200)]),
        (
            Method::POST,
            "/v1/keys".into(),
            Some(new_key),
            Scope::KeysWrite,
            [Ok(201), Ok(201), Ok(201), Ok(201)],
        ),
        (
            Method::DELETE,
            format!("/v1/keys/{victim}"),
            None,
            Scope::KeysWrite,
            [Ok(200), Ok(200), Status(404), Status(404)],
        ),
    ];

    for (method, path, body, scope, expected) in rows {
        let lacking: Vec<Scope> = Scope::ALL.into_iter().filter(|s| *s != scope).collect();
        let lacking_key = key(&h.control, &h.org, None, &lacking).await;
        let callers = [
            ("org key", Some(h.admin.as_str()), expected[0]),
            ("P1 key", Some(p1_key.as_str()), expected[1]),
            ("P2 key", Some(p2_key.as_str()), expected[2]),
            ("other org", Some(other_key.as_str()), expected[3]),
            ("no key", None, Status(401)),
            ("revoked key", Some(revoked.as_str()), Status(401)),
            ("garbage key", Some("berth_live_notarealkeyatall000000000000"), Status(401)),
            ("wrong scope", Some(lacking_key.as_str()), Status(403)),
        ];
        for (who, key, expect) in callers {
            // Each creation needs a fresh name, or the second caller gets 409.
            let body = body.map(|b| b.replace("gamma", &format!("g{}", rand_suffix())));
            let (status, json) = h.call(method.clone(), &path, key, body.as_deref()).await;
            let want = match expect {
                Ok(s) | Status(s) => s,
            };
            assert_eq!(status.as_u16(), want, "{method} {path} as {who}: {json}");
            if status.is_client_error() {
                assert!(json["error"]["code"].is_string() && json["error"]["message"].is_string(), "{json}");
            }
        }
    }

    // A project key sees only its own project in lists.
    let (_, body) = h.call(Method::GET, "/v1/projects", Some(&p1_key), None).await;
    let names: Vec<&str> =
        body["projects"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["alpha"]);
    let (_, body) = h.call(Method::GET, "/v1/jobs", Some(&p2_key), None).await;
    assert!(body["jobs"].as_array().unwrap().iter().all(|j| j["project_id"] == p2.as_str()), "{body}");
    // The other organization sees none of ours.
    let (_, body) = h.call(Method::GET, "/v1/projects", Some(&other_key), None).await;
    assert!(body["projects"].as_array().unwrap().iter().all(|p| p["organization_id"] == other_org.as_str()));
    // 423 names the blocking job.
    let (status, body) = h.call(Method::DELETE, "/v1/projects/alpha", Some(&h.admin), None).await;
    assert_eq!(status, StatusCode::LOCKED);
    assert_eq!(body["job"]["id"], p1_job.as_str(), "{body}");
}

fn rand_suffix() -> u32 {
    rand::random::<u32>()
}

#[tokio::test]
async fn keys_cannot_grant_more_than_they_hold() {
    let h = harness().await;
    let (p1, _) = h.create_project("alpha").await;
    let reader = key(&h.control, &h.org, None, &[Scope::KeysWrite, Scope::ProjectsRead]).await;
    let (status, body) = h
        .call(Method::POST, "/v1/keys", Some(&reader), Some(r#"{"name":"x","scopes":["projects:write"]}"#))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = h
        .call(Method::POST, "/v1/keys", Some(&reader), Some(r#"{"name":"x","scopes":["projects:read"]}"#))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let token = body["token"].as_str().unwrap();
    assert!(token.starts_with("berth_live_"), "{token}");
    assert!(body["key"].get("token").is_none());

    // A project key's keys are bound to its project.
    let p1_key = key(&h.control, &h.org, Some(&p1), &Scope::ALL).await;
    let (status, body) =
        h.call(Method::POST, "/v1/keys", Some(&p1_key), Some(r#"{"name":"x","scopes":["jobs:read"]}"#)).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body["key"]["project_id"], p1.as_str());
    // The listing never shows a key's secret or hash.
    let (_, list) = h.get("/v1/keys").await;
    let text = list.to_string();
    assert!(!text.contains(token) && !text.contains("hash"), "{text}");
}
