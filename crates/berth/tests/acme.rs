//! `berth up --public-host NAME --acme-directory URL`: a certificate for NAME and *.NAME from
//! Debian's pebble ACME test server on loopback, validated by DNS-01 through Berth's own DNS
//! responder (pebble resolves through it with -dnsserver), served on the proxy ports, reused
//! on restart, renewed two thirds into its lifetime (pebble issues 60-second certificates
//! here) without dropping open sessions; and when the ACME server is unreachable or refuses
//! the name, Berth serves the local CA's certificate, says so, and logs no key.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use rustls::pki_types::{CertificateDer, ServerName};

/// Pebble's certificate lifetime in these tests: renewal is due 40 seconds in.
const VALIDITY_SECONDS: u64 = 60;

/// A pebble process on free loopback ports, its HTTPS certificate signed by a CA made here.
struct Pebble {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
    management: u16,
}

impl Pebble {
    fn start(dns_port: u16, blocklist: &[&str]) -> Pebble {
        let found = Command::new("pebble").arg("-h").stdout(Stdio::null()).stderr(Stdio::null()).status();
        assert!(
            found.is_ok(),
            "pebble (Debian's ACME test server) is not installed: apt-get install pebble \
             (scripts/test installs it with the other packages)"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = proxy::LocalCa::generate(&["127.0.0.1".to_owned(), "localhost".to_owned()]).expect("a CA");
        std::fs::write(dir.path().join("ca.pem"), &ca.ca_cert_pem).expect("write");
        std::fs::write(dir.path().join("cert.pem"), &ca.server_cert_pem).expect("write");
        std::fs::write(dir.path().join("key.pem"), &ca.server_key_pem).expect("write");
        let (port, management) = (free_port(), free_port());
        let config = serde_json::json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{port}"),
                "managementListenAddress": format!("127.0.0.1:{management}"),
                "certificate": dir.path().join("cert.pem"),
                "privateKey": dir.path().join("key.pem"),
                "httpPort": free_port(),
                "tlsPort": free_port(),
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
                "domainBlocklist": blocklist,
                "certificateValidityPeriod": VALIDITY_SECONDS,
            }
        });
        let config_path = dir.path().join("pebble-config.json");
        std::fs::write(&config_path, config.to_string()).expect("write");
        let log = std::fs::File::create(dir.path().join("pebble.log")).expect("log");
        let child = Command::new("pebble")
            .arg("-config")
            .arg(&config_path)
            .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn pebble");
        let pebble = Pebble { child, dir, port, management };
        wait_for("pebble to listen", || {
            TcpStream::connect(("127.0.0.1", pebble.port)).is_ok()
                && TcpStream::connect(("127.0.0.1", pebble.management)).is_ok()
        });
        pebble
    }

    fn directory(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.port)
    }

    /// The CA that signed pebble's own HTTPS certificate (for --acme-ca-root).
    fn https_root(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The root pebble issues under (new at every start), from its management endpoint, as
    /// PEM (for psql) and DER (for rustls).
    fn issuing_root(&self) -> (Vec<u8>, CertificateDer<'static>) {
        let pem = https_get(&self.https_root(), self.management, "/roots/0");
        let der = berth_certificates(&pem).into_iter().next().expect("a root certificate from pebble");
        (pem, der)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pebble.log")).unwrap_or_default()
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn berth_certificates(pem: &[u8]) -> Vec<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem).filter_map(Result::ok).collect()
}

fn client_config(root: &[CertificateDer<'static>]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in root {
        roots.add(cert.clone()).expect("a root");
    }
    let config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
    Arc::new(config)
}

/// A GET over HTTPS to 127.0.0.1:`port`, trusting `root`; the body.
fn https_get(root: &Path, port: u16, path: &str) -> Vec<u8> {
    let roots = berth_certificates(&std::fs::read(root).expect("root"));
    let name = ServerName::try_from("127.0.0.1").expect("name");
    let conn = rustls::ClientConnection::new(client_config(&roots), name).expect("client");
    let sock = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    sock.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let mut tls = rustls::StreamOwned::new(conn, sock);
    write!(tls, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").expect("send");
    let mut response = Vec::new();
    let _ = tls.read_to_end(&mut response);
    let at = response.windows(4).position(|w| w == b"\r\n\r\n").expect("a response") + 4;
    response[at..].to_vec()
}

/// The leaf certificate the proxy on `port` serves for `name` (SNI), if it verifies against
/// `root` for that name: a PostgreSQL SSLRequest, then a rustls handshake.
fn served_certificate(port: u16, name: &str, root: &CertificateDer<'static>) -> Result<Vec<u8>, String> {
    let server_name = ServerName::try_from(name.to_owned()).map_err(|e| e.to_string())?;
    let mut conn = rustls::ClientConnection::new(client_config(std::slice::from_ref(root)), server_name)
        .map_err(|e| e.to_string())?;
    let mut sock = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    sock.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).map_err(|e| e.to_string())?;
    let mut answer = [0u8; 1];
    sock.read_exact(&mut answer).map_err(|e| e.to_string())?;
    if answer[0] != b'S' {
        return Err(format!("SSLRequest answered {:?}", answer[0] as char));
    }
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).map_err(|e| e.to_string())?;
    }
    let leaf = conn.peer_certificates().and_then(|c| c.first()).ok_or("no certificate")?;
    Ok(leaf.as_ref().to_vec())
}

