//! The untagged packets a client sends before the message stream starts: StartupMessage,
//! SSLRequest, GSSENCRequest and CancelRequest. They share one layout (Int32 length, Int32
//! code) and are told apart by the code.

use bytes::{Buf, BufMut, BytesMut};

use crate::WireError;
use crate::buf::{Reader, put_cstr};

/// PostgreSQL refuses startup packets longer than this (`MAX_STARTUP_PACKET_LENGTH`).
pub const MAX_STARTUP_LEN: usize = 10_000;
pub const SSL_REQUEST_CODE: i32 = 80877103;
pub const GSSENC_REQUEST_CODE: i32 = 80877104;
pub const CANCEL_REQUEST_CODE: i32 = 80877102;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ProtocolVersion {
    pub major: u16,
    pub minor: u16,
}

impl ProtocolVersion {
    pub const V3_0: ProtocolVersion = ProtocolVersion { major: 3, minor: 0 };

    fn from_code(code: i32) -> Self {
        ProtocolVersion { major: (code as u32 >> 16) as u16, minor: code as u32 as u16 }
    }

    fn code(self) -> i32 {
        ((u32::from(self.major) << 16) | u32::from(self.minor)) as i32
    }
}

impl std::fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupMessage {
    pub version: ProtocolVersion,
    /// In the order the client sent them; names are unique.
    pub params: Vec<(String, String)>,
}

impl StartupMessage {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    pub fn user(&self) -> Option<&str> {
        self.param("user")
    }

    /// The database, defaulting to the user name as PostgreSQL does.
    pub fn database(&self) -> Option<&str> {
        self.param("database").or_else(|| self.user())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CancelRequest {
    pub pid: i32,
    pub secret: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    Startup(StartupMessage),
    SslRequest,
    GssEncRequest,
    Cancel(CancelRequest),
}

/// Reads one startup-phase packet from the front of `buf`; `None` until it is complete.
pub fn parse_startup(buf: &mut BytesMut) -> Result<Option<StartupPacket>, WireError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if len < 8 {
        return Err(WireError::InvalidLength(len.into()));
    }
    let len = len as usize;
    if len > MAX_STARTUP_LEN {
        return Err(WireError::TooLarge { len, max: MAX_STARTUP_LEN });
    }
    if buf.len() < len {
        return Ok(None);
    }
    let mut packet = buf.split_to(len);
    packet.advance(4);
    decode_startup_body(&packet).map(Some)
}

/// Decodes a startup-phase packet body: everything after the length word.
pub fn decode_startup_body(body: &[u8]) -> Result<StartupPacket, WireError> {
    let mut r = Reader::new("startup", body);
    let code = r.i32()?;
    match code {
        SSL_REQUEST_CODE => r.finish().map(|()| StartupPacket::SslRequest),
        GSSENC_REQUEST_CODE => r.finish().map(|()| StartupPacket::GssEncRequest),
        CANCEL_REQUEST_CODE => {
            let mut r = Reader::new("CancelRequest", r.rest());
            let pid = r.i32()?;
            let secret = r.i32()?;
            r.finish()?;
            Ok(StartupPacket::Cancel(CancelRequest { pid, secret }))
        }
        _ => {
            let version = ProtocolVersion::from_code(code);
            let mut r = Reader::new("StartupMessage", r.rest());
            let mut params: Vec<(String, String)> = Vec::new();
            loop {
                let name = r.cstr()?;
                if name.is_empty() {
                    break;
                }
                let value = r.cstr()?;
                if params.iter().any(|(k, _)| *k == name) {
                    return Err(WireError::malformed("StartupMessage"));
                }
                params.push((name, value));
            }
            r.finish()?;
            Ok(StartupPacket::Startup(StartupMessage { version, params }))
        }
    }
}

impl StartupPacket {
    pub fn encode(&self, buf: &mut BytesMut) {
        let at = buf.len();
        buf.put_i32(0);
        match self {
            StartupPacket::SslRequest => buf.put_i32(SSL_REQUEST_CODE),
            StartupPacket::GssEncRequest => buf.put_i32(GSSENC_REQUEST_CODE),
            StartupPacket::Cancel(c) => {
                buf.put_i32(CANCEL_REQUEST_CODE);
                buf.put_i32(c.pid);
                buf.put_i32(c.secret);
            }
            StartupPacket::Startup(m) => {
                buf.put_i32(m.version.code());
                for (k, v) in &m.params {
                    put_cstr(buf, k);
                    put_cstr(buf, v);
                }
                buf.put_u8(0);
            }
        }
        let len = (buf.len() - at) as i32;
        buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssl_request() {
        let mut buf = BytesMut::from(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f][..]);
        assert_eq!(parse_startup(&mut buf).unwrap(), Some(StartupPacket::SslRequest));
        assert!(buf.is_empty());
    }

    #[test]
    fn startup_defaults_database_to_user() {
        let m =
            StartupMessage { version: ProtocolVersion::V3_0, params: vec![("user".into(), "alice".into())] };
        let mut buf = BytesMut::new();
        StartupPacket::Startup(m.clone()).encode(&mut buf);
        let Some(StartupPacket::Startup(got)) = parse_startup(&mut buf).unwrap() else {
            panic!("not a startup message")
        };
        assert_eq!(got, m);
        assert_eq!(got.database(), Some("alice"));
    }

    #[test]
    fn rejects_huge_and_tiny_lengths_and_duplicates() {
        let mut buf = BytesMut::from(&[0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0][..]);
        assert!(matches!(parse_startup(&mut buf), Err(WireError::TooLarge { .. })));
        let mut buf = BytesMut::from(&[0, 0, 0, 4][..]);
        assert!(matches!(parse_startup(&mut buf), Err(WireError::InvalidLength(4))));
        let body = b"\0\x03\0\0user\0a\0user\0b\0\0";
        assert!(decode_startup_body(body).is_err());
        // Missing the final terminator.
        assert!(decode_startup_body(b"\0\x03\0\0user\0a\0").is_err());
    }

    #[test]
    fn version_3_2_is_reported() {
        let body = b"\0\x03\0\x02user\0a\0\0";
        let StartupPacket::Startup(m) = decode_startup_body(body).unwrap() else { panic!() };
        assert_eq!(m.version, ProtocolVersion { major: 3, minor: 2 });
    }
}
