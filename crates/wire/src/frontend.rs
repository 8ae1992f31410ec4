//! Messages a client sends after startup, named as in the protocol documentation. The relay
//! only looks at tags; these types are for the places that must understand a message
//! (authentication, pooling decisions) and for tests.

use bytes::{BufMut, Bytes, BytesMut};

use crate::buf::{Reader, count16, framed, put_cstr, put_nullable};
use crate::{Frame, WireError};

pub mod tag {
    pub const QUERY: u8 = b'Q';
    pub const PARSE: u8 = b'P';
    pub const BIND: u8 = b'B';
    pub const EXECUTE: u8 = b'E';
    pub const DESCRIBE: u8 = b'D';
    pub const CLOSE: u8 = b'C';
    pub const SYNC: u8 = b'S';
    pub const FLUSH: u8 = b'H';
    pub const TERMINATE: u8 = b'X';
    pub const COPY_DATA: u8 = b'd';
    pub const COPY_DONE: u8 = b'c';
    pub const COPY_FAIL: u8 = b'f';
    pub const FUNCTION_CALL: u8 = b'F';
    /// PasswordMessage, SASLInitialResponse, SASLResponse and GSSResponse share this tag.
    pub const PASSWORD: u8 = b'p';
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrontendMessage {
    Query {
        query: String,
    },
    Parse {
        name: String,
        query: String,
        param_types: Vec<u32>,
    },
    Bind(Bind),
    Execute {
        portal: String,
        max_rows: i32,
    },
    /// `kind` is `S` (statement) or `P` (portal).
    Describe {
        kind: u8,
        name: String,
    },
    Close {
        kind: u8,
        name: String,
    },
    Sync,
    Flush,
    Terminate,
    CopyData(Bytes),
    CopyDone,
    CopyFail {
        message: String,
    },
    FunctionCall(Bytes),
    /// The body of a `p` message; which kind it is depends on the authentication exchange.
    Password(Bytes),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    pub portal: String,
    pub statement: String,
    pub param_formats: Vec<i16>,
    pub params: Vec<Option<Bytes>>,
    pub result_formats: Vec<i16>,
}

fn describe_kind(r: &mut Reader<'_>) -> Result<u8, WireError> {
    match r.u8()? {
        k @ (b'S' | b'P') => Ok(k),
        _ => Err(WireError::malformed("Describe/Close")),
    }
}

fn empty(frame: &Frame, what: &'static str, msg: FrontendMessage) -> Result<FrontendMessage, WireError> {
    if frame.body.is_empty() { Ok(msg) } else { Err(WireError::malformed(what)) }
}

impl FrontendMessage {
    pub fn decode(frame: &Frame) -> Result<Self, WireError> {
        let body = &frame.body;
        Ok(match frame.tag {
            tag::QUERY => {
                let mut r = Reader::new("Query", body);
                let query = r.cstr()?;
                r.finish()?;
                FrontendMessage::Query { query }
            }
            tag::PARSE => {
                let mut r = Reader::new("Parse", body);
                let name = r.cstr()?;
                let query = r.cstr()?;
                let n = r.count16()?;
                let param_types = (0..n).map(|_| r.u32()).collect::<Result<_, _>>()?;
                r.finish()?;
                FrontendMessage::Parse { name, query, param_types }
            }
            tag::BIND => {
                let mut r = Reader::new("Bind", body);
                let portal = r.cstr()?;
                let statement = r.cstr()?;
                let n = r.count16()?;
                let param_formats = (0..n).map(|_| r.i16()).collect::<Result<_, _>>()?;
                let n = r.count16()?;
                let params = (0..n).map(|_| r.nullable(body)).collect::<Result<_, _>>()?;
                let n = r.count16()?;
                let result_formats = (0..n).map(|_| r.i16()).collect::<Result<_, _>>()?;
                r.finish()?;
                FrontendMessage::Bind(Bind { portal, statement, param_formats, params, result_formats })
            }
            tag::EXECUTE => {
                let mut r = Reader::new("Execute", body);
                let portal = r.cstr()?;
                let max_rows = r.i32()?;
                r.finish()?;
                FrontendMessage::Execute { portal, max_rows }
            }
            tag::DESCRIBE | tag::CLOSE => {
                let mut r = Reader::new("Describe/Close", body);
                let kind = describe_kind(&mut r)?;
                let name = r.cstr()?;
                r.finish()?;
                if frame.tag == tag::DESCRIBE {
                    FrontendMessage::Describe { kind, name }
                } else {
                    FrontendMessage::Close { kind, name }
                }
            }
            tag::SYNC => return empty(frame, "Sync", FrontendMessage::Sync),
            tag::FLUSH => return empty(frame, "Flush", FrontendMessage::Flush),
            tag::TERMINATE => return empty(frame, "Terminate", FrontendMessage::Terminate),
            tag::COPY_DONE => return empty(frame, "CopyDone", FrontendMessage::CopyDone),
            tag::COPY_DATA => FrontendMessage::CopyData(body.clone()),
            tag::COPY_FAIL => {
                let mut r = Reader::new("CopyFail", body);
                let message = r.cstr()?;
                r.finish()?;
                FrontendMessage::CopyFail { message }
            }
            tag::FUNCTION_CALL => FrontendMessage::FunctionCall(body.clone()),
            tag::PASSWORD => FrontendMessage::Password(body.clone()),
            other => return Err(WireError::UnexpectedTag(other as char)),
        })
    }

