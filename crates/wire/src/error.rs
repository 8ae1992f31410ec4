//! Decoding errors. Every variant describes what the peer sent; none carries message bodies,
//! which may hold secrets (passwords travel in `p` messages).

use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum WireError {
    #[error("invalid message length {0}")]
    InvalidLength(i64),
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("malformed {what} message")]
    Malformed { what: &'static str },
    #[error("unexpected message type {0:?}")]
    UnexpectedTag(char),
}

impl WireError {
    pub(crate) fn malformed(what: &'static str) -> Self {
        WireError::Malformed { what }
    }
}
