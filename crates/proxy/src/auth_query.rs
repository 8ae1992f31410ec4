//! Roles of a registered upstream that the route table does not list, authenticated as
//! PgBouncer's `auth_query` does: the proxy logs in with the registered credentials, reads
//! the role's SCRAM verifier from `pg_authid`, checks the client's exchange against it, and
//! opens server connections as that role with the keys from the client's own exchange. No
//! password of those roles is ever stored. Verifiers are cached for a second and dropped when
//! a login against them fails, so a changed password is fetched again at the next attempt.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wire::scram::ScramVerifier;
use wire::{Frame, parse_frame};

use crate::routes::{Database, Role, Upstream};
use crate::secret::Secret;
use crate::stream::UpstreamStream;

/// How long a fetched verifier is trusted before it is fetched again: long enough that a
/// burst of logins costs one upstream lookup, short enough that a password changed upstream
/// (the old one refused, the new one accepted) takes effect within a second. PgBouncer runs
/// its auth_query on every login; a failed login also drops the cached verifier at once.
const FRESH_FOR: Duration = Duration::from_secs(1);
/// Answers to the auth query are a row or two.
const MAX_ANSWER: usize = 64 * 1024;

/// The registered credentials an upstream's other roles are looked up with.
#[derive(Debug, Clone)]
pub struct AuthQuery {
    pub user: String,
    pub password: Secret,
}

/// Verifiers fetched by auth query, per (database, role). `None` remembers a role that has
/// no usable verifier, so unknown names cost one query per `FRESH_FOR`, not one per login.
#[derive(Default)]
pub struct VerifierCache {
    entries: Mutex<HashMap<(String, String), Fetched>>,
}

/// When a verifier was fetched, and what came back.
type Fetched = (Instant, Option<ScramVerifier>);

impl VerifierCache {
    /// The role's verifier: cached, or fetched from the upstream. `Ok(None)` for a role
    /// that cannot log in with SCRAM; `Err` when the upstream cannot be asked.
    pub async fn verifier(
        &self,
        db: &Database,
        aq: &AuthQuery,
        role: &str,
        timeout: Duration,
    ) -> Result<Option<ScramVerifier>, String> {
        let key = (db.name.clone(), role.to_owned());
        if let Some((at, v)) = self.entries.lock().expect("verifier cache poisoned").get(&key)
            && at.elapsed() < FRESH_FOR
        {
            return Ok(v.clone());
        }
        let fetched = fetch(&db.upstream, aq, role, timeout).await?;
        let mut entries = self.entries.lock().expect("verifier cache poisoned");
        if entries.len() > 10_000 {
            entries.clear();
        }
        entries.insert(key, (Instant::now(), fetched.clone()));
        Ok(fetched)
    }

    /// A login against the cached verifier failed: ask the upstream next time.
    pub fn forget(&self, db: &str, role: &str) {
        self.entries.lock().expect("verifier cache poisoned").remove(&(db.to_owned(), role.to_owned()));
    }
}

/// Logs in as the registered role and reads `role`'s verifier.
async fn fetch(
    upstream: &Upstream,
    aq: &AuthQuery,
    role: &str,
    timeout: Duration,
) -> Result<Option<ScramVerifier>, String> {
    let sql = format!(
        "SELECT rolpassword FROM pg_catalog.pg_authid WHERE rolname = {} AND rolcanlogin \
         AND NOT rolsuper AND NOT rolreplication AND (rolvaliduntil IS NULL OR rolvaliduntil > now())",
        escape_literal(role)
    );
    let mut stream = login(upstream, aq, timeout).await.map_err(|f| f.error.detail)?.stream;
    let text = tokio::time::timeout(timeout, query_one(&mut stream, &sql))
        .await
        .map_err(|_| "the auth query timed out".to_string())??;
    let _ = stream.shutdown().await;
    // MD5 and cleartext passwords cannot be checked against a SCRAM exchange.
    Ok(text.and_then(|t| ScramVerifier::parse(&t).ok()))
}

