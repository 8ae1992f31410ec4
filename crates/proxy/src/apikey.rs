//! API-key logins: the tunnel and the admin console log in with the reserved user name
//! [`API_KEY_USER`] and an API key as a cleartext password, accepted over TLS only. The proxy
//! never reads the catalog: whoever composes it hands over an [`ApiKeys`] that checks a key
//! (afresh on every login, so a revoked key is refused at once).

use std::future::Future;
use std::pin::Pin;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use wire::SqlState;
use wire::backend::{Authentication, BackendMessage};

use crate::error::{ErrorKind, SessionError};
use crate::routes::Database;

/// The user name that asks for an API-key login. Project roles are `<project>_owner` and
/// admin users are configured, so the name is free; on a proxy without an [`ApiKeys`] it is
/// an ordinary user name.
pub const API_KEY_USER: &str = "apikey";

/// The one message for a key that is unknown, revoked, of another project or organization,
/// or presented for a database that does not exist: none of these may be told apart.
const REFUSED: &str =
    "API key authentication failed: the key is invalid, revoked, or not valid for this database";

/// What a valid key grants, as the proxy needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyGrant {
    pub organization_id: String,
    /// `None` for an organization-wide key.
    pub project_id: Option<String>,
    /// Whether the key may open database sessions (it holds `credentials:read`).
    pub can_connect: bool,
    /// Whether the key may open the admin console (it holds `admin`).
    pub can_administer: bool,
}

/// Which API keys may log in to a database, and as which role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyAccess {
    pub organization_id: String,
    pub project_id: String,
    /// The role sessions run as: the project's owner.
    pub role: String,
}

pub type CheckFuture<'a> = Pin<Box<dyn Future<Output = Result<Option<KeyGrant>, String>> + Send + 'a>>;

/// Looks a presented key up. `Ok(None)` for a key that is unknown or revoked; `Err` when the
/// answer cannot be had (the catalog is down), which the client sees as `57P03`.
pub trait ApiKeys: Send + Sync + 'static {
    fn check<'a>(&'a self, key: &'a str) -> CheckFuture<'a>;
}

/// Where an API-key login leads once the key is checked.
pub(crate) enum KeyLogin {
    /// The admin console: organization-wide keys only.
    Admin,
    /// A session on `db` as this role.
    Session(String),
}

pub(crate) fn refused() -> SessionError {
    SessionError::fatal(ErrorKind::Auth, SqlState::INVALID_AUTHORIZATION_SPECIFICATION, REFUSED)
}

/// Decides what a checked key may do with `db` (`None` for the admin console).
pub(crate) fn authorize(
    grant: Option<KeyGrant>,
    db: Option<&Database>,
    admin: bool,
) -> Result<KeyLogin, SessionError> {
    let grant = grant.ok_or_else(refused)?;
    if admin {
        return match (&grant.project_id, grant.can_administer) {
            (None, true) => Ok(KeyLogin::Admin),
            (None, false) => Err(SessionError::fatal(
                ErrorKind::Auth,
                SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
                "this API key lacks the admin scope needed for the admin console",
            )),
            (Some(_), _) => Err(refused()),
        };
    }
    let access = db.and_then(|d| d.api_key_access.as_ref()).ok_or_else(refused)?;
    let same_org = grant.organization_id == access.organization_id;
    let same_project = grant.project_id.as_ref().is_none_or(|p| *p == access.project_id);
    if !same_org || !same_project {
        return Err(refused());
    }
    if !grant.can_connect {
        return Err(SessionError::fatal(
            ErrorKind::Auth,
            SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
            "this API key lacks the credentials:read scope needed to open database sessions",
        ));
    }
    Ok(KeyLogin::Session(access.role.clone()))
}

