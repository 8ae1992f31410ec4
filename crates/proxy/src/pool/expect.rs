//! What the proxy expects back from a server, in order: one entry per message it sent that
//! the server answers, plus replies the proxy owes the client for messages it answered
//! itself (a Parse of a statement the server already has, a Close of a client's statement).
//! Walking server messages against this queue tells which to forward, which to drop (the
//! answers to statements the proxy injected), and where to slip in its own replies so the
//! client sees exactly the sequence PostgreSQL would have sent.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;

use super::classify::Effects;
use super::statements::Prepared;

#[derive(Debug)]
pub enum Expect {
    /// A client message sent on: its answers go to the client.
    Client(Kind),
    /// A message the proxy sent on its own: its answers are dropped.
    Injected(Kind),
    /// An answer the proxy gives itself when this entry reaches the front.
    Reply(Bytes),
}

#[derive(Debug)]
pub enum Kind {
    /// `name` is the server-side statement name when the proxy renamed it.
    Parse {
        name: Option<Arc<str>>,
    },
    /// With the proxy's statement it binds, if it is one.
    Bind(Option<Arc<Prepared>>),
    Close,
    DescribeStatement,
    DescribePortal,
    /// `effects` of the statement it runs, applied when it completes.
    Execute {
        effects: Effects,
    },
    Sync,
    Query {
        effects: Effects,
        failed: bool,
    },
    FunctionCall,
}

impl Kind {
    /// Extended-protocol messages: an error ends their answer and makes the server skip
    /// everything up to the next Sync.
    fn is_extended(&self) -> bool {
        matches!(
            self,
            Kind::Parse { .. }
                | Kind::Bind(_)
                | Kind::Close
                | Kind::DescribeStatement
                | Kind::DescribePortal
                | Kind::Execute { .. }
        )
    }

    /// Does a message with `tag` end this entry's answer?
    fn ends_with(&self, tag: u8) -> bool {
        match self {
            Kind::Parse { .. } => tag == b'1',
            Kind::Bind(_) => tag == b'2',
            Kind::Close => tag == b'3',
            Kind::DescribeStatement | Kind::DescribePortal => matches!(tag, b'T' | b'n'),
            Kind::Execute { .. } => matches!(tag, b'C' | b'I' | b's'),
            Kind::Sync | Kind::Query { .. } | Kind::FunctionCall => tag == b'Z',
        }
    }
}

/// Messages a server may send at any time, outside any answer.
pub fn is_async(tag: u8) -> bool {
    matches!(tag, b'N' | b'A' | b'S')
}

/// What to do with one server message.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Forward,
    Drop,
}

/// What finished with the message just handled.
#[derive(Debug)]
pub enum Finished {
    Nothing,
    /// A client Execute or Query completed without error: apply its effects.
    Succeeded(Effects),
    /// A renamed Parse failed: the server does not have the statement after all.
    ParseFailed(Arc<str>),
    /// A Bind of this proxy statement failed (the error says whether for good).
    BindFailed(Arc<Prepared>),
}

#[derive(Debug, Default)]
pub struct ExpectQueue {
    q: VecDeque<Expect>,
    /// The server reported an error in an extended-protocol message and discards everything
    /// until the next Sync; entries pushed meanwhile will get no answer.
    skipping: bool,
    /// An extended-protocol message went to the server after the last Sync. Until a Sync
    /// is answered the server holds what the client began (an implicit transaction, the
    /// unnamed statement and portal, an error it is skipping past), so it is not released.
    unsynced: bool,
}

impl ExpectQueue {
    pub fn is_empty(&self) -> bool {
        self.q.is_empty()
    }

    pub fn len(&self) -> usize {
        self.q.len()
    }

    /// Whether extended-protocol messages were sent with no Sync after them yet.
    pub fn unsynced(&self) -> bool {
        self.unsynced
    }

    /// Adds an entry for a message just sent (or answered by the proxy). Returns false when
    /// the server is skipping to Sync, in which case the message gets no answer at all.
    pub fn push(&mut self, e: Expect) -> bool {
        let is_sync = matches!(e, Expect::Client(Kind::Sync) | Expect::Injected(Kind::Sync));
        if self.skipping && !is_sync {
            return false;
        }
        if is_sync {
            self.skipping = false;
            self.unsynced = false;
        } else if let Expect::Client(k) | Expect::Injected(k) = &e
            && k.is_extended()
        {
            self.unsynced = true;
        }
        self.q.push_back(e);
        true
    }

    /// Replies now at the front of the queue, to write to the client before anything else.
    pub fn take_replies(&mut self, mut emit: impl FnMut(Bytes)) {
        while let Some(Expect::Reply(_)) = self.q.front() {
            if let Some(Expect::Reply(b)) = self.q.pop_front() {
                emit(b);
            }
        }
    }