/// A literal that means the same whatever `standard_conforming_strings` says.
fn escape_literal(s: &str) -> String {
    format!("E'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

/// Checks that the upstream accepts `user` and `password` as every later login will be
/// checked (registration does this), and that the role may be routed: not a superuser, not
/// a replication role. The answer names the step that failed and the upstream's SQLSTATE,
/// never the upstream's own words. On success, the password exchange the upstream asked
/// for, which every later login is held to.
pub async fn probe(
    upstream: &Upstream,
    user: &str,
    password: &Secret,
    timeout: Duration,
) -> Result<crate::upstream_auth::AuthMethod, String> {
    let aq = AuthQuery { user: user.to_owned(), password: password.clone() };
    let session = login(upstream, &aq, timeout).await.map_err(|f| {
        tracing::info!(step = f.step.as_str(), detail = %f.error.detail, "registration check failed");
        f.summary()
    })?;
    let method = session.auth_method.ok_or("authentication: the upstream did not ask for the password")?;
    let mut stream = session.stream;
    let sql =
        "SELECT (rolsuper OR rolreplication)::text FROM pg_catalog.pg_roles WHERE rolname = current_user";
    let privileged = tokio::time::timeout(timeout, query_one(&mut stream, sql)).await;
    let _ = stream.shutdown().await;
    match privileged {
        Ok(Ok(Some(v))) if v == "false" => Ok(method),
        Ok(Ok(Some(_))) => Err("startup: the role is a superuser or a replication role there; register a \
                                role without SUPERUSER and REPLICATION"
            .into()),
        Ok(Ok(None)) | Ok(Err(_)) => Err("startup: the role's attributes could not be read".into()),
        Err(_) => Err("startup: timed out".into()),
    }
}

async fn login(
    upstream: &Upstream,
    aq: &AuthQuery,
    timeout: Duration,
) -> Result<crate::upstream::UpstreamSession, crate::upstream::LoginFailure> {
    let db = Database {
        name: upstream.dbname.clone(),
        upstream: upstream.clone(),
        roles: HashMap::new(),
        limits: Default::default(),
        pool: Default::default(),
        api_key_access: None,
        auth_query: None,
        close_sessions_on_removal: false,
    };
    let role =
        Role { name: aq.user.clone(), verifiers: Vec::new(), upstream_password: Some(aq.password.clone()) };
    // The detail carries the upstream's own words (wrong password, no such database).
    crate::upstream::login(&db, &role, &[], None, timeout).await
}

/// Runs a simple query and returns the first column of its first row.
async fn query_one(stream: &mut UpstreamStream, sql: &str) -> Result<Option<String>, String> {
    let mut out = BytesMut::new();
    wire::frontend::FrontendMessage::Query { query: sql.to_owned() }.encode(&mut out);
    stream.write_all(&out).await.map_err(|e| e.to_string())?;
    stream.flush().await.map_err(|e| e.to_string())?;
    let mut buf = BytesMut::with_capacity(1024);
    let mut value = None;
    loop {
        let frame: Frame = loop {
            if let Some(f) = parse_frame(&mut buf, MAX_ANSWER).map_err(|e| e.to_string())? {
                break f;
            }
            if stream.read_buf(&mut buf).await.map_err(|e| e.to_string())? == 0 {
                return Err("the upstream closed the connection during the auth query".into());
            }
        };
        match frame.tag {
            b'D' if value.is_none() => value = Some(first_column(&frame.body)),
            b'E' => {
                let e = wire::ErrorResponse::decode(&frame.body).map_err(|e| e.to_string())?;
                return Err(format!("the auth query failed: {}", e.message().unwrap_or_default()));
            }
            b'Z' => return Ok(value.flatten()),
            _ => {}
        }
    }
}

/// The first column of a DataRow as text; `None` for NULL.
fn first_column(body: &[u8]) -> Option<String> {
    let len = i32::from_be_bytes(body.get(2..6)?.try_into().ok()?);
    let len = usize::try_from(len).ok()?;
    String::from_utf8(body.get(6..6 + len)?.to_vec()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_are_escaped() {
        assert_eq!(escape_literal(r"o'k\x"), r"E'o''k\\x'");
    }

    #[test]
    fn data_row_columns() {
        let mut row = vec![0, 1];
        row.extend_from_slice(&3i32.to_be_bytes());
        row.extend_from_slice(b"abc");
        assert_eq!(first_column(&row).as_deref(), Some("abc"));
        let mut null = vec![0, 1];
        null.extend_from_slice(&(-1i32).to_be_bytes());
        assert_eq!(first_column(&null), None);
        assert_eq!(first_column(&[0, 1, 0]), None);
    }
}
