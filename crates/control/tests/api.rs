//! The API's behaviour on good and bad requests: error shape and status for malformed
//! input, names, duplicates and unknown routes; Idempotency-Key; cursor pagination;
//! connection strings; the OpenAPI document.

#![allow(clippy::unwrap_used)]

mod common;

use axum::http::{Method, StatusCode};
use common::harness;
use serde_json::Value;

fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_else(|| panic!("no error shape: {body}"))
}

#[tokio::test]
async fn bad_input_gets_the_documented_error_and_creates_nothing() {
    let h = harness().await;
    let cases: Vec<(&str, u16, &str)> = vec![
        ("{not json", 400, "invalid_json"),
        ("", 400, "invalid_json"),
        (r#"{"name":"ok","colour":"red"}"#, 422, "invalid_request"),
        (r#"{"name":42}"#, 422, "invalid_request"),
        (r#"{}"#, 422, "invalid_request"),
        (r#"{"name":"a/b"}"#, 422, "invalid_request"),
        (r#"{"name":".."}"#, 422, "invalid_request"),
        (r#"{"name":"it's"}"#, 422, "invalid_request"),
        (r#"{"name":"say\"hi\""}"#, 422, "invalid_request"),
        (r#"{"name":"with space"}"#, 422, "invalid_request"),
        (r#"{"name":"ok","limits":{"max_direct_connections":0}}"#, 422, "invalid_request"),
        (r#"{"name":"ok","limits":{"query_timeout_ms":-5}}"#, 422, "invalid_request"),
        (r#"{"name":"ok","pool_config":{"pool_mode":"statement"}}"#, 422, "invalid_request"),
    ];
    let long = format!(r#"{{"name":"{}"}}"#, "x".repeat(200));
    for (body, status, code) in cases.iter().copied().chain([(long.as_str(), 422, "invalid_request")]) {
        let (got, json) = h.post("/v1/projects", body).await;
        assert_eq!(got.as_u16(), status, "{body}: {json}");
        assert_eq!(error_code(&json), code, "{body}");
        assert!(!json["error"]["message"].as_str().unwrap().is_empty());
    }
    let (_, list) = h.get("/v1/projects").await;
    assert_eq!(list["projects"].as_array().unwrap().len(), 0, "a bad request left a project: {list}");
    let (_, jobs) = h.get("/v1/jobs").await;
    assert_eq!(jobs["jobs"].as_array().unwrap().len(), 0, "a bad request left a job");

    // Duplicate names conflict and leave only the first.
    h.create_project("shop").await;
    let (status, json) = h.post("/v1/projects", r#"{"name":"shop"}"#).await;
    assert_eq!((status, error_code(&json)), (StatusCode::CONFLICT, "conflict"));
    let (_, list) = h.get("/v1/projects").await;
    assert_eq!(list["projects"].as_array().unwrap().len(), 1);

    // Unknown routes, methods, ids and query parameters.
    let (status, json) = h.get("/v1/nothing").await;
    assert_eq!((status, error_code(&json)), (StatusCode::NOT_FOUND, "not_found"));
    let (status, json) = h.call(Method::PUT, "/v1/projects", Some(&h.admin), Some("{}")).await;
    assert_eq!((status, error_code(&json)), (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"));
    for path in [
        "/v1/projects/..%2F..%2Fetc",
        "/v1/projects/proj_nope",
        "/v1/jobs/job_nope",
        "/v1/projects/shop%27--",
    ] {
        let (status, json) = h.get(path).await;
        assert_eq!((status, error_code(&json)), (StatusCode::NOT_FOUND, "not_found"), "{path}");
    }
    let (status, json) = h.get("/v1/projects?limit=abc").await;
    assert_eq!((status, error_code(&json)), (StatusCode::BAD_REQUEST, "invalid_query"));
    let (status, json) = h.get("/v1/projects/shop/connection?pooled=maybe").await;
    assert_eq!((status, error_code(&json)), (StatusCode::BAD_REQUEST, "invalid_query"));
    let (status, json) = h.get("/v1/projects/shop/connection?branch=nope").await;
    assert_eq!((status, error_code(&json)), (StatusCode::NOT_FOUND, "not_found"));
    let (status, json) =
        h.call(Method::PATCH, "/v1/projects/shop", Some(&h.admin), Some(r#"{"limits":{"bogus":1}}"#)).await;
    assert_eq!((status, error_code(&json)), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"));
}

#[tokio::test]
async fn idempotency_key_replays_the_first_response_and_refuses_a_different_body() {
    let h = harness().await;
    let send = |body: &'static str, key: &'static str| {
        let h = &h;
        async move {
            h.call_with(Method::POST, "/v1/projects", Some(&h.admin), Some(body), &[("idempotency-key", key)])
                .await
        }
    };
    let (s1, first) = send(r#"{"name":"once"}"#, "k-1").await;
    let (s2, again) = send(r#"{"name":"once"}"#, "k-1").await;
    assert_eq!((s1, s2), (StatusCode::CREATED, StatusCode::CREATED));
    assert_eq!(first["project"]["id"], again["project"]["id"]);
    assert_eq!(first["job"]["id"], again["job"]["id"]);
    let (_, list) = h.get("/v1/projects").await;
    assert_eq!(list["projects"].as_array().unwrap().len(), 1, "created twice");

    let (status, json) = send(r#"{"name":"other"}"#, "k-1").await;
    assert_eq!((status, error_code(&json)), (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused"));
    // Client errors are remembered too: the retry gets the same 409.
    let (s, _) = send(r#"{"name":"once"}"#, "k-2").await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, json) = send(r#"{"name":"once"}"#, "k-2").await;
    assert_eq!((s, error_code(&json)), (StatusCode::CONFLICT, "conflict"));
    let (status, json) = send(r#"{"name":"x"}"#, "bad key with spaces").await;
    assert_eq!((status, error_code(&json)), (StatusCode::BAD_REQUEST, "invalid_idempotency_key"));
}

#[tokio::test]
async fn lists_page_with_cursors() {
    let h = harness().await;
    for i in 0..5 {
        h.create_project(&format!("p{i}")).await;
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/projects?limit=2&cursor={c}"),
            None => "/v1/projects?limit=2".into(),
        };
        let (status, body) = h.get(&path).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        pages += 1;
        seen.extend(
            body["projects"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap().to_owned()),
        );
        match body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, ["p0", "p1", "p2", "p3", "p4"]);
}

#[tokio::test]
async fn connection_strings_come_in_both_shapes_with_credentials() {
    let h = harness().await;
    let (id, _) = h.create_project("shop").await;
    let (status, direct) = h.get(&format!("/v1/projects/{id}/connection")).await;
    assert_eq!(status, StatusCode::OK, "{direct}");
    let uri = direct["connectionUri"].as_str().unwrap();
    assert!(
        uri.starts_with("postgresql://shop_owner:") && uri.ends_with("@localhost:6433/shop?sslmode=require"),
        "{uri}"
    );
    assert_eq!((direct["branch"].as_str(), direct["pooled"].as_bool()), (Some("main"), Some(false)));
    let (_, pooled) = h.get("/database/v1/projects/shop/connection?pooled=true&branch=main").await;
    let pooled_uri = pooled["connectionUri"].as_str().unwrap();
    assert!(pooled_uri.contains("@localhost:6432/shop?"), "{pooled_uri}");
    assert_eq!(pooled["pooled"], true);
    // case.dev's SDKs send pooled=1 and pooled=True.
    for (q, want) in [("1", true), ("True", true), ("0", false), ("False", false), ("TRUE", true)] {
        let (status, c) = h.get(&format!("/database/v1/projects/shop/connection?pooled={q}")).await;
        assert_eq!(status, StatusCode::OK, "pooled={q}: {c}");
        assert_eq!(c["pooled"], want, "pooled={q}");
        assert_eq!(c["connectionUri"].as_str().unwrap().contains(":6432/"), want, "pooled={q}");
    }
    let (_, both) = h.get("/v1/projects/shop/connections").await;
    assert_eq!(both["connections"]["direct_url"], uri);
    assert_eq!(both["connections"]["pooled_url"], pooled_uri);
    assert_eq!(both["connections"]["username"], "shop_owner");
    // The password is the same each time (it is stored, sealed) and is not in the project.
    let (_, again) = h.get("/v1/projects/shop/connection").await;
    assert_eq!(again["connectionUri"], uri);
    let password = uri["postgresql://shop_owner:".len()..].split('@').next().unwrap();
    assert_eq!(password.len(), 32);
    let (_, project) = h.get("/v1/projects/shop").await;
    assert!(!project.to_string().contains(password));
}

#[tokio::test]
async fn openapi_document_is_served_without_a_key() {
    let h = harness().await;
    let (status, doc) = h.call(Method::GET, "/v1/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "{}", doc["openapi"]);
    for path in [
        "/v1/projects",
        "/v1/projects/{id}",
        "/v1/projects/{id}/connection",
        "/database/v1/projects/{id}/connection",
        "/v1/jobs/{id}",
        "/v1/keys",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} missing");
    }
    assert!(doc["components"]["schemas"]["JobView"]["properties"]["preview_database_id"].is_object());
}

#[tokio::test]
async fn a_body_over_the_limit_is_413_in_the_error_shape() {
    let h = harness().await;
    let big = format!(r#"{{"name": "big", "pad": "{}"}}"#, "x".repeat(3 << 20));
    let (status, json) = h.post("/v1/projects", &big).await;
    assert_eq!((status, error_code(&json)), (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"), "{json}");
}
