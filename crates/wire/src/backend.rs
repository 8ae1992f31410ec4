//! Messages a server sends, named as in the protocol documentation. The relay passes most of
//! them through as bytes; these types serve authentication, the proxy's own replies, and
//! tests.

use bytes::{BufMut, Bytes, BytesMut};

use crate::buf::{Reader, count16, framed, put_cstr, put_nullable};
use crate::{ErrorResponse, Frame, WireError};

pub mod tag {
    pub const AUTHENTICATION: u8 = b'R';
    pub const BACKEND_KEY_DATA: u8 = b'K';
    pub const PARAMETER_STATUS: u8 = b'S';
    pub const READY_FOR_QUERY: u8 = b'Z';
    pub const ERROR_RESPONSE: u8 = b'E';
    pub const NOTICE_RESPONSE: u8 = b'N';
    pub const NEGOTIATE_PROTOCOL_VERSION: u8 = b'v';
    pub const COMMAND_COMPLETE: u8 = b'C';
    pub const PARSE_COMPLETE: u8 = b'1';
    pub const BIND_COMPLETE: u8 = b'2';
    pub const CLOSE_COMPLETE: u8 = b'3';
    pub const NO_DATA: u8 = b'n';
    pub const PORTAL_SUSPENDED: u8 = b's';
    pub const EMPTY_QUERY_RESPONSE: u8 = b'I';
    pub const PARAMETER_DESCRIPTION: u8 = b't';
    pub const ROW_DESCRIPTION: u8 = b'T';
    pub const DATA_ROW: u8 = b'D';
    pub const COPY_IN_RESPONSE: u8 = b'G';
    pub const COPY_OUT_RESPONSE: u8 = b'H';
    pub const COPY_BOTH_RESPONSE: u8 = b'W';
    pub const COPY_DATA: u8 = b'd';
    pub const COPY_DONE: u8 = b'c';
    pub const NOTIFICATION_RESPONSE: u8 = b'A';
    pub const FUNCTION_CALL_RESPONSE: u8 = b'V';
}

/// Transaction status carried by ReadyForQuery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransactionStatus {
    Idle,
    InTransaction,
    Failed,
}

