//! Which password exchanges the proxy answers for a registered upstream. The registration
//! check records the method the upstream asked for; at every later login a request for a
//! weaker one (an MD5 or cleartext request from an upstream registered for SCRAM, a
//! cleartext one from an upstream registered for MD5) is refused before any byte derived
//! from the password is sent, since it means a changed `pg_hba.conf` or another server at
//! the address. A cleartext request is never answered over unencrypted TCP: anyone on the
//! path would read the password. This module decides; it never writes to the wire.

use wire::backend::Authentication;

/// A password exchange, weakest first: the order is what "downgrade" means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AuthMethod {
    /// `password` in pg_hba.conf: the password itself.
    Password,
    /// `md5`: a salted hash, which a recording of one exchange lets anyone brute-force.
    Md5,
    /// `scram-sha-256`: proves the password without revealing it, and the server proves it too.
    ScramSha256,
}

impl AuthMethod {
    /// As pg_hba.conf spells it (and the catalog stores it).
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Password => "password",
            AuthMethod::Md5 => "md5",
            AuthMethod::ScramSha256 => "scram-sha-256",
        }
    }

    pub fn parse(s: &str) -> Option<AuthMethod> {
        Some(match s {
            "password" => AuthMethod::Password,
            "md5" => AuthMethod::Md5,
            "scram-sha-256" => AuthMethod::ScramSha256,
            _ => return None,
        })
    }

    /// The method an upstream's request opens; `None` for the messages that continue one
    /// (and for `AuthenticationOk`).
    pub fn requested(auth: &Authentication) -> Option<AuthMethod> {
        match auth {
            Authentication::CleartextPassword => Some(AuthMethod::Password),
            Authentication::Md5Password { .. } => Some(AuthMethod::Md5),
            Authentication::Sasl { .. } => Some(AuthMethod::ScramSha256),
            Authentication::Ok | Authentication::SaslContinue(_) | Authentication::SaslFinal(_) => None,
        }
    }
}

impl std::fmt::Display for AuthMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a registered upstream's request for `asked` must not be answered, or `None` when it
/// may be. `registered` is what the registration check saw (`None` for registrations made
/// before it was recorded: no floor but the transport rule); `encrypted` says whether the
/// password would travel inside TLS or a local socket.
pub fn refusal(asked: AuthMethod, registered: Option<AuthMethod>, encrypted: bool) -> Option<String> {
    if let Some(floor) = registered
        && asked < floor
    {
        return Some(format!(
            "the upstream asked for {asked} authentication but was registered with {floor}; Berth \
             does not answer a weaker request (a changed pg_hba.conf, or another server at its address)"
        ));
    }
    if asked == AuthMethod::Password && !encrypted {
        return Some(
            "the upstream asked for the password in clear text over an unencrypted connection; \
             use ssl_mode require or verify-full, or scram-sha-256 in its pg_hba.conf"
                .into(),
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weaker_requests_than_the_registered_one_are_refused() {
        use AuthMethod::*;
        for (asked, registered, refused) in [
            (Password, Some(ScramSha256), true),
            (Md5, Some(ScramSha256), true),
            (ScramSha256, Some(ScramSha256), false),
            (Password, Some(Md5), true),
            (Md5, Some(Md5), false),
            // A stronger one than registered is fine (the tenant moved to SCRAM).
            (ScramSha256, Some(Md5), false),
            (Md5, Some(Password), false),
            (Md5, None, false),
        ] {
            assert_eq!(refusal(asked, registered, true).is_some(), refused, "{asked} after {registered:?}");
        }
    }

    #[test]
    fn cleartext_is_answered_only_inside_encryption() {
        assert!(refusal(AuthMethod::Password, Some(AuthMethod::Password), false).is_some());
        assert!(refusal(AuthMethod::Password, None, false).is_some());
        assert!(refusal(AuthMethod::Password, Some(AuthMethod::Password), true).is_none());
        assert!(refusal(AuthMethod::Md5, Some(AuthMethod::Md5), false).is_none());
    }

    #[test]
    fn names_are_pg_hba_confs() {
        for m in [AuthMethod::Password, AuthMethod::Md5, AuthMethod::ScramSha256] {
            assert_eq!(AuthMethod::parse(m.as_str()), Some(m));
        }
        assert_eq!(AuthMethod::parse("trust"), None);
    }
}
