//! Clients that verify the server certificate (node-postgres treats `sslmode=require` as
//! verify-full): `GET /v1/tls/ca.pem` serves the local CA without a key, and what it serves
//! verifies the proxy's certificate for `localhost` on both ports, while another CA does not.

mod common;

use common::*;

/// `uri` (as the API prints it) verified against `ca` for the host `localhost`.
fn verified(uri: &str, ca: &std::path::Path) -> String {
    let verify = format!("sslmode=verify-full&sslrootcert={}", ca.display());
    uri.replace("@127.0.0.1:", "@localhost:").replace("sslmode=require", &verify)
}

#[test]
fn the_served_ca_verifies_the_proxy_on_both_ports() {
    let data = data_dir();
    let up = berth_up(data.path(), Ports::free());

    let (status, head, body) = get_unauthenticated(data.path(), "/v1/tls/ca.pem");
    assert_eq!(status, 200, "{head}\n{body}");
    assert!(head.contains("content-type: application/x-pem-file"), "{head}");
    assert!(body.starts_with("-----BEGIN CERTIFICATE-----"), "{body}");
    assert_eq!(body.matches("BEGIN").count(), 1, "only the CA certificate: {body}");
    assert!(!body.contains("PRIVATE"), "a key was served");
    let (_, openapi) = api_json(data.path(), "GET", "/v1/openapi.json", "");
    assert!(openapi["paths"]["/v1/tls/ca.pem"]["get"].is_object(), "not in /v1/openapi.json");

    let files = tempfile::tempdir().expect("tempdir");
    let served = files.path().join("berth-ca.pem");
    std::fs::write(&served, &body).expect("write the CA");
    let other = files.path().join("other-ca.pem");
    let stranger = proxy::LocalCa::generate(&["localhost".into()]).expect("another CA");
    std::fs::write(&other, stranger.ca_cert_pem).expect("write the other CA");

    up.create_project("shop");
    for pooled in [false, true] {
        let uri = up.connection("shop", pooled);
        wait_for("the project to be routed", || psql(&uri, "select 1").0);
        let (ok, out, err) = psql(&verified(&uri, &served), "select 'verified'");
        assert!(ok && out == "verified", "pooled={pooled}: {err}");
        let (ok, _, err) = psql(&verified(&uri, &other), "select 1");
        // The same subject name with another key: OpenSSL says "EVP lib" rather than "verify".
        assert!(!ok && err.contains("SSL error"), "pooled={pooled}, another CA: {err}");
    }
}

#[test]
fn berth_connection_verify_prints_strings_psql_verifies_on_both_ports() {
    let data = data_dir();
    let up = berth_up(data.path(), Ports::free());
    up.create_project("shop");
    let (_, _, served) = get_unauthenticated(data.path(), "/v1/tls/ca.pem");
    for flags in [&["--verify"][..], &["--pooled", "--verify", "--branch", "main"]] {
        let mut args = vec!["connection", "shop"];
        args.extend_from_slice(flags);
        let (ok, uri, err) = up.cli(&args);
        assert!(ok, "berth {args:?}: {err}");
        assert!(uri.contains("@localhost:") && !uri.contains("sslmode=require"), "{uri}");
        let (_, root) = uri.split_once("sslmode=verify-full&sslrootcert=").expect("verify-full");
        assert!(root.starts_with('/'), "not an absolute path: {uri}");
        assert_eq!(std::fs::read_to_string(root).expect("the CA file"), served, "{root}");
        wait_for("the project to be routed", || psql(&uri, "select 1").0);
        let (ok, out, err) = psql(&uri, "select 'verified'");
        assert!(ok && out == "verified", "{args:?}: {err}");
    }
}
