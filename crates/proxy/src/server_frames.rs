//! What the proxy demands of the server messages it reads whole before acting on them,
//! ReadyForQuery and ErrorResponse, on both ports. A registered upstream is the tenant's, and
//! anything may answer on its port: a message that breaks these rules ends that session with
//! 08P01 and its server is closed, never pooled. Nothing here indexes a frame it has not
//! checked, and nothing waits for more of a message than these bounds allow.

use wire::backend::TransactionStatus;
use wire::{ErrorResponse, SqlState, WireError};

/// ErrorResponse bodies up to this size are read whole: to count them by SQLSTATE class, to
/// notice a server shutting down, to reword the cancel of a query timeout. PostgreSQL's own
/// are a few hundred bytes, but `RAISE EXCEPTION` makes them as large as a tenant likes, so a
/// larger one is passed on as it arrives, like a large DataRow, and not looked at.
pub(crate) const MAX_INSPECTED_ERROR: usize = 1 << 20;

/// ReadyForQuery's body is its transaction status, one byte.
const READY_FOR_QUERY_BODY: usize = 1;

/// How a server message is handled, from its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Handling {
    /// Wait until it is whole, then look at it.
    Whole,
    /// Pass it on as it arrives.
    Stream,
}

/// A server message the proxy refuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Invalid {
    /// The header itself is broken (a length below 4).
    Framing(String),
    ReadyForQueryLength(usize),
    UnknownTransactionStatus,
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Invalid::Framing(e) => write!(f, "{e}"),
            Invalid::ReadyForQueryLength(len) => {
                write!(f, "a ReadyForQuery of {len} bytes where it has {READY_FOR_QUERY_BODY}")
            }
            Invalid::UnknownTransactionStatus => {
                f.write_str("a ReadyForQuery with an unknown transaction status")
            }
        }
    }
}

impl From<WireError> for Invalid {
    fn from(e: WireError) -> Self {
        Invalid::Framing(e.to_string())
    }
}

/// Decides from a message's header how to handle it, or refuses it.
pub(crate) fn handling(tag: u8, body_len: usize) -> Result<Handling, Invalid> {
    match tag {
        wire::backend::tag::READY_FOR_QUERY if body_len != READY_FOR_QUERY_BODY => {
            Err(Invalid::ReadyForQueryLength(body_len))
        }
        wire::backend::tag::READY_FOR_QUERY => Ok(Handling::Whole),
        wire::backend::tag::ERROR_RESPONSE if body_len <= MAX_INSPECTED_ERROR => Ok(Handling::Whole),
        _ => Ok(Handling::Stream),
    }
}

/// The status of a whole ReadyForQuery body.
pub(crate) fn ready_status(body: &[u8]) -> Result<TransactionStatus, Invalid> {
    match body {
        [b] => TransactionStatus::from_byte(*b).ok_or(Invalid::UnknownTransactionStatus),
        _ => Err(Invalid::ReadyForQueryLength(body.len())),
    }
}

/// What the client is told when its server broke the protocol. In Berth's words: nothing
/// the server sent is echoed.
pub(crate) fn protocol_violation(what: &Invalid) -> ErrorResponse {
    ErrorResponse::fatal(
        SqlState::PROTOCOL_VIOLATION,
        format!("the server sent an invalid message ({what}); the connection to it was closed"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::backend::tag;

    #[test]
    fn ready_for_query_is_exactly_one_known_status_byte() {
        assert_eq!(handling(tag::READY_FOR_QUERY, 1), Ok(Handling::Whole));
        for len in [0, 2, 1 << 30] {
            assert_eq!(handling(tag::READY_FOR_QUERY, len), Err(Invalid::ReadyForQueryLength(len)));
        }
        assert_eq!(ready_status(b"T"), Ok(TransactionStatus::InTransaction));
        assert_eq!(ready_status(b"X"), Err(Invalid::UnknownTransactionStatus));
        assert_eq!(ready_status(b""), Err(Invalid::ReadyForQueryLength(0)));
    }

    #[test]
    fn only_bounded_errors_are_read_whole() {
        assert_eq!(handling(tag::ERROR_RESPONSE, MAX_INSPECTED_ERROR), Ok(Handling::Whole));
        assert_eq!(handling(tag::ERROR_RESPONSE, MAX_INSPECTED_ERROR + 1), Ok(Handling::Stream));
        assert_eq!(handling(tag::NOTICE_RESPONSE, usize::MAX), Ok(Handling::Stream));
        assert_eq!(handling(tag::DATA_ROW, 1 << 30), Ok(Handling::Stream));
    }

    #[test]
    fn the_clients_error_names_the_fault_not_the_bytes() {
        let e = protocol_violation(&Invalid::UnknownTransactionStatus);
        assert_eq!(e.code(), Some(SqlState::PROTOCOL_VIOLATION));
        assert_eq!(e.severity(), Some("FATAL"));
        assert!(e.message().unwrap().starts_with("the server sent an invalid message"));
    }
}
