//! `berth up --tls-cert --tls-key`: the operator's certificate on both proxy ports instead of
//! the local CA's, reloaded when its files change (new connections get the new one, open
//! sessions go on), a mismatched pair refused at start and kept out at reload, and the API
//! no longer handing out a CA that did not sign it.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;

struct Pair {
    cert: String,
    key: String,
}

/// A self-signed certificate for `localhost`, its own root.
fn self_signed() -> Pair {
    let key = rcgen::KeyPair::generate().expect("a key");
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    params.distinguished_name.push(rcgen::DnType::CommonName, "operator certificate");
    let cert = params.self_signed(&key).expect("a certificate");
    Pair { cert: cert.pem(), key: key.serialize_pem() }
}

/// `uri` verified against `root` for the host `localhost`.
fn verified(uri: &str, root: &Path) -> String {
    let verify = format!("sslmode=verify-full&sslrootcert={}", root.display());
    uri.replace("@127.0.0.1:", "@localhost:").replace("sslmode=require", &verify)
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write");
}

#[test]
fn the_operators_certificate_is_served_and_reloaded_when_its_files_change() {
    let files = tempfile::tempdir().expect("tempdir");
    let (one, two) = (self_signed(), self_signed());
    let root = |name: &str, pair: &Pair| -> PathBuf {
        let path = files.path().join(name);
        write(&path, &pair.cert);
        path
    };
    let (root_one, root_two) = (root("root-one.pem", &one), root("root-two.pem", &two));
    let (cert, key) = (files.path().join("server.pem"), files.path().join("server.key"));
    let flags = ["--tls-cert", cert.to_str().expect("utf-8"), "--tls-key", key.to_str().expect("utf-8")];

    // A key that is not the certificate's: a clear error before anything starts.
    write(&cert, &one.cert);
    write(&key, &two.key);
    let data = data_dir();
    let ports = Ports::free();
    let refused = Command::new(BERTH)
        .args(["up", "--data"])
        .arg(data.path())
        .args(["--api-listen", &format!("127.0.0.1:{}", ports.api)])
        .args(["--pooled-listen", &format!("127.0.0.1:{}", ports.pooled)])
        .args(["--direct-listen", &format!("127.0.0.1:{}", ports.direct)])
        .args(flags)
        .stdin(Stdio::null())
        .output()
        .expect("berth up");
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "berth up started with a mismatched pair");
    assert!(err.contains("--tls-cert") && err.contains(cert.to_str().expect("utf-8")), "{err}");
    assert!(err.contains("the private key is not the one of the certificate"), "{err}");
    assert!(!err.contains(two.key.lines().nth(1).expect("key body")), "the key was printed");

    write(&key, &one.key);
    let up = berth_up_with(data.path(), ports, &flags);
    assert!(up.stdout.contains("yours; reloaded"), "{}", up.stdout);
    let (status, _, body) = get_unauthenticated(data.path(), "/v1/tls/ca.pem");
    assert!(status == 404 && body.contains("\"not_found\""), "{status} {body}");
    up.create_project("shop");
    let uris = [up.connection("shop", false), up.connection("shop", true)];
    for uri in &uris {
        wait_for("the project to be routed", || psql(uri, "select 1").0);
        let (ok, _, err) = psql(&verified(uri, &root_one), "select 1");
        assert!(ok, "{uri}, the operator's first certificate: {err}");
        assert!(
            !psql(&verified(uri, &root_two), "select 1").0,
            "{uri}: the second certificate before it is served"
        );
    }
    let mut held: Vec<Held> = uris.iter().map(|uri| held_psql(&verified(uri, &root_one))).collect();

    // The certificate replaced, its key not yet: logged, and the first pair kept.
    write(&cert, &two.cert);
    wait_for("the mismatched pair to be refused", || up.log().contains("TLS certificate not reloaded"));
    for uri in &uris {
        assert!(psql(&verified(uri, &root_one), "select 1").0, "{uri}: the first certificate was not kept");
    }

    write(&key, &two.key);
    for uri in &uris {
        wait_for("the second certificate to be served", || psql(&verified(uri, &root_two), "select 1").0);
        assert!(!psql(&verified(uri, &root_one), "select 1").0, "{uri}: still the first certificate");
    }
    for session in &mut held {
        assert_eq!(session.query("select 'still here'"), "still here", "a session from before the reload");
    }
    held.into_iter().for_each(Held::close);
    let log = up.stop();
    assert!(log.contains("TLS certificate reloaded"), "{log}");
    for pair in [&one, &two] {
        assert!(!log.contains(pair.key.lines().nth(1).expect("key body")), "a key was logged");
    }
}
