//! Errors of a client session, with two faces: a `kind` that logs and metrics count, and the
//! ErrorResponse the client may see. Internal details (paths, upstream addresses, I/O
//! errors) stay in the log; the client gets PostgreSQL's own wording and SQLSTATE.

use wire::{ErrorResponse, SqlState};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The client broke the protocol.
    Protocol,
    /// Authentication failed (or the database/role is unknown: indistinguishable on purpose).
    Auth,
    /// TLS was required but not used, or the TLS handshake failed.
    Tls,
    /// A configured limit was reached.
    Limit,
    /// The upstream could not be reached or refused us.
    Upstream,
    /// The client went away.
    Disconnect,
    /// The password was right but the database named is not served there (`3D000`).
    Routing,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Protocol => "protocol",
            ErrorKind::Auth => "auth",
            ErrorKind::Tls => "tls",
            ErrorKind::Limit => "limit",
            ErrorKind::Upstream => "upstream",
            ErrorKind::Disconnect => "disconnect",
            ErrorKind::Routing => "routing",
        }
    }
}

/// A session-ending error: what to log, and what (if anything) to tell the client.
#[derive(Debug)]
pub struct SessionError {
    pub kind: ErrorKind,
    /// For the log only.
    pub detail: String,
    /// Sent to the client before closing, when the stream is still usable.
    pub response: Option<ErrorResponse>,
}

impl SessionError {
    pub fn new(kind: ErrorKind, detail: impl Into<String>, response: Option<ErrorResponse>) -> Self {
        SessionError { kind, detail: detail.into(), response }
    }

    pub fn fatal(kind: ErrorKind, code: SqlState, message: impl Into<String>) -> Self {
        let message = message.into();
        SessionError { kind, detail: message.clone(), response: Some(ErrorResponse::fatal(code, message)) }
    }

    pub fn protocol(message: impl Into<String>) -> Self {
        Self::fatal(ErrorKind::Protocol, SqlState::PROTOCOL_VIOLATION, message)
    }

    pub fn disconnect(detail: impl Into<String>) -> Self {
        SessionError { kind: ErrorKind::Disconnect, detail: detail.into(), response: None }
    }

    /// The failure every authentication problem looks like to the client.
    pub fn auth_failed(user: &str, detail: impl Into<String>) -> Self {
        SessionError {
            kind: ErrorKind::Auth,
            detail: detail.into(),
            response: Some(ErrorResponse::fatal(
                SqlState::INVALID_PASSWORD,
                format!("password authentication failed for user \"{user}\""),
            )),
        }
    }
}

impl From<std::io::Error> for SessionError {
    fn from(e: std::io::Error) -> Self {
        SessionError::disconnect(e.to_string())
    }
}
