//! SCRAM-SHA-256 (RFC 5802, RFC 7677) and its channel-bound variant SCRAM-SHA-256-PLUS with
//! `tls-server-end-point`, as PostgreSQL speaks them. Two state machines with no I/O: the
//! server side verifies a client against a `pg_authid`-format verifier (or a fake one, so an
//! unknown user cannot be told from a wrong password), the client side logs in to a server.
//! Secrets never appear in `Debug` output or errors.

mod attrs;
mod client;
mod crypto;
mod server;
mod verifier;

pub use client::{DerivedKeys, KeyDerivation, MAX_ITERATIONS, ScramClient};
pub use server::ScramServer;
pub use verifier::{DEFAULT_ITERATIONS, SALT_LEN, ScramVerifier};

use thiserror::Error;

pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";
pub const SCRAM_SHA_256_PLUS: &str = "SCRAM-SHA-256-PLUS";

/// Channel binding data available on a connection.
#[derive(Clone, PartialEq, Eq)]
pub enum ChannelBinding {
    /// No TLS, or the caller chose not to bind.
    None,
    /// `tls-server-end-point`: the hash of the server's certificate (RFC 5929).
    TlsServerEndPoint(Vec<u8>),
}

impl std::fmt::Debug for ChannelBinding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChannelBinding::None => f.write_str("None"),
            ChannelBinding::TlsServerEndPoint(_) => f.write_str("TlsServerEndPoint(..)"),
        }
    }
}

impl ChannelBinding {
    /// `tls-server-end-point` for a certificate signed with SHA-256 or SHA-1 (or a
    /// signature whose hash is not otherwise named): its SHA-256 digest. Certificates signed
    /// with SHA-384/512 are hashed with those; Berth's own certificates use SHA-256.
    pub fn tls_server_end_point(cert_der: &[u8]) -> Self {
        use sha2::Digest;
        ChannelBinding::TlsServerEndPoint(sha2::Sha256::digest(cert_der).to_vec())
    }
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ScramError {
    #[error("malformed SCRAM message")]
    Malformed,
    #[error("unsupported SASL mechanism")]
    UnsupportedMechanism,
    #[error("channel binding is not supported on this connection")]
    ChannelBindingUnsupported,
    #[error("channel binding check failed")]
    ChannelBindingMismatch,
    #[error("client asserted channel binding is unsupported while the server offers it")]
    ChannelBindingDowngrade,
    #[error("authorization identities are not supported")]
    AuthzidUnsupported,
    #[error("nonce mismatch")]
    NonceMismatch,
    #[error("invalid proof")]
    InvalidProof,
    #[error("server signature mismatch")]
    ServerSignatureMismatch,
    #[error("server reported error: {0}")]
    ServerError(String),
    #[error("server asks for {0} iterations, more than the proxy allows")]
    TooManyIterations(u32),
    #[error("invalid SCRAM verifier")]
    InvalidVerifier,
    #[error("message out of order")]
    OutOfOrder,
}
