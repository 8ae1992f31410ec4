//! What a client learns before login: the salt and iteration count of the server-first
//! message. For a user a database does not route, known elsewhere or not at all, they must
//! look like a real verifier's, be the same at every probe of that user and database (and
//! after a restart with the same key), and differ from database to database, so that
//! comparing them enumerates neither users nor the projects and branches they belong to.

// Setup helpers outside #[test] functions unwrap too; clippy.toml's allow-unwrap-in-tests
// does not reach them.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;

use bytes::BytesMut;
use common::{PASSWORD, Raw, within};
use proxy::routes::{Database, Role, Upstream};
use proxy::secret::Secret;
use proxy::{FakeScramKey, Limits, PoolConfig, ProxySettings, RouteTable, SslMode, UpstreamAddr};
use testkit::TestProxy;
use wire::backend::{Authentication, BackendMessage};
use wire::frontend::SaslInitialResponse;
use wire::scram::ScramVerifier;
use wire::{ProtocolVersion, StartupMessage, StartupPacket};

/// A database routed to nowhere (no login here gets that far), with `alice` if given.
fn db(name: &str, alice: Option<&ScramVerifier>) -> Database {
    let roles: HashMap<String, Role> = alice
        .map(|v| {
            let role = Role {
                name: "alice".into(),
                verifiers: vec![v.clone()],
                upstream_password: Some(Secret::new(PASSWORD)),
            };
            ("alice".to_owned(), role)
        })
        .into_iter()
        .collect();
    Database {
        name: name.into(),
        upstream: Upstream {
            addr: UpstreamAddr::Unix { dir: "/nonexistent".into(), port: 5432 },
            dbname: name.into(),
            ssl_mode: SslMode::Disable,
            ssl_root_cert: None,
            tls: None,
            trust: Default::default(),
        },
        roles,
        limits: Limits::default(),
        pool: PoolConfig::default(),
        api_key_access: None,
        auth_query: None,
        close_sessions_on_removal: false,
    }
}

/// The salt (base64, as sent) and iteration count the proxy offers `user` on `database`.
async fn server_first(proxy: &TestProxy, user: &str, database: &str) -> (String, u32) {
    let tls = within("TLS connect", testkit::raw::tls_connect(proxy.addr, proxy.client_tls())).await.unwrap();
    let mut raw = Raw::new(tls);
    let mut out = BytesMut::new();
    let params = vec![("user".into(), user.into()), ("database".into(), database.into())];
    StartupPacket::Startup(StartupMessage { version: ProtocolVersion::V3_0, params }).encode(&mut out);
    raw.send(&out).await;
    let sasl = raw.frame().await.expect("AuthenticationSASL");
    assert!(matches!(
        BackendMessage::decode(&sasl),
        Ok(BackendMessage::Authentication(Authentication::Sasl { .. }))
    ));
    out.clear();
    let first = "n,,n=,r=rOprNGfwEbeRWgbNEkqO";
    SaslInitialResponse { mechanism: "SCRAM-SHA-256".into(), data: Some(first.as_bytes().to_vec().into()) }
        .encode(&mut out);
    raw.send(&out).await;
    let cont = raw.frame().await.expect("AuthenticationSASLContinue");
    let Ok(BackendMessage::Authentication(Authentication::SaslContinue(data))) =
        BackendMessage::decode(&cont)
    else {
        panic!("expected SASLContinue, got {cont:?}");
    };
    let text = std::str::from_utf8(&data).unwrap();
    let attr = |name: &str| text.split(',').find_map(|a| a.strip_prefix(name)).unwrap().to_owned();
    (attr("s="), attr("i=").parse().unwrap())
}

/// A verifier's salt and iteration count as a server-first message carries them.
fn offered(v: &ScramVerifier) -> (String, u32) {
    let text = v.to_pg_authid();
    let (count_salt, _) = text.strip_prefix("SCRAM-SHA-256$").unwrap().split_once('$').unwrap();
    let (count, salt) = count_salt.split_once(':').unwrap();
    (salt.to_owned(), count.parse().unwrap())
}

#[tokio::test]
async fn fake_salts_are_per_user_and_database_shaped_like_real_ones_and_survive_a_restart() {
    testkit::init_tracing();
    let alice = ScramVerifier::generate(PASSWORD);
    let routes = || RouteTable::new([db("shop", Some(&alice)), db("blog", None)]);
    let key = FakeScramKey::random();
    let settings = || ProxySettings { fake_scram_key: key.clone(), ..ProxySettings::default() };

    let mut first = TestProxy::start(routes(), settings()).await.unwrap();
    let real = server_first(&first, "alice", "shop").await;
    assert_eq!(real, offered(&alice));
    let ghost_shop = server_first(&first, "ghost", "shop").await;
    let ghost_blog = server_first(&first, "ghost", "blog").await;
    let ghost_nowhere = server_first(&first, "ghost", "nowhere").await;
    // Alice is real on shop: on blog, which does not route her, she is a stranger.
    let alice_blog = server_first(&first, "alice", "blog").await;
    let alice_nowhere = server_first(&first, "alice", "nowhere").await;

    let fakes = [&ghost_shop, &ghost_blog, &ghost_nowhere, &alice_blog, &alice_nowhere];
    for (i, a) in fakes.iter().enumerate() {
        assert_eq!(a.0.len(), real.0.len(), "a fake salt is as long as a real one");
        assert_eq!(a.1, real.1, "a fake iteration count is a real one's");
        assert_ne!(a.0, real.0);
        for b in &fakes[i + 1..] {
            assert_ne!(a.0, b.0, "one user's salts must differ between databases, and users' on one");
        }
    }
    assert_eq!(server_first(&first, "ghost", "shop").await, ghost_shop, "a probe sees the same salt again");
    first.stop().await;
    drop(first);

    // A restart with the same key: every salt is what it was, fake or real.
    let second = TestProxy::start(routes(), settings()).await.unwrap();
    assert_eq!(server_first(&second, "alice", "shop").await, real);
    assert_eq!(server_first(&second, "ghost", "shop").await, ghost_shop);
    assert_eq!(server_first(&second, "alice", "blog").await, alice_blog);
    assert_eq!(server_first(&second, "ghost", "nowhere").await, ghost_nowhere);

    // Without the key, nobody can compute them.
    let other = TestProxy::start(routes(), ProxySettings::default()).await.unwrap();
    assert_ne!(server_first(&other, "ghost", "shop").await, ghost_shop);
}
