//! Proptest strategies for wire messages, shared by the property tests. Every strategy makes
//! only values the protocol can carry — C strings without NUL, counts that fit an Int16,
//! Describe/Close kinds `S`/`P`, non-zero ErrorResponse field codes, unique non-empty startup
//! parameter names — so that a failed round trip always points at the codec, never at the
//! generator.

use bytes::{Bytes, BytesMut};
use proptest::collection::vec;
use proptest::prelude::*;
use wire::backend::{Authentication, BackendMessage, FieldDescription, TransactionStatus};
use wire::frontend::{Bind, FrontendMessage, SaslInitialResponse};
use wire::startup::{CancelRequest, ProtocolVersion, StartupMessage, StartupPacket};
use wire::{ErrorResponse, Frame, WireError};

/// The largest body `parse_frame` is asked to accept in these tests; no generated message
/// comes near it.
pub const MAX_BODY: usize = 1 << 20;

/// A string that fits in a C string: any Unicode except NUL, including multi-byte UTF-8.
pub fn cstr() -> impl Strategy<Value = String> {
    "[^\\x00]{0,12}"
}

/// A C string that must not be empty because an empty one terminates its list.
pub fn nonempty_cstr() -> impl Strategy<Value = String> {
    "[^\\x00]{1,12}"
}

pub fn bytes() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..24).prop_map(Bytes::from)
}

pub fn nullable() -> impl Strategy<Value = Option<Bytes>> {
    proptest::option::of(bytes())
}

fn describe_kind() -> impl Strategy<Value = u8> {
    prop_oneof![Just(b'S'), Just(b'P')]
}

pub fn bind() -> impl Strategy<Value = Bind> {
    (cstr(), cstr(), vec(any::<i16>(), 0..6), vec(nullable(), 0..6), vec(any::<i16>(), 0..6)).prop_map(
        |(portal, statement, param_formats, params, result_formats)| Bind {
            portal,
            statement,
            param_formats,
            params,
            result_formats,
        },
    )
}

pub fn frontend() -> impl Strategy<Value = FrontendMessage> {
    prop_oneof![
        cstr().prop_map(|query| FrontendMessage::Query { query }),
        (cstr(), cstr(), vec(any::<u32>(), 0..8))
            .prop_map(|(name, query, param_types)| FrontendMessage::Parse { name, query, param_types }),
        bind().prop_map(FrontendMessage::Bind),
        (cstr(), any::<i32>()).prop_map(|(portal, max_rows)| FrontendMessage::Execute { portal, max_rows }),
        (describe_kind(), cstr()).prop_map(|(kind, name)| FrontendMessage::Describe { kind, name }),
        (describe_kind(), cstr()).prop_map(|(kind, name)| FrontendMessage::Close { kind, name }),
        Just(FrontendMessage::Sync),
        Just(FrontendMessage::Flush),
        Just(FrontendMessage::Terminate),
        bytes().prop_map(FrontendMessage::CopyData),
        Just(FrontendMessage::CopyDone),
        cstr().prop_map(|message| FrontendMessage::CopyFail { message }),
        bytes().prop_map(FrontendMessage::FunctionCall),
        bytes().prop_map(FrontendMessage::Password),
    ]
}

pub fn authentication() -> impl Strategy<Value = Authentication> {
    prop_oneof![
        Just(Authentication::Ok),
        Just(Authentication::CleartextPassword),
        any::<[u8; 4]>().prop_map(|salt| Authentication::Md5Password { salt }),
        vec(nonempty_cstr(), 0..4).prop_map(|mechanisms| Authentication::Sasl { mechanisms }),
        bytes().prop_map(Authentication::SaslContinue),
        bytes().prop_map(Authentication::SaslFinal),
    ]
}

pub fn transaction_status() -> impl Strategy<Value = TransactionStatus> {
    prop_oneof![
        Just(TransactionStatus::Idle),
        Just(TransactionStatus::InTransaction),
        Just(TransactionStatus::Failed),
    ]
}

pub fn error_response() -> impl Strategy<Value = ErrorResponse> {
    vec((1..=u8::MAX, cstr()), 0..8).prop_map(|fields| ErrorResponse { fields })
}

pub fn field_description() -> impl Strategy<Value = FieldDescription> {
    (cstr(), any::<u32>(), any::<i16>(), any::<u32>(), any::<i16>(), any::<i32>(), any::<i16>()).prop_map(
        |(name, table_oid, column, type_oid, type_size, type_modifier, format)| FieldDescription {
            name,
            table_oid,
            column,
            type_oid,
            type_size,
            type_modifier,
            format,
        },
    )
}

