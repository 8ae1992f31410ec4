//! ErrorResponse and NoticeResponse bodies: typed fields kept in the order received so a
//! message decoded and encoded again is byte-identical, plus builders for the errors Berth
//! raises itself.

use bytes::{BufMut, BytesMut};

use crate::buf::{Reader, put_cstr};
use crate::{SqlState, WireError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Fatal,
    Panic,
    Warning,
    Notice,
    Debug,
    Info,
    Log,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
            Severity::Panic => "PANIC",
            Severity::Warning => "WARNING",
            Severity::Notice => "NOTICE",
            Severity::Debug => "DEBUG",
            Severity::Info => "INFO",
            Severity::Log => "LOG",
        }
    }
}

/// The fields of an ErrorResponse or NoticeResponse.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ErrorResponse {
    pub fields: Vec<(u8, String)>,
}

impl ErrorResponse {
    pub fn new(severity: Severity, code: SqlState, message: impl Into<String>) -> Self {
        ErrorResponse {
            fields: vec![
                (b'S', severity.as_str().to_owned()),
                (b'V', severity.as_str().to_owned()),
                (b'C', code.code().to_owned()),
                (b'M', message.into()),
            ],
        }
    }

    pub fn fatal(code: SqlState, message: impl Into<String>) -> Self {
        Self::new(Severity::Fatal, code, message)
    }

    pub fn error(code: SqlState, message: impl Into<String>) -> Self {
        Self::new(Severity::Error, code, message)
    }

    pub fn with_detail(self, detail: impl Into<String>) -> Self {
        self.with_field(b'D', detail)
    }

    pub fn with_hint(self, hint: impl Into<String>) -> Self {
        self.with_field(b'H', hint)
    }

    pub fn with_field(mut self, field: u8, value: impl Into<String>) -> Self {
        self.set(field, value.into());
        self
    }

    pub fn get(&self, field: u8) -> Option<&str> {
        self.fields.iter().find(|(k, _)| *k == field).map(|(_, v)| v.as_str())
    }

    pub fn set(&mut self, field: u8, value: String) {
        match self.fields.iter_mut().find(|(k, _)| *k == field) {
            Some(slot) => slot.1 = value,
            None => self.fields.push((field, value)),
        }
    }

    pub fn code(&self) -> Option<SqlState> {
        self.get(b'C').and_then(SqlState::from_code)
    }

    pub fn message(&self) -> Option<&str> {
        self.get(b'M')
    }

    /// The non-localized severity when present (`V`), otherwise `S`.
    pub fn severity(&self) -> Option<&str> {
        self.get(b'V').or_else(|| self.get(b'S'))
    }

    pub fn decode(body: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new("ErrorResponse", body);
        let mut fields = Vec::new();
        loop {
            let kind = r.u8()?;
            if kind == 0 {
                break;
            }
            fields.push((kind, r.cstr()?));
        }
        r.finish()?;
        Ok(ErrorResponse { fields })
    }

    pub fn encode_body(&self, buf: &mut BytesMut) {
        for (k, v) in &self.fields {
            buf.put_u8(*k);
            put_cstr(buf, v);
        }
        buf.put_u8(0);
    }

    /// The whole message with tag `E`.
    pub fn to_error_message(&self) -> BytesMut {
        let mut buf = BytesMut::new();
        crate::buf::framed(&mut buf, b'E', |b| self.encode_body(b));
        buf
    }

    /// The whole message with tag `N`.
    pub fn to_notice_message(&self) -> BytesMut {
        let mut buf = BytesMut::new();
        crate::buf::framed(&mut buf, b'N', |b| self.encode_body(b));
        buf
    }
}

impl std::fmt::Display for ErrorResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} ({})",
            self.severity().unwrap_or("ERROR"),
            self.message().unwrap_or(""),
            self.get(b'C').unwrap_or("?????")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_round_trip() {
        let e =
            ErrorResponse::fatal(SqlState::TOO_MANY_CONNECTIONS, "too many").with_detail("d").with_hint("h");
        let msg = e.to_error_message();
        assert_eq!(msg[0], b'E');
        let back = ErrorResponse::decode(&msg[5..]).unwrap();
        assert_eq!(back, e);
        assert_eq!(back.code(), Some(SqlState::TOO_MANY_CONNECTIONS));
        assert_eq!(back.severity(), Some("FATAL"));
    }

    #[test]
    fn truncated_is_an_error() {
        assert!(ErrorResponse::decode(b"SERROR\0").is_err());
        assert!(ErrorResponse::decode(b"SERR").is_err());
    }
}
