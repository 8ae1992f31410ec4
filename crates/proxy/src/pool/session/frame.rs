//! Small pieces of the wire the session needs and the wire crate does not own: fields of a
//! Parse body, C strings, the error for a bad frame or a duplicate statement name, and the
//! fixed ParseComplete and CloseComplete frames the proxy answers with itself.

use wire::{ErrorResponse, SqlState, WireError};

pub(super) const PARSE_COMPLETE: &[u8] = &[b'1', 0, 0, 0, 4];
pub(super) const CLOSE_COMPLETE: &[u8] = &[b'3', 0, 0, 0, 4];

/// A Parse body: statement name, query text, parameter types.
pub(super) fn parse_fields(body: &[u8]) -> Option<(&[u8], &str, Vec<u32>)> {
    let (name, at) = cstr(body, 0)?;
    let (query, at) = cstr(body, at)?;
    let n = u16::from_be_bytes(body.get(at..at + 2)?.try_into().ok()?) as usize;
    let types: Option<Vec<u32>> = (0..n)
        .map(|i| {
            body.get(at + 2 + 4 * i..at + 6 + 4 * i).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        })
        .collect();
    Some((name, std::str::from_utf8(query).ok()?, types?))
}

pub(super) fn duplicate_statement(name: &str) -> ErrorResponse {
    ErrorResponse::error(
        SqlState::from_code("42P05").expect("valid code"),
        format!("prepared statement \"{name}\" already exists"),
    )
}

/// The C string starting at `at`: its bytes and the offset just after its terminator.
pub(super) fn cstr(buf: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let rest = buf.get(at..)?;
    let end = rest.iter().position(|&b| b == 0)?;
    Some((&rest[..end], at + end + 1))
}

pub(super) fn framing_error(e: WireError) -> ErrorResponse {
    match e {
        WireError::TooLarge { len, max } => ErrorResponse::fatal(
            SqlState::PROTOCOL_VIOLATION,
            format!("message of {len} bytes exceeds the limit of {max} bytes"),
        ),
        other => ErrorResponse::fatal(SqlState::PROTOCOL_VIOLATION, format!("invalid message: {other}")),
    }
}