/// Asks for the key as a cleartext password and checks it. TLS is required: the key is a
/// bearer secret.
pub(crate) async fn read_and_check<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    is_tls: bool,
    keys: &dyn ApiKeys,
) -> Result<Option<KeyGrant>, SessionError> {
    if !is_tls {
        return Err(SessionError::fatal(
            ErrorKind::Auth,
            SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
            "API-key logins need an encrypted connection: connect with sslmode=require",
        ));
    }
    let mut out = BytesMut::new();
    BackendMessage::Authentication(Authentication::CleartextPassword).encode(&mut out);
    stream.write_all(&out).await?;
    stream.flush().await?;
    let mut buf = BytesMut::with_capacity(128);
    let frame = crate::auth::read_password_frame(stream, &mut buf).await?;
    let presented = wire::frontend::decode_password_message(&frame.body)
        .map_err(|_| SessionError::protocol("malformed password message"))?;
    let checked = keys.check(&presented).await;
    drop(presented);
    checked.map_err(|e| {
        tracing::warn!(error = %e, "API key check failed");
        SessionError::fatal(
            ErrorKind::Upstream,
            SqlState::CANNOT_CONNECT_NOW,
            "the API key cannot be checked right now; try again shortly",
        )
    })
}

/// Ends a successful API-key login (not flushed: the session's first messages follow).
pub(crate) async fn accept<S: AsyncWrite + Unpin>(stream: &mut S) -> Result<(), SessionError> {
    let mut out = BytesMut::new();
    BackendMessage::Authentication(Authentication::Ok).encode(&mut out);
    stream.write_all(&out).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access() -> KeyAccess {
        KeyAccess { organization_id: "org_a".into(), project_id: "proj_a".into(), role: "shop_owner".into() }
    }

    fn grant(org: &str, project: Option<&str>, can_connect: bool) -> Option<KeyGrant> {
        Some(KeyGrant {
            organization_id: org.into(),
            project_id: project.map(Into::into),
            can_connect,
            can_administer: project.is_none(),
        })
    }

    fn db() -> Database {
        let mut d = Database::for_tests("shop");
        d.api_key_access = Some(access());
        d
    }

    fn message(e: SessionError) -> String {
        let r = e.response.expect("an error response");
        r.get(b'M').unwrap_or_default().to_owned()
    }

    #[test]
    fn keys_of_the_project_and_of_its_organization_log_in_as_the_owner() {
        let d = db();
        for g in [grant("org_a", Some("proj_a"), true), grant("org_a", None, true)] {
            match authorize(g, Some(&d), false) {
                Ok(KeyLogin::Session(role)) => assert_eq!(role, "shop_owner"),
                _ => panic!("expected a session"),
            }
        }
    }

    #[test]
    fn unknown_keys_other_projects_and_unknown_databases_look_the_same() {
        let d = db();
        let cases = [
            authorize(None, Some(&d), false),
            authorize(grant("org_a", Some("proj_b"), true), Some(&d), false),
            authorize(grant("org_b", None, true), Some(&d), false),
            authorize(grant("org_a", None, true), None, false),
            authorize(grant("org_a", None, true), Some(&Database::for_tests("plain")), false),
            authorize(grant("org_a", Some("proj_a"), true), None, true),
        ];
        for c in cases {
            let Err(e) = c else { panic!("expected a refusal") };
            assert_eq!(message(e), REFUSED);
        }
    }

    #[test]
    fn the_console_needs_an_organization_key_with_the_admin_scope() {
        assert!(matches!(authorize(grant("org_a", None, true), None, true), Ok(KeyLogin::Admin)));
        let mut g = grant("org_a", None, true);
        if let Some(g) = g.as_mut() {
            g.can_administer = false;
        }
        let Err(e) = authorize(g, None, true) else { panic!("an organization key without admin") };
        assert!(message(e).contains("admin scope"));
        let mut g = grant("org_a", Some("proj_a"), true);
        if let Some(g) = g.as_mut() {
            g.can_administer = true;
        }
        assert!(authorize(g, None, true).is_err(), "a project key, whatever its scopes");
    }

    #[test]
    fn a_key_without_the_connect_scope_is_told_so() {
        let Err(e) = authorize(grant("org_a", Some("proj_a"), false), Some(&db()), false) else {
            panic!("expected a refusal");
        };
        assert!(message(e).contains("credentials:read"));
    }

    #[test]
    fn the_admin_console_takes_organization_keys() {
        assert!(matches!(authorize(grant("org_a", None, false), None, true), Ok(KeyLogin::Admin)));
    }
}