fn wait_long(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// One UDP DNS exchange with the responder: the answer, or None if none came.
fn dns_ask(port: u16, datagram: &[u8]) -> Option<Message> {
    let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    sock.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
    sock.send_to(datagram, ("127.0.0.1", port)).expect("send");
    let mut buf = [0u8; 2048];
    let n = sock.recv(&mut buf).ok()?;
    Some(Message::from_vec(&buf[..n]).expect("a DNS message"))
}

/// One DNS exchange over TCP (two-byte length prefixes).
fn dns_ask_tcp(port: u16, query: &[u8]) -> Option<Message> {
    let mut sock = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    sock.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut framed = (query.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(query);
    sock.write_all(&framed).expect("send");
    let mut len = [0u8; 2];
    sock.read_exact(&mut len).ok()?;
    let mut answer = vec![0u8; usize::from(u16::from_be_bytes(len))];
    sock.read_exact(&mut answer).ok()?;
    Some(Message::from_vec(&answer).expect("a DNS message"))
}

fn dns_query(name: &str, kind: RecordType) -> Vec<u8> {
    let mut m = Message::new();
    m.set_id(7).set_message_type(MessageType::Query).set_op_code(OpCode::Query);
    m.add_query(Query::query(Name::from_ascii(name).expect("name"), kind));
    m.to_vec().expect("encode")
}

/// The secrets Berth keeps for ACME: the account key (from account.json) and the
/// certificate's key, as base64 lines that must never appear in a log.
fn acme_secrets(data: &Path) -> Vec<String> {
    let mut secrets = Vec::new();
    for dir in std::fs::read_dir(data.join("acme")).expect("acme dir") {
        let dir = dir.expect("entry").path();
        for file in std::fs::read_dir(&dir).expect("dir") {
            let path = file.expect("entry").path();
            let text = std::fs::read_to_string(&path).expect("read");
            if path.extension().is_some_and(|e| e == "key") {
                secrets.extend(text.lines().filter(|l| !l.starts_with("-----")).map(str::to_owned));
            } else if path.file_name().is_some_and(|n| n == "account.json") {
                let json: serde_json::Value = serde_json::from_str(&text).expect("account.json");
                let key = json["key_pkcs8"].as_str().expect("the account key in account.json");
                secrets.push(key.to_owned());
            }
        }
    }
    secrets
}

fn assert_private(data: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
    assert_eq!(mode(&data.join("acme")), 0o700);
    for dir in std::fs::read_dir(data.join("acme")).expect("acme dir") {
        let dir = dir.expect("entry").path();
        assert_eq!(mode(&dir), 0o700, "{}", dir.display());
        for file in std::fs::read_dir(&dir).expect("dir") {
            let path = file.expect("entry").path();
            assert_eq!(mode(&path), 0o600, "{}", path.display());
        }
    }
}

fn acme_flags(host: &str, directory: &str, root: &Path, dns_port: u16) -> Vec<String> {
    vec![
        "--public-host".into(),
        host.into(),
        "--acme-directory".into(),
        directory.into(),
        "--acme-ca-root".into(),
        root.display().to_string(),
        "--acme-dns-listen".into(),
        format!("127.0.0.1:{dns_port}"),
        "--acme-email".into(),
        "ops@berth.test".into(),
    ]
}

fn up_with(data: &Path, ports: Ports, flags: &[String]) -> Up {
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    berth_up_with(data, ports, &flags)
}

/// A UDP and TCP port free on loopback at once.
fn free_dns_port() -> u16 {
    loop {
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let port = udp.local_addr().expect("addr").port();
        if std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
}

fn tokio_postgres_verified(
    uri: &str,
    host: &str,
    root: &CertificateDer<'static>,
) -> (tokio::runtime::Runtime, tokio_postgres::Client) {
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let mut config: tokio_postgres::Config = uri.parse().expect("a connection string");
    config.hostaddr(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST));
    assert_eq!(config.get_hosts(), [tokio_postgres::config::Host::Tcp(host.to_owned())]);
    let tls =
        tokio_postgres_rustls::MakeRustlsConnect::new((*client_config(std::slice::from_ref(root))).clone());
    let client = rt.block_on(async {
        let (client, connection) = tokio::time::timeout(Duration::from_secs(30), config.connect(tls))
            .await
            .expect("connect in time")
            .expect("verify-full against pebble's root");
        tokio::spawn(connection);
        client
    });
    (rt, client)
}

fn query_one(rt: &tokio::runtime::Runtime, client: &tokio_postgres::Client, sql: &str) -> String {
    rt.block_on(async {
        let row = tokio::time::timeout(Duration::from_secs(30), client.query_one(sql, &[]))
            .await
            .expect("in time")
            .expect("query");
        row.get::<_, String>(0)
    })
}

#[test]
fn a_certificate_from_pebble_for_the_host_and_its_wildcard_is_served_reused_and_renewed() {
    let dns_port = free_dns_port();
    let pebble = Pebble::start(dns_port, &[]);
    let host = "db.berth.test";
    let flags = acme_flags(host, &pebble.directory(), &pebble.https_root(), dns_port);
    let data = data_dir();
    let ports = Ports::free();
    let up = up_with(data.path(), ports, &flags);
    assert!(up.stdout.contains("ACME for db.berth.test and *.db.berth.test"), "{}", up.stdout);
    let (root_pem, root) = pebble.issuing_root();

    // Both names, on both ports, verified against pebble's root.
    let mut first = Vec::new();
    wait_long(
        "pebble's certificate on the direct port",
        Duration::from_secs(90),
        || match served_certificate(ports.direct, host, &root) {
            Ok(leaf) => {
                first = leaf;
                true
            }
            Err(_) => false,
        },
    );
    for port in [ports.direct, ports.pooled] {
        for name in [host, "x.db.berth.test", "shop.db.berth.test"] {
            let leaf =
                served_certificate(port, name, &root).unwrap_or_else(|e| panic!("{name} on {port}: {e}"));
            assert_eq!(leaf, first, "{name} on {port}: another certificate");
        }
    }
    assert!(
        served_certificate(ports.direct, "db.other.test", &root).is_err(),
        "a name the certificate lacks"
    );
    assert!(up.log().contains("ACME certificate installed"), "{}", up.log());
    assert_private(data.path());

    // The DNS responder: others' names refused, garbage survived, the challenge name served.
    assert!(dns_ask(dns_port, b"\x00\x01garbage that is no DNS message").is_none());
    assert!(dns_ask(dns_port, &[0u8; 3000]).is_none(), "an oversized datagram was answered");
    let refused = dns_ask(dns_port, &dns_query("example.com.", RecordType::TXT)).expect("an answer");
    assert_eq!(refused.response_code(), ResponseCode::Refused);
    let ours =
        dns_ask(dns_port, &dns_query("_acme-challenge.db.berth.test.", RecordType::TXT)).expect("an answer");
    assert_eq!(ours.response_code(), ResponseCode::NoError);
    assert!(ours.authoritative());
    assert!(ours.answers().is_empty(), "challenge values left behind after the order: {:?}", ours.answers());

    // A restart serves the stored certificate at once and orders nothing.
    let log = up.stop();
    assert!(log.contains("ACME: ordering a certificate"), "{log}");
    let up = up_with(data.path(), ports, &flags);
    assert!(up.stdout.contains("(in service)"), "{}", up.stdout);
    let again = served_certificate(ports.direct, host, &root).expect("the stored certificate at start");
    assert_eq!(again, first, "a restart served another certificate");
    up.create_project("shop");
    let uri = up.connection("shop", false);
    assert!(uri.contains(&format!("@{host}:")), "{uri}");
    let (rt, held) = tokio_postgres_verified(&uri, host, &root);
    assert_eq!(query_one(&rt, &held, "select 'verified'"), "verified");
    let pooled = up.connection("shop", true);
    let root_file = data.path().join("pebble-root.pem");
    std::fs::write(&root_file, root_pem).expect("write");
    let verify = format!("sslmode=verify-full&sslrootcert={}&hostaddr=127.0.0.1", root_file.display());
    let (ok, out, err) = psql(&pooled.replace("sslmode=require", &verify), "select 'psql verified'");
    assert!(ok && out == "psql verified", "psql verify-full on the pooled port: {err}");

    // Renewal two thirds into the 60 s lifetime: a new certificate, the session kept.
    let mut renewed = Vec::new();
    wait_long("the renewed certificate", Duration::from_secs(150), || {
        match served_certificate(ports.direct, host, &root) {
            Ok(leaf) if leaf != first => {
                renewed = leaf;
                true
            }
            _ => false,
        }
    });
    assert_eq!(
        served_certificate(ports.pooled, "x.db.berth.test", &root).expect("renewed wildcard"),
        renewed
    );
    assert_eq!(
        query_one(&rt, &held, "select 'still here'"),
        "still here",
        "the session from before the renewal"
    );
    let (_rt2, fresh) = tokio_postgres_verified(&uri, host, &root);
    assert_eq!(query_one(&_rt2, &fresh, "select 'renewed'"), "renewed");
    drop(held);
    drop(rt);

    let log = up.stop();
    assert!(log.contains("no new order"), "{log}");
    assert_eq!(log.matches("ACME: ordering a certificate").count(), 1, "one order after the restart: {log}");
    for secret in acme_secrets(data.path()) {
        assert!(!log.contains(&secret), "an ACME key was logged");
    }
    assert!(!pebble.log().is_empty());
}

/// psql verify-full against the local CA, for `localhost`.
fn local_ca_verified(up: &Up, data: &Path) -> bool {
    let uri = up.connection("shop", false);
    let at = uri.find('@').expect("@") + 1;
    let colon = at + uri[at..].find(':').expect(":");
    let local = format!("{}localhost{}", &uri[..at], &uri[colon..]);
    let verify =
        format!("sslmode=verify-full&sslrootcert={}&hostaddr=127.0.0.1", data.join("ca.pem").display());
    psql(&local.replace("sslmode=require", &verify), "select 1").0
}

#[test]
fn an_unreachable_acme_server_leaves_berth_up_on_the_local_ca() {
    let closed = free_port();
    let dns_port = free_dns_port();
    let files = tempfile::tempdir().expect("tempdir");
    let ca = proxy::LocalCa::generate(&["127.0.0.1".to_owned()]).expect("a CA");
    let root = files.path().join("root.pem");
    std::fs::write(&root, &ca.ca_cert_pem).expect("write");
    let flags =
        acme_flags("db.unreachable.test", &format!("https://127.0.0.1:{closed}/dir"), &root, dns_port);
    let data = data_dir();
    let up = up_with(data.path(), Ports::free(), &flags);
    assert!(up.stdout.contains("being obtained; local CA meanwhile"), "{}", up.stdout);
    wait_for("the failure to be logged", || up.log().contains("ACME certificate not obtained"));
    let log = up.log();
    assert!(log.contains("the local CA's certificate") && log.contains("retry_in"), "{log}");
    assert!(log.contains(&format!("127.0.0.1:{closed}")), "the log names the directory: {log}");
    up.create_project("shop");
    wait_for("the project to be routed", || local_ca_verified(&up, data.path()));
    // The responder answers even with no order in flight, over UDP and TCP.
    let refused = dns_ask(dns_port, &dns_query("db.unreachable.test.", RecordType::A)).expect("an answer");
    assert_eq!(refused.response_code(), ResponseCode::Refused);
    let ours = dns_ask_tcp(dns_port, &dns_query("_acme-challenge.db.unreachable.test.", RecordType::TXT));
    assert_eq!(ours.expect("a TCP answer").response_code(), ResponseCode::NoError);
    // A length over the limit closes the connection unanswered; the next client is served.
    let mut oversized = TcpStream::connect(("127.0.0.1", dns_port)).expect("connect");
    oversized.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    oversized.write_all(&[0xff, 0xff]).expect("send");
    assert_eq!(oversized.read(&mut [0u8; 16]).unwrap_or(0), 0, "an oversized TCP query was answered");
    assert!(dns_ask_tcp(dns_port, &dns_query("example.com.", RecordType::TXT)).is_some());
    let log = up.stop();
    let key = std::fs::read_to_string(data.path().join("server.key")).expect("server.key");
    assert!(!log.contains(key.lines().nth(1).expect("key body")), "the local key was logged");
}

#[test]
fn an_acme_server_refusing_the_name_leaves_berth_up_on_the_local_ca() {
    let dns_port = free_dns_port();
    let pebble = Pebble::start(dns_port, &["refused.test"]);
    let flags = acme_flags("db.refused.test", &pebble.directory(), &pebble.https_root(), dns_port);
    let data = data_dir();
    let up = up_with(data.path(), Ports::free(), &flags);
    wait_for("the refusal to be logged", || up.log().contains("ACME certificate not obtained"));
    let log = up.log();
    assert!(log.contains("ACME new order") && log.contains("the local CA's certificate"), "{log}");
    up.create_project("shop");
    wait_for("the project to be routed", || local_ca_verified(&up, data.path()));
    let log = up.stop();
    let secrets = acme_secrets(data.path());
    assert!(!secrets.is_empty(), "the account was registered and kept");
    for secret in secrets {
        assert!(!log.contains(&secret), "the ACME account key was logged");
    }
    assert_private(data.path());
}
