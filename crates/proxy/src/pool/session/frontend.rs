//! The client's messages to an attached server: framing and streaming them through, renaming
//! named prepared statements to server-wide names (preparing them first where the server
//! lacks them), and pushing onto the expectation queue what the server will answer or the
//! proxy owes. Every byte consumed is also kept for a resend while one is possible.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};
use wire::ErrorResponse;
use wire::frame::{HEADER_LEN, peek_header};

use crate::pool::classify::Effects;
use crate::pool::expect::{Expect, Kind};
use crate::pool::statements::Prepared;

use super::attach::keep_for_replay;

/// Messages the proxy must look into are read whole up to this size. Larger ones are
/// streamed through as they arrive, as on the direct port, so a client cannot make the proxy
/// hold a message of `max_message_size` (256 MiB) per connection: a Query or an unnamed
/// Parse goes through unclassified and pins the session (what it sets cannot be known), a
/// Bind once its two names have arrived.
pub(super) const STREAM_ABOVE: usize = 1 << 20;
/// A named Parse is kept whole (its text names it on the servers and prepares it on each):
/// up to this size.
const NAMED_PARSE_MAX: usize = 16 << 20;
/// Where a Bind's portal and statement names must end.
const BIND_NAMES_MAX: usize = 2048;
/// The other messages the proxy reads whole are small by nature.
const SMALL_MESSAGE_MAX: usize = 64 << 10;
use super::frame::{CLOSE_COMPLETE, PARSE_COMPLETE, cstr, duplicate_statement, framing_error, parse_fields};
use super::{Attached, Event, Session};

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Session<S> {
    pub(super) fn process_client(&mut self) -> Option<Event> {
        let max = self.shared.settings.max_message_size;
        loop {
            let a = self.attached.as_mut().expect("attached");
            if self.c_remaining > 0 {
                let n = self.c_remaining.min(self.client.rbuf.len());
                if n == 0 {
                    return None;
                }
                if !self.c_discard {
                    a.server.wbuf.extend_from_slice(&self.client.rbuf[..n]);
                }
                keep_for_replay(a, &self.client.rbuf[..n]);
                self.client.rbuf.advance(n);
                self.c_remaining -= n;
                continue;
            }
            let (tag, len) = match peek_header(&self.client.rbuf, max) {
                Ok(Some(h)) => h,
                Ok(None) => return None,
                Err(e) => return Some(Event::Fatal(framing_error(e))),
            };
            let whole = self.client.rbuf.len() >= HEADER_LEN + len;
            let needs_whole =
                matches!(tag, b'P' | b'B' | b'D' | b'C' | b'Q' | b'E' | b'S' | b'H' | b'X' | b'c' | b'f');
            if needs_whole && len > STREAM_ABOVE && !self.skip_client_until_sync {
                let was_idle = a.queue.is_empty();
                match self.stream_large(tag, len) {
                    Ok(true) => {
                        let a = self.attached.as_mut().expect("attached");
                        if was_idle && !a.queue.is_empty() {
                            a.busy_since = Some(Instant::now());
                        }
                        self.emit_replies();
                        continue;
                    }
                    Ok(false) => return None,
                    Err(e) => return Some(Event::Fatal(e)),
                }
            }
            if needs_whole && !whole {
                self.client.rbuf.reserve(HEADER_LEN + len - self.client.rbuf.len());
                return None;
            }
            if tag == b'X' {
                return Some(Event::ClientGone("client terminated".into()));
            }
            if self.skip_client_until_sync && tag != b'S' {
                self.discard_client_frame(len, whole);
                continue;
            }
            let was_idle = a.queue.is_empty();
            if needs_whole {
                let frame = self.client.rbuf.split_to(HEADER_LEN + len);
                keep_for_replay(a, &frame);
                self.on_client_message(tag, &frame);
            } else {
                // Streamed through: CopyData, FunctionCall and anything PostgreSQL will judge.
                if tag == b'F' {
                    a.queue.push(Expect::Client(Kind::FunctionCall));
                }
                a.server.wbuf.extend_from_slice(&self.client.rbuf[..HEADER_LEN]);
                keep_for_replay(a, &self.client.rbuf[..HEADER_LEN]);
                self.client.rbuf.advance(HEADER_LEN);
                self.c_remaining = len;
                self.c_discard = false;
            }
            let a = self.attached.as_mut().expect("attached");
            if was_idle && !a.queue.is_empty() {
                a.busy_since = Some(Instant::now());
            }
            self.emit_replies();
        }
    }

    /// Starts streaming a large message (see [`STREAM_ABOVE`]): true once its head is
    /// handled and the rest will flow through, false while the head has not arrived.
    fn stream_large(&mut self, tag: u8, len: usize) -> Result<bool, ErrorResponse> {
        let too_large = |what: &str, max: usize| {
            ErrorResponse::fatal(
                wire::SqlState::PROGRAM_LIMIT_EXCEEDED,
                format!(
                    "{what} of {len} bytes exceeds the pooled port's limit of {max} bytes; use the direct port"
                ),
            )
        };
        let a = self.attached.as_mut().expect("attached");
        let body = &self.client.rbuf[HEADER_LEN.min(self.client.rbuf.len())..];
        let head = match tag {
            b'Q' => {
                a.queue.push(Expect::Client(Kind::Query { effects: pinning(), failed: false }));
                self.pool.stats.queries.fetch_add(1, Ordering::Relaxed);
                HEADER_LEN
            }
            b'P' => match body.first() {
                None => return Ok(false),
                Some(0) => {
                    self.unnamed_statement = pinning();
                    a.queue.push(Expect::Client(Kind::Parse { name: None }));
                    HEADER_LEN
                }
                Some(_) if len <= NAMED_PARSE_MAX => {
                    // Read whole, as a small one.
                    if self.client.rbuf.len() < HEADER_LEN + len {
                        self.client.rbuf.reserve(HEADER_LEN + len - self.client.rbuf.len());
                        return Ok(false);
                    }
                    let frame = self.client.rbuf.split_to(HEADER_LEN + len);
                    keep_for_replay(a, &frame);
                    self.on_parse(&frame);
                    return Ok(true);
                }
                Some(_) => {
                    // An error for this statement alone, as PostgreSQL's own would be: the
                    // message is dropped as it arrives and what follows skipped to Sync.
                    let mut e = too_large("a named Parse", NAMED_PARSE_MAX);
                    e.set(b'S', "ERROR".into());
                    e.set(b'V', "ERROR".into());
                    if !raise_on_server(a, &e) {
                        a.queue.push(Expect::Reply(e.to_error_message().freeze()));
                    }
                    self.skip_client_until_sync = true;
                    self.discard_client_frame(len, false);
                    return Ok(true);
                }
            },
            b'B' => {
                let names = cstr(body, 0).and_then(|(_, at)| cstr(body, at).map(|(_, rest)| rest));
                match names {
                    Some(rest) if rest <= BIND_NAMES_MAX => {
                        let head = self.client.rbuf.split_to(HEADER_LEN + rest);
                        keep_for_replay(a, &head);
                        self.on_bind(&head, len - rest);
                        self.c_remaining = len - rest;
                        self.c_discard = false;
                        return Ok(true);
                    }
                    None if body.len() < BIND_NAMES_MAX => {
                        self.client.rbuf.reserve(HEADER_LEN + BIND_NAMES_MAX);
                        return Ok(false);
                    }
                    _ => return Err(framing_error(wire::WireError::Malformed { what: "Bind" })),
                }
            }
            _ => return Err(too_large("a message", SMALL_MESSAGE_MAX)),
        };
        a.server.wbuf.extend_from_slice(&self.client.rbuf[..head]);
        keep_for_replay(a, &self.client.rbuf[..head]);
        self.client.rbuf.advance(head);
        self.c_remaining = len;
        self.c_discard = false;
        Ok(true)
    }

    /// A whole client message that the proxy must look into.
    fn on_client_message(&mut self, tag: u8, frame: &[u8]) {
        let body = &frame[HEADER_LEN..];
        tracing::trace!(tag = %(tag as char), len = body.len(), "client message");
        let a = self.attached.as_mut().expect("attached");
        match tag {
            b'Q' => {
                let effects = cstr(body, 0)
                    .and_then(|(q, _)| std::str::from_utf8(q).ok())
                    .map(|q| self.shared.classify.get(q));
                a.queue.push(Expect::Client(Kind::Query {
                    effects: effects.unwrap_or_default(),
                    failed: false,
                }));
                a.server.wbuf.extend_from_slice(frame);
                self.pool.stats.queries.fetch_add(1, Ordering::Relaxed);
            }
            b'P' => self.on_parse(frame),
            b'B' => self.on_bind(frame, 0),
            b'D' => {
                let kind = body.first().copied().unwrap_or(0);
                let name = cstr(body, 1).map(|(n, _)| n).unwrap_or_default();
                let prepared = (kind == b'S' && !name.is_empty())
                    .then(|| std::str::from_utf8(name).ok().and_then(|n| self.statements.get(n).cloned()))
                    .flatten();
                let a = self.attached.as_mut().expect("attached");
                match prepared {
                    Some(p) => {
                        ensure_prepared(a, &p);
                        let mut msg = BytesMut::with_capacity(p.server_name.len() + 7);
                        msg.put_u8(b'D');
                        msg.put_i32((p.server_name.len() + 6) as i32);
                        msg.put_u8(b'S');
                        msg.put_slice(p.server_name.as_bytes());
                        msg.put_u8(0);
                        a.server.wbuf.extend_from_slice(&msg);
                    }
                    None => a.server.wbuf.extend_from_slice(frame),
                }
                let k = if kind == b'S' { Kind::DescribeStatement } else { Kind::DescribePortal };
                a.queue.push(Expect::Client(k));
            }
            b'C' => {
                let kind = body.first().copied().unwrap_or(0);
                let name = cstr(body, 1).map(|(n, _)| n).unwrap_or_default();
                if kind == b'S' && !name.is_empty() {
                    // The client's name goes; the server's statement stays for others.
                    if let Ok(n) = std::str::from_utf8(name) {
                        self.statements.remove(n);
                    }
                    let a = self.attached.as_mut().expect("attached");
                    a.replay = None;
                    a.queue.push(Expect::Reply(Bytes::from_static(CLOSE_COMPLETE)));
                } else {
                    if kind == b'P'
                        && let Ok(n) = std::str::from_utf8(name)
                    {
                        self.portals.remove(n);
                    }
                    let a = self.attached.as_mut().expect("attached");
                    a.server.wbuf.extend_from_slice(frame);
                    a.queue.push(Expect::Client(Kind::Close));
                }
            }
            b'E' => {
                let portal = cstr(body, 0).map(|(p, _)| p).unwrap_or_default();
                let effects = if portal.is_empty() {
                    self.unnamed_portal.clone()
                } else {
                    std::str::from_utf8(portal)
                        .ok()
                        .and_then(|p| self.portals.get(p).cloned())
                        .unwrap_or_default()
                };
                let a = self.attached.as_mut().expect("attached");
                a.queue.push(Expect::Client(Kind::Execute { effects }));
                a.server.wbuf.extend_from_slice(frame);
                self.pool.stats.queries.fetch_add(1, Ordering::Relaxed);
            }
            b'S' => {
                self.skip_client_until_sync = false;
                a.queue.push(Expect::Client(Kind::Sync));
                a.server.wbuf.extend_from_slice(frame);
            }
            b'c' | b'f' => {
                if std::mem::take(&mut self.copy_in) {
                    a.queue.drop_syncs_after_front();
                }
                a.server.wbuf.extend_from_slice(frame);
            }
            // Flush, and anything else whole.
            _ => a.server.wbuf.extend_from_slice(frame),
        }
    }

    fn on_parse(&mut self, frame: &[u8]) {
        let parsed = parse_fields(&frame[HEADER_LEN..]);
        let a = self.attached.as_mut().expect("attached");
        let Some((name, query, types)) = parsed else {
            // Malformed: let PostgreSQL say so.
            a.server.wbuf.extend_from_slice(frame);
            a.queue.push(Expect::Client(Kind::Parse { name: None }));
            return;
        };
        let effects = self.shared.classify.get(query);
        if name.is_empty() {
            self.unnamed_statement = effects;
            a.server.wbuf.extend_from_slice(frame);
            a.queue.push(Expect::Client(Kind::Parse { name: None }));
            return;
        }
        let name = String::from_utf8_lossy(name).into_owned();
        a.replay = None;
        if self.statements.contains(&name) {
            if !raise_on_server(a, &duplicate_statement(&name)) {
                let e = duplicate_statement(&name);
                a.queue.push(Expect::Reply(e.to_error_message().freeze()));
            }
            self.skip_client_until_sync = true;
            return;
        }
        let p =
            Arc::new(Prepared::of_generation(query, &types, effects, |b| self.pool.statement_generation(b)));
        self.statements.insert(name, Arc::clone(&p));
        if a.server.prepared.contains(&p.server_name) {
            a.queue.push(Expect::Reply(Bytes::from_static(PARSE_COMPLETE)));
        } else {
            a.server.wbuf.extend_from_slice(&p.parse);
            a.server.prepared.insert(Arc::clone(&p.server_name));
            if !a.queue.push(Expect::Client(Kind::Parse { name: Some(Arc::clone(&p.server_name)) })) {
                a.server.prepared.remove(&p.server_name);
            }
        }
    }

    /// A Bind from its start (`frame`; `streamed` more bytes of it still to come, when it is
    /// large and only its names were read).
    fn on_bind(&mut self, frame: &[u8], streamed: usize) {
        let body = &frame[HEADER_LEN..];
        let names =
            cstr(body, 0).and_then(|(portal, at)| cstr(body, at).map(|(stmt, rest)| (portal, stmt, rest)));
        let a = self.attached.as_mut().expect("attached");
        let Some((portal, stmt, rest)) = names else {
            a.server.wbuf.extend_from_slice(frame);
            a.queue.push(Expect::Client(Kind::Bind(None)));
            return;
        };
        let declared = body.len() + streamed;
        let prepared = if stmt.is_empty() {
            None
        } else {
            std::str::from_utf8(stmt).ok().and_then(|s| self.statements.get(s).cloned())
        };
        let effects = match &prepared {
            Some(p) => {
                ensure_prepared(a, p);
                let new_len = 4 + portal.len() + 1 + p.server_name.len() + 1 + (declared - rest);
                a.server.wbuf.reserve(new_len + 1);
                a.server.wbuf.put_u8(b'B');
                a.server.wbuf.put_i32(new_len as i32);
                a.server.wbuf.put_slice(portal);
                a.server.wbuf.put_u8(0);
                a.server.wbuf.put_slice(p.server_name.as_bytes());
                a.server.wbuf.put_u8(0);
                a.server.wbuf.put_slice(&body[rest..]);
                p.effects.clone()
            }
            None => {
                // The unnamed statement, or a name the client never prepared (PostgreSQL
                // answers that with its own error).
                a.server.wbuf.extend_from_slice(frame);
                if stmt.is_empty() { self.unnamed_statement.clone() } else { Effects::default() }
            }
        };
        a.queue.push(Expect::Client(Kind::Bind(prepared)));
        if portal.is_empty() {
            self.unnamed_portal = effects;
        } else if let Ok(p) = std::str::from_utf8(portal) {
            if effects.is_empty() {
                self.portals.remove(p);
            } else {
                self.portals.insert(p.to_owned(), effects);
            }
        }
    }
}