    /// Classifies a server message by its tag and advances the queue.
    pub fn on_server_message(&mut self, tag: u8) -> (Verdict, Finished) {
        let Some(front) = self.q.front_mut() else {
            return (Verdict::Forward, Finished::Nothing);
        };
        let (kind, injected) = match front {
            Expect::Client(k) => (k, false),
            Expect::Injected(k) => (k, true),
            Expect::Reply(_) => unreachable!("replies are taken before server messages are handled"),
        };
        if is_async(tag) {
            // Settings reported while the proxy replays a client's settings are not news to
            // the client; everything else asynchronous goes through.
            return (if injected { Verdict::Drop } else { Verdict::Forward }, Finished::Nothing);
        }
        if tag == b'E' {
            if let Kind::Query { failed, .. } = kind {
                *failed = true;
            }
            if kind.is_extended() {
                // An injected Parse that fails is the client's problem too (its Bind will
                // not run): forward the error in place of the answer it was waiting for.
                let finished = match kind {
                    Kind::Parse { name: Some(n) } => Finished::ParseFailed(Arc::clone(n)),
                    Kind::Bind(Some(p)) => Finished::BindFailed(Arc::clone(p)),
                    _ => Finished::Nothing,
                };
                self.q.pop_front();
                self.skip_to_sync();
                return (Verdict::Forward, finished);
            }
            return (if injected { Verdict::Drop } else { Verdict::Forward }, Finished::Nothing);
        }
        if !kind.ends_with(tag) {
            return (if injected { Verdict::Drop } else { Verdict::Forward }, Finished::Nothing);
        }
        let entry = self.q.pop_front().expect("front exists");
        let verdict = if injected { Verdict::Drop } else { Verdict::Forward };
        let finished = match entry {
            Expect::Client(Kind::Execute { effects }) if tag == b'C' => Finished::Succeeded(effects),
            Expect::Client(Kind::Query { effects, failed: false }) => Finished::Succeeded(effects),
            _ => Finished::Nothing,
        };
        (verdict, finished)
    }

    /// Drops the entries the server will not answer after an extended-protocol error.
    fn skip_to_sync(&mut self) {
        while let Some(e) = self.q.front() {
            if matches!(e, Expect::Client(Kind::Sync) | Expect::Injected(Kind::Sync)) {
                return;
            }
            self.q.pop_front();
        }
        self.skipping = true;
    }

    /// COPY FROM STDIN ended: the server ignored Syncs the client sent during copy-in
    /// (tokio-postgres sends one right after Execute), so they get no ReadyForQuery.
    pub fn drop_syncs_after_front(&mut self) {
        let mut i = 1;
        while i < self.q.len() {
            if matches!(self.q[i], Expect::Client(Kind::Sync)) {
                self.q.remove(i);
            } else {
                i += 1;
            }
        }
    }

    /// The front entry is a client Query (simple protocol) or Execute: for COPY handling.
    pub fn front_runs_statement(&self) -> bool {
        matches!(self.q.front(), Some(Expect::Client(Kind::Execute { .. } | Kind::Query { .. })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(k: Kind) -> Expect {
        Expect::Client(k)
    }

    #[test]
    fn reply_for_a_skipped_parse_comes_between_answers() {
        let mut q = ExpectQueue::default();
        q.push(client(Kind::Bind(None)));
        q.push(client(Kind::Execute { effects: Effects::default() }));
        q.push(Expect::Reply(Bytes::from_static(b"1")));
        q.push(client(Kind::Bind(None)));
        q.push(client(Kind::Sync));
        let mut out = Vec::new();
        for tag in [b'2', b'D', b'C', b'2', b'Z'] {
            q.take_replies(|b| out.push(b[0]));
            let (v, _) = q.on_server_message(tag);
            assert_eq!(v, Verdict::Forward);
            out.push(tag);
        }
        assert_eq!(out, b"2DC12Z");
        assert!(q.is_empty());
    }

    #[test]
    fn an_error_skips_to_sync_and_drops_owed_replies() {
        let mut q = ExpectQueue::default();
        q.push(client(Kind::Bind(None)));
        q.push(Expect::Reply(Bytes::from_static(b"1")));
        q.push(client(Kind::Execute { effects: Effects::default() }));
        q.push(client(Kind::Sync));
        assert_eq!(q.on_server_message(b'E').0, Verdict::Forward);
        let mut replies = 0;
        q.take_replies(|_| replies += 1);
        assert_eq!(replies, 0);
        assert_eq!(q.on_server_message(b'Z').0, Verdict::Forward);
        assert!(q.is_empty());
        // After the error but before the Sync arrives, new entries get no answers.
        q.push(client(Kind::Parse { name: None }));
        q.on_server_message(b'E');
        assert!(!q.push(client(Kind::Bind(None))));
        assert!(q.push(client(Kind::Sync)));
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn injected_answers_are_dropped_but_their_errors_reach_the_client() {
        let mut q = ExpectQueue::default();
        q.push(Expect::Injected(Kind::Query { effects: Effects::default(), failed: false }));
        for tag in [b'S', b'C', b'Z'] {
            assert_eq!(q.on_server_message(tag).0, Verdict::Drop);
        }
        q.push(Expect::Injected(Kind::Parse { name: Some(Arc::from("s")) }));
        q.push(client(Kind::Bind(None)));
        q.push(client(Kind::Sync));
        let (v, f) = q.on_server_message(b'E');
        assert_eq!(v, Verdict::Forward);
        assert!(matches!(f, Finished::ParseFailed(n) if &*n == "s"));
        assert_eq!(q.on_server_message(b'Z').0, Verdict::Forward);
    }

    #[test]
    fn failed_query_has_no_effects() {
        let mut q = ExpectQueue::default();
        q.push(client(Kind::Query { effects: Effects::default(), failed: false }));
        q.on_server_message(b'E');
        let (_, f) = q.on_server_message(b'Z');
        assert!(matches!(f, Finished::Nothing));
    }
}
