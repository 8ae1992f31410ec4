//! Client messages answered without a server, between transactions: a named Parse (checked
//! with the PostgreSQL grammar), a Close of a statement, Sync and Flush; anything else asks
//! for a server. Also the discarding of client frames after an error the proxy reported
//! itself, until the next Sync.

use std::sync::Arc;

use bytes::Buf;
use tokio::io::{AsyncRead, AsyncWrite};
use wire::backend::BackendMessage;
use wire::frame::{HEADER_LEN, peek_header};

use crate::pool::statements::Prepared;

use super::frame::{CLOSE_COMPLETE, PARSE_COMPLETE, cstr, duplicate_statement, framing_error, parse_fields};
use super::{Event, Session};

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Session<S> {
    /// Between transactions some messages need no server: a named Parse (checked with the
    /// PostgreSQL grammar; the server prepares it when it is first used), a Close of a
    /// statement, Sync and Flush. Answering them here matters beyond saving a round trip:
    /// clients such as pgbench prepare with a blocking call while their other connections
    /// hold every server inside transactions, and would otherwise wait on themselves.
    pub(super) fn process_detached(&mut self) -> Option<Event> {
        let max = self.shared.settings.max_message_size;
        loop {
            if self.c_remaining > 0 {
                // Only while discarding after an error the proxy reported itself.
                let n = self.c_remaining.min(self.client.rbuf.len());
                if n == 0 {
                    return None;
                }
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
            if tag == b'X' {
                return Some(Event::ClientGone("client terminated".into()));
            }
            if self.skip_client_until_sync && tag != b'S' {
                self.discard_client_frame(len, whole);
                continue;
            }
            // A large Parse is streamed to a server rather than held here.
            if !matches!(tag, b'P' | b'C' | b'S' | b'H') || len > super::frontend::STREAM_ABOVE {
                return Some(Event::NeedServer);
            }
            if !whole {
                self.client.rbuf.reserve(HEADER_LEN + len - self.client.rbuf.len());
                return None;
            }
            let body = &self.client.rbuf[HEADER_LEN..HEADER_LEN + len];
            match tag {
                b'S' => {
                    self.skip_client_until_sync = false;
                    BackendMessage::ReadyForQuery(self.status).encode(&mut self.client.wbuf);
                }
                b'H' => {}
                b'C' => {
                    let (kind, name) = (body.first().copied(), cstr(body, 1).map(|(n, _)| n));
                    match (kind, name.and_then(|n| std::str::from_utf8(n).ok())) {
                        (Some(b'S'), Some(n)) if !n.is_empty() => {
                            self.statements.remove(n);
                            self.client.wbuf.extend_from_slice(CLOSE_COMPLETE);
                        }
                        _ => return Some(Event::NeedServer),
                    }
                }
                _ => match parse_fields(body) {
                    Some((name, query, types))
                        if !name.is_empty()
                            && pg_query::parse(query, pg_query::ParserOptions::DEFAULT).is_ok() =>
                    {
                        let name = String::from_utf8_lossy(name).into_owned();
                        if self.statements.contains(&name) {
                            let e = duplicate_statement(&name);
                            self.client.wbuf.extend_from_slice(&e.to_error_message());
                            self.skip_client_until_sync = true;
                        } else {
                            let effects = self.shared.classify.get(query);
                            let p = Prepared::of_generation(query, &types, effects, |b| {
                                self.pool.statement_generation(b)
                            });
                            self.statements.insert(name, Arc::new(p));
                            self.client.wbuf.extend_from_slice(PARSE_COMPLETE);
                        }
                    }
                    // The unnamed statement, or text the grammar rejects: the server
                    // answers (with its own words for the error).
                    _ => return Some(Event::NeedServer),
                },
            }
            self.client.rbuf.advance(HEADER_LEN + len);
        }
    }

    /// Drops a client frame (after an error the proxy reported itself), streaming away a
    /// body that has not fully arrived.
    pub(super) fn discard_client_frame(&mut self, len: usize, whole: bool) {
        if whole {
            self.client.rbuf.advance(HEADER_LEN + len);
        } else {
            self.client.rbuf.advance(HEADER_LEN);
            self.c_remaining = len;
            self.c_discard = true;
        }
    }
}