/// Effects of a statement the proxy could not read: whatever it does stays with its server.
fn pinning() -> Effects {
    Arc::new(vec![crate::pool::classify::Effect::Untracked])
}

/// Prepares `p` on the attached server first if it does not have it.
fn ensure_prepared(a: &mut Attached, p: &Prepared) {
    if a.server.prepared.contains(&p.server_name) {
        return;
    }
    a.server.wbuf.extend_from_slice(&p.parse);
    a.server.prepared.insert(Arc::clone(&p.server_name));
    if !a.queue.push(Expect::Injected(Kind::Parse { name: Some(Arc::clone(&p.server_name)) })) {
        a.server.prepared.remove(&p.server_name);
    }
}

/// Makes the server raise `e` where the client's message would have failed, so the failure
/// aborts the server's transaction (explicit, or the implicit one of a pipeline) exactly as
/// PostgreSQL's own error would have; the client sees the error in place of that message's
/// answer. False when `e` cannot be raised this way (then the proxy answers it alone).
fn raise_on_server(a: &mut Attached, e: &ErrorResponse) -> bool {
    const QUOTE: &str = "$berth_raise$";
    let (Some(code), Some(message)) = (e.code(), e.message()) else { return false };
    if message.contains(QUOTE) {
        return false;
    }
    let sql = format!(
        "DO {QUOTE}BEGIN RAISE EXCEPTION USING ERRCODE = '{}', MESSAGE = {}; END{QUOTE}",
        code.code(),
        crate::pool::settings::quote_literal(message)
    );
    let messages = [
        wire::frontend::FrontendMessage::Parse { name: String::new(), query: sql, param_types: Vec::new() },
        wire::frontend::FrontendMessage::Bind(wire::frontend::Bind {
            portal: String::new(),
            statement: String::new(),
            param_formats: Vec::new(),
            params: Vec::new(),
            result_formats: Vec::new(),
        }),
        wire::frontend::FrontendMessage::Execute { portal: String::new(), max_rows: 0 },
    ];
    for m in &messages {
        m.encode(&mut a.server.wbuf);
    }
    a.queue.push(Expect::Injected(Kind::Parse { name: None }));
    a.queue.push(Expect::Injected(Kind::Bind(None)));
    a.queue.push(Expect::Injected(Kind::Execute { effects: Effects::default() }));
    true
}