impl TransactionStatus {
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            b'I' => Some(TransactionStatus::Idle),
            b'T' => Some(TransactionStatus::InTransaction),
            b'E' => Some(TransactionStatus::Failed),
            _ => None,
        }
    }

    pub fn as_byte(self) -> u8 {
        match self {
            TransactionStatus::Idle => b'I',
            TransactionStatus::InTransaction => b'T',
            TransactionStatus::Failed => b'E',
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authentication {
    Ok,
    CleartextPassword,
    Md5Password { salt: [u8; 4] },
    Sasl { mechanisms: Vec<String> },
    SaslContinue(Bytes),
    SaslFinal(Bytes),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldDescription {
    pub name: String,
    pub table_oid: u32,
    pub column: i16,
    pub type_oid: u32,
    pub type_size: i16,
    pub type_modifier: i32,
    pub format: i16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendMessage {
    Authentication(Authentication),
    BackendKeyData { pid: i32, secret: i32 },
    ParameterStatus { name: String, value: String },
    ReadyForQuery(TransactionStatus),
    ErrorResponse(ErrorResponse),
    NoticeResponse(ErrorResponse),
    NegotiateProtocolVersion { newest_minor: i32, unrecognized: Vec<String> },
    CommandComplete { tag: String },
    ParseComplete,
    BindComplete,
    CloseComplete,
    NoData,
    PortalSuspended,
    EmptyQueryResponse,
    ParameterDescription { types: Vec<u32> },
    RowDescription { fields: Vec<FieldDescription> },
    DataRow { values: Vec<Option<Bytes>> },
    CopyInResponse { format: u8, column_formats: Vec<i16> },
    CopyOutResponse { format: u8, column_formats: Vec<i16> },
    CopyBothResponse { format: u8, column_formats: Vec<i16> },
    CopyData(Bytes),
    CopyDone,
    NotificationResponse { pid: i32, channel: String, payload: String },
    FunctionCallResponse(Option<Bytes>),
}

fn copy_response(r: &mut Reader<'_>) -> Result<(u8, Vec<i16>), WireError> {
    let format = r.u8()?;
    let n = r.count16()?;
    let cols = (0..n).map(|_| r.i16()).collect::<Result<_, _>>()?;
    r.finish()?;
    Ok((format, cols))
}

impl BackendMessage {
    pub fn decode(frame: &Frame) -> Result<Self, WireError> {
        let body = &frame.body;
        let no_body = |msg: BackendMessage, what| {
            if body.is_empty() { Ok(msg) } else { Err(WireError::malformed(what)) }
        };
        Ok(match frame.tag {
            tag::AUTHENTICATION => {
                let mut r = Reader::new("Authentication", body);
                let auth = match r.i32()? {
                    0 => Authentication::Ok,
                    3 => Authentication::CleartextPassword,
                    5 => {
                        let s = r.bytes(4)?;
                        Authentication::Md5Password { salt: [s[0], s[1], s[2], s[3]] }
                    }
                    10 => {
                        let mut mechanisms = Vec::new();
                        loop {
                            let m = r.cstr()?;
                            if m.is_empty() {
                                break;
                            }
                            mechanisms.push(m);
                        }
                        Authentication::Sasl { mechanisms }
                    }
                    11 => Authentication::SaslContinue(body.slice(4..)),
                    12 => Authentication::SaslFinal(body.slice(4..)),
                    _ => return Err(WireError::malformed("Authentication")),
                };
                if matches!(auth, Authentication::SaslContinue(_) | Authentication::SaslFinal(_)) {
                    r.rest();
                }
                r.finish()?;
                BackendMessage::Authentication(auth)
            }
            tag::BACKEND_KEY_DATA => {
                let mut r = Reader::new("BackendKeyData", body);
                let pid = r.i32()?;
                let secret = r.i32()?;
                r.finish()?;
                BackendMessage::BackendKeyData { pid, secret }
            }
            tag::PARAMETER_STATUS => {
                let mut r = Reader::new("ParameterStatus", body);
                let name = r.cstr()?;
                let value = r.cstr()?;
                r.finish()?;
                BackendMessage::ParameterStatus { name, value }
            }
            tag::READY_FOR_QUERY => {
                let mut r = Reader::new("ReadyForQuery", body);
                let status = TransactionStatus::from_byte(r.u8()?)
                    .ok_or_else(|| WireError::malformed("ReadyForQuery"))?;
                r.finish()?;
                BackendMessage::ReadyForQuery(status)
            }
            tag::ERROR_RESPONSE => BackendMessage::ErrorResponse(ErrorResponse::decode(body)?),
            tag::NOTICE_RESPONSE => BackendMessage::NoticeResponse(ErrorResponse::decode(body)?),
            tag::NEGOTIATE_PROTOCOL_VERSION => {
                let mut r = Reader::new("NegotiateProtocolVersion", body);
                let newest_minor = r.i32()?;
                let n = usize::try_from(r.i32()?)
                    .map_err(|_| WireError::malformed("NegotiateProtocolVersion"))?;
                if n > r.remaining() {
                    return Err(WireError::malformed("NegotiateProtocolVersion"));
                }
                let unrecognized = (0..n).map(|_| r.cstr()).collect::<Result<_, _>>()?;
                r.finish()?;
                BackendMessage::NegotiateProtocolVersion { newest_minor, unrecognized }
            }
            tag::COMMAND_COMPLETE => {
                let mut r = Reader::new("CommandComplete", body);
                let tag = r.cstr()?;
                r.finish()?;
                BackendMessage::CommandComplete { tag }
            }
            tag::PARSE_COMPLETE => no_body(BackendMessage::ParseComplete, "ParseComplete")?,
            tag::BIND_COMPLETE => no_body(BackendMessage::BindComplete, "BindComplete")?,
            tag::CLOSE_COMPLETE => no_body(BackendMessage::CloseComplete, "CloseComplete")?,
            tag::NO_DATA => no_body(BackendMessage::NoData, "NoData")?,
            tag::PORTAL_SUSPENDED => no_body(BackendMessage::PortalSuspended, "PortalSuspended")?,
            tag::EMPTY_QUERY_RESPONSE => no_body(BackendMessage::EmptyQueryResponse, "EmptyQueryResponse")?,
            tag::COPY_DONE => no_body(BackendMessage::CopyDone, "CopyDone")?,
            tag::PARAMETER_DESCRIPTION => {
                let mut r = Reader::new("ParameterDescription", body);
                let n = r.count16()?;
                let types = (0..n).map(|_| r.u32()).collect::<Result<_, _>>()?;
                r.finish()?;
                BackendMessage::ParameterDescription { types }
            }
            tag::ROW_DESCRIPTION => {
                let mut r = Reader::new("RowDescription", body);
                let n = r.count16()?;
                let mut fields = Vec::with_capacity(n.min(r.remaining() / 19));
                for _ in 0..n {
                    fields.push(FieldDescription {
                        name: r.cstr()?,
                        table_oid: r.u32()?,
                        column: r.i16()?,
                        type_oid: r.u32()?,
                        type_size: r.i16()?,
                        type_modifier: r.i32()?,
                        format: r.i16()?,
                    });
                }
                r.finish()?;
                BackendMessage::RowDescription { fields }
            }
            tag::DATA_ROW => {
                let mut r = Reader::new("DataRow", body);
                let n = r.count16()?;
                let mut values = Vec::with_capacity(n.min(r.remaining() / 4));
                for _ in 0..n {
                    values.push(r.nullable(body)?);
                }
                r.finish()?;
                BackendMessage::DataRow { values }
            }
            tag::COPY_IN_RESPONSE | tag::COPY_OUT_RESPONSE | tag::COPY_BOTH_RESPONSE => {
                let mut r = Reader::new("CopyResponse", body);
                let (format, column_formats) = copy_response(&mut r)?;
                match frame.tag {
                    tag::COPY_IN_RESPONSE => BackendMessage::CopyInResponse { format, column_formats },
                    tag::COPY_OUT_RESPONSE => BackendMessage::CopyOutResponse { format, column_formats },
                    _ => BackendMessage::CopyBothResponse { format, column_formats },
                }
            }
            tag::COPY_DATA => BackendMessage::CopyData(body.clone()),
            tag::NOTIFICATION_RESPONSE => {
                let mut r = Reader::new("NotificationResponse", body);
                let pid = r.i32()?;
                let channel = r.cstr()?;
                let payload = r.cstr()?;
                r.finish()?;
                BackendMessage::NotificationResponse { pid, channel, payload }
            }
            tag::FUNCTION_CALL_RESPONSE => {
                let mut r = Reader::new("FunctionCallResponse", body);
                let v = r.nullable(body)?;
                r.finish()?;
                BackendMessage::FunctionCallResponse(v)
            }
            other => return Err(WireError::UnexpectedTag(other as char)),
        })
    }

    pub fn encode(&self, buf: &mut BytesMut) {
        match self {
            BackendMessage::Authentication(a) => framed(buf, tag::AUTHENTICATION, |b| match a {
                Authentication::Ok => b.put_i32(0),
                Authentication::CleartextPassword => b.put_i32(3),
                Authentication::Md5Password { salt } => {
                    b.put_i32(5);
                    b.put_slice(salt);
                }
                Authentication::Sasl { mechanisms } => {
                    b.put_i32(10);
                    mechanisms.iter().for_each(|m| put_cstr(b, m));
                    b.put_u8(0);
                }
                Authentication::SaslContinue(d) => {
                    b.put_i32(11);
                    b.put_slice(d);
                }
                Authentication::SaslFinal(d) => {
                    b.put_i32(12);
                    b.put_slice(d);
                }
            }),
            BackendMessage::BackendKeyData { pid, secret } => framed(buf, tag::BACKEND_KEY_DATA, |b| {
                b.put_i32(*pid);
                b.put_i32(*secret);
            }),
            BackendMessage::ParameterStatus { name, value } => framed(buf, tag::PARAMETER_STATUS, |b| {
                put_cstr(b, name);
                put_cstr(b, value);
            }),
            BackendMessage::ReadyForQuery(s) => framed(buf, tag::READY_FOR_QUERY, |b| b.put_u8(s.as_byte())),
            BackendMessage::ErrorResponse(e) => framed(buf, tag::ERROR_RESPONSE, |b| e.encode_body(b)),
            BackendMessage::NoticeResponse(e) => framed(buf, tag::NOTICE_RESPONSE, |b| e.encode_body(b)),
            BackendMessage::NegotiateProtocolVersion { newest_minor, unrecognized } => {
                framed(buf, tag::NEGOTIATE_PROTOCOL_VERSION, |b| {
                    b.put_i32(*newest_minor);
                    b.put_i32(unrecognized.len() as i32);
                    unrecognized.iter().for_each(|o| put_cstr(b, o));
                })
            }
            BackendMessage::CommandComplete { tag: t } => {
                framed(buf, tag::COMMAND_COMPLETE, |b| put_cstr(b, t))
            }
            BackendMessage::ParseComplete => framed(buf, tag::PARSE_COMPLETE, |_| {}),
            BackendMessage::BindComplete => framed(buf, tag::BIND_COMPLETE, |_| {}),
            BackendMessage::CloseComplete => framed(buf, tag::CLOSE_COMPLETE, |_| {}),
            BackendMessage::NoData => framed(buf, tag::NO_DATA, |_| {}),
            BackendMessage::PortalSuspended => framed(buf, tag::PORTAL_SUSPENDED, |_| {}),
            BackendMessage::EmptyQueryResponse => framed(buf, tag::EMPTY_QUERY_RESPONSE, |_| {}),
            BackendMessage::CopyDone => framed(buf, tag::COPY_DONE, |_| {}),
            BackendMessage::ParameterDescription { types } => framed(buf, tag::PARAMETER_DESCRIPTION, |b| {
                b.put_u16(count16(types.len()));
                types.iter().for_each(|t| b.put_u32(*t));
            }),
            BackendMessage::RowDescription { fields } => framed(buf, tag::ROW_DESCRIPTION, |b| {
                b.put_u16(count16(fields.len()));
                for f in fields {
                    put_cstr(b, &f.name);
                    b.put_u32(f.table_oid);
                    b.put_i16(f.column);
                    b.put_u32(f.type_oid);
                    b.put_i16(f.type_size);
                    b.put_i32(f.type_modifier);
                    b.put_i16(f.format);
                }
            }),
            BackendMessage::DataRow { values } => framed(buf, tag::DATA_ROW, |b| {
                b.put_u16(count16(values.len()));
                values.iter().for_each(|v| put_nullable(b, v));
            }),
            BackendMessage::CopyInResponse { format, column_formats } => {
                encode_copy_response(buf, tag::COPY_IN_RESPONSE, *format, column_formats)
            }
            BackendMessage::CopyOutResponse { format, column_formats } => {
                encode_copy_response(buf, tag::COPY_OUT_RESPONSE, *format, column_formats)
            }
            BackendMessage::CopyBothResponse { format, column_formats } => {
                encode_copy_response(buf, tag::COPY_BOTH_RESPONSE, *format, column_formats)
            }
            BackendMessage::CopyData(d) => framed(buf, tag::COPY_DATA, |b| b.put_slice(d)),
            BackendMessage::NotificationResponse { pid, channel, payload } => {
                framed(buf, tag::NOTIFICATION_RESPONSE, |b| {
                    b.put_i32(*pid);
                    put_cstr(b, channel);
                    put_cstr(b, payload);
                })
            }
            BackendMessage::FunctionCallResponse(v) => {
                framed(buf, tag::FUNCTION_CALL_RESPONSE, |b| put_nullable(b, v))
            }
        }
    }
}

fn encode_copy_response(buf: &mut BytesMut, t: u8, format: u8, cols: &[i16]) {
    framed(buf, t, |b| {
        b.put_u8(format);
        b.put_u16(count16(cols.len()));
        cols.iter().for_each(|c| b.put_i16(*c));
    })
}