    pub fn encode(&self, buf: &mut BytesMut) {
        match self {
            FrontendMessage::Query { query } => framed(buf, tag::QUERY, |b| put_cstr(b, query)),
            FrontendMessage::Parse { name, query, param_types } => framed(buf, tag::PARSE, |b| {
                put_cstr(b, name);
                put_cstr(b, query);
                b.put_u16(count16(param_types.len()));
                param_types.iter().for_each(|t| b.put_u32(*t));
            }),
            FrontendMessage::Bind(bind) => framed(buf, tag::BIND, |b| {
                put_cstr(b, &bind.portal);
                put_cstr(b, &bind.statement);
                b.put_u16(count16(bind.param_formats.len()));
                bind.param_formats.iter().for_each(|f| b.put_i16(*f));
                b.put_u16(count16(bind.params.len()));
                bind.params.iter().for_each(|p| put_nullable(b, p));
                b.put_u16(count16(bind.result_formats.len()));
                bind.result_formats.iter().for_each(|f| b.put_i16(*f));
            }),
            FrontendMessage::Execute { portal, max_rows } => framed(buf, tag::EXECUTE, |b| {
                put_cstr(b, portal);
                b.put_i32(*max_rows);
            }),
            FrontendMessage::Describe { kind, name } => framed(buf, tag::DESCRIBE, |b| {
                b.put_u8(*kind);
                put_cstr(b, name);
            }),
            FrontendMessage::Close { kind, name } => framed(buf, tag::CLOSE, |b| {
                b.put_u8(*kind);
                put_cstr(b, name);
            }),
            FrontendMessage::Sync => framed(buf, tag::SYNC, |_| {}),
            FrontendMessage::Flush => framed(buf, tag::FLUSH, |_| {}),
            FrontendMessage::Terminate => framed(buf, tag::TERMINATE, |_| {}),
            FrontendMessage::CopyData(d) => framed(buf, tag::COPY_DATA, |b| b.put_slice(d)),
            FrontendMessage::CopyDone => framed(buf, tag::COPY_DONE, |_| {}),
            FrontendMessage::CopyFail { message } => framed(buf, tag::COPY_FAIL, |b| put_cstr(b, message)),
            FrontendMessage::FunctionCall(d) => framed(buf, tag::FUNCTION_CALL, |b| b.put_slice(d)),
            FrontendMessage::Password(d) => framed(buf, tag::PASSWORD, |b| b.put_slice(d)),
        }
    }
}

/// The first `p` message of a SASL exchange: the chosen mechanism and the client's first
/// message (absent when the length is -1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaslInitialResponse {
    pub mechanism: String,
    pub data: Option<Bytes>,
}

impl SaslInitialResponse {
    pub fn decode(body: &Bytes) -> Result<Self, WireError> {
        let mut r = Reader::new("SASLInitialResponse", body);
        let mechanism = r.cstr()?;
        let data = r.nullable(body)?;
        r.finish()?;
        Ok(SaslInitialResponse { mechanism, data })
    }

    pub fn encode(&self, buf: &mut BytesMut) {
        framed(buf, tag::PASSWORD, |b| {
            put_cstr(b, &self.mechanism);
            put_nullable(b, &self.data);
        })
    }
}

/// A cleartext PasswordMessage body: the password as a C string.
pub fn decode_password_message(body: &[u8]) -> Result<String, WireError> {
    let mut r = Reader::new("PasswordMessage", body);
    let pw = r.cstr()?;
    r.finish()?;
    Ok(pw)
}

pub fn encode_password_message(buf: &mut BytesMut, password: &str) {
    framed(buf, tag::PASSWORD, |b| put_cstr(b, password))
}

/// Messages that make the server answer with ReadyForQuery: the end of one round trip.
pub fn ends_round_trip(tag: u8) -> bool {
    matches!(tag, tag::QUERY | tag::SYNC | tag::FUNCTION_CALL)
}