pub fn backend() -> impl Strategy<Value = BackendMessage> {
    prop_oneof![
        authentication().prop_map(BackendMessage::Authentication),
        (any::<i32>(), any::<i32>()).prop_map(|(pid, secret)| BackendMessage::BackendKeyData { pid, secret }),
        (cstr(), cstr()).prop_map(|(name, value)| BackendMessage::ParameterStatus { name, value }),
        transaction_status().prop_map(BackendMessage::ReadyForQuery),
        error_response().prop_map(BackendMessage::ErrorResponse),
        error_response().prop_map(BackendMessage::NoticeResponse),
        (any::<i32>(), vec(cstr(), 0..4)).prop_map(|(newest_minor, unrecognized)| {
            BackendMessage::NegotiateProtocolVersion { newest_minor, unrecognized }
        }),
        cstr().prop_map(|tag| BackendMessage::CommandComplete { tag }),
        Just(BackendMessage::ParseComplete),
        Just(BackendMessage::BindComplete),
        Just(BackendMessage::CloseComplete),
        Just(BackendMessage::NoData),
        Just(BackendMessage::PortalSuspended),
        Just(BackendMessage::EmptyQueryResponse),
        vec(any::<u32>(), 0..8).prop_map(|types| BackendMessage::ParameterDescription { types }),
        vec(field_description(), 0..4).prop_map(|fields| BackendMessage::RowDescription { fields }),
        vec(nullable(), 0..6).prop_map(|values| BackendMessage::DataRow { values }),
        (any::<u8>(), vec(any::<i16>(), 0..6)).prop_map(|(format, column_formats)| {
            BackendMessage::CopyInResponse { format, column_formats }
        }),
        (any::<u8>(), vec(any::<i16>(), 0..6)).prop_map(|(format, column_formats)| {
            BackendMessage::CopyOutResponse { format, column_formats }
        }),
        (any::<u8>(), vec(any::<i16>(), 0..6)).prop_map(|(format, column_formats)| {
            BackendMessage::CopyBothResponse { format, column_formats }
        }),
        bytes().prop_map(BackendMessage::CopyData),
        Just(BackendMessage::CopyDone),
        (any::<i32>(), cstr(), cstr()).prop_map(|(pid, channel, payload)| {
            BackendMessage::NotificationResponse { pid, channel, payload }
        }),
        nullable().prop_map(BackendMessage::FunctionCallResponse),
    ]
}

pub fn sasl_initial_response() -> impl Strategy<Value = SaslInitialResponse> {
    (cstr(), nullable()).prop_map(|(mechanism, data)| SaslInitialResponse { mechanism, data })
}

/// A protocol version whose code is not one of the three request codes that share the
/// StartupMessage layout (1234.5678 cancel, 1234.5679 SSL, 1234.5680 GSSENC).
pub fn protocol_version() -> impl Strategy<Value = ProtocolVersion> {
    (any::<u16>(), any::<u16>())
        .prop_filter("collides with a request code", |&(major, minor)| {
            !(major == 1234 && (5678..=5680).contains(&minor))
        })
        .prop_map(|(major, minor)| ProtocolVersion { major, minor })
}

pub fn startup_message() -> impl Strategy<Value = StartupMessage> {
    (protocol_version(), vec((nonempty_cstr(), cstr()), 0..8)).prop_map(|(version, raw)| {
        // Names are unique on the wire; keep the first of each, in order.
        let mut params: Vec<(String, String)> = Vec::new();
        for (k, v) in raw {
            if !params.iter().any(|(seen, _)| *seen == k) {
                params.push((k, v));
            }
        }
        StartupMessage { version, params }
    })
}

pub fn startup_packet() -> impl Strategy<Value = StartupPacket> {
    prop_oneof![
        startup_message().prop_map(StartupPacket::Startup),
        Just(StartupPacket::SslRequest),
        Just(StartupPacket::GssEncRequest),
        (any::<i32>(), any::<i32>())
            .prop_map(|(pid, secret)| StartupPacket::Cancel(CancelRequest { pid, secret })),
    ]
}

/// Any tagged message either side may send. Tags overlap between directions, so decoding
/// needs to know which kind of message is expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tagged {
    Frontend(FrontendMessage),
    Backend(BackendMessage),
    SaslInitial(SaslInitialResponse),
}

impl Tagged {
    pub fn encode(&self, buf: &mut BytesMut) {
        match self {
            Tagged::Frontend(m) => m.encode(buf),
            Tagged::Backend(m) => m.encode(buf),
            Tagged::SaslInitial(m) => m.encode(buf),
        }
    }

    /// Decodes `frame` as the same kind of message as `self`.
    pub fn decode_like(&self, frame: &Frame) -> Result<Tagged, WireError> {
        Ok(match self {
            Tagged::Frontend(_) => Tagged::Frontend(FrontendMessage::decode(frame)?),
            Tagged::Backend(_) => Tagged::Backend(BackendMessage::decode(frame)?),
            Tagged::SaslInitial(_) => {
                if frame.tag != b'p' {
                    return Err(WireError::UnexpectedTag(frame.tag as char));
                }
                Tagged::SaslInitial(SaslInitialResponse::decode(&frame.body)?)
            }
        })
    }
}

pub fn tagged() -> impl Strategy<Value = Tagged> {
    prop_oneof![
        frontend().prop_map(Tagged::Frontend),
        backend().prop_map(Tagged::Backend),
        sasl_initial_response().prop_map(Tagged::SaslInitial),
    ]
}

/// Encodes one message on its own.
pub fn encode_one(f: impl FnOnce(&mut BytesMut)) -> BytesMut {
    let mut buf = BytesMut::new();
    f(&mut buf);
    buf
}
