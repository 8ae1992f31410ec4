//! What a statement does to session state that outlives a transaction, decided with the real
//! PostgreSQL grammar (`pg_query`) and cached by statement text. Transaction pooling needs to
//! know two things: which settings to replay on another server (`SET`, `RESET`, `DISCARD`),
//! and what ties a client to its server (`LISTEN`, session advisory locks, temporary tables,
//! `WITH HOLD` cursors, SQL-level `PREPARE`, `set_config`). Statements that mention none of
//! the words involved are never parsed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use pg_query::NodeEnum;
use pg_query::protobuf::{DiscardMode, VariableSetKind};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// A session-level setting; `sql` sets it again on another server.
    Set {
        name: String,
        sql: String,
    },
    Reset {
        name: String,
    },
    ResetAll,
    /// `DISCARD ALL`: settings, prepared statements, temp tables, cursors, listeners, locks.
    DiscardAll,
    DiscardTemp,
    Listen(String),
    Unlisten(String),
    UnlistenAll,
    AdvisoryLock,
    AdvisoryUnlockAll,
    TempObject,
    HoldCursor(String),
    CloseCursor(String),
    CloseAllCursors,
    SqlPrepare(String),
    SqlDeallocate(String),
    SqlDeallocateAll,
    /// `set_config(name, value, false)` and other changes the proxy cannot replay.
    Untracked,
    /// Transaction control, so settings changed inside a transaction can be undone when
    /// PostgreSQL undoes them. `chain` starts the next transaction at once (`AND CHAIN`).
    Begin,
    Commit {
        chain: bool,
    },
    Rollback {
        chain: bool,
    },
    Savepoint(String),
    Release(String),
    RollbackTo(String),
}

/// Effects of one query string, in statement order.
pub type Effects = Arc<Vec<Effect>>;

/// Words at least one of which appears in every statement with an effect above, by first
/// letter. `set` and `reset` count only where a statement starts (or as `set_config`): an
/// `UPDATE … SET` must not send every write through the parser.
const TRIGGERS: [(u8, &[&[u8]]); 9] = [
    (b's', &[b"set"]),
    (b'r', &[b"reset"]),
    (b'd', &[b"discard", b"deallocate"]),
    (b'l', &[b"listen"]),
    (b'a', &[b"advisory"]),
    (b't', &[b"temp"]),
    (b'h', &[b"hold"]),
    (b'c', &[b"close"]),
    (b'p', &[b"prepare"]),
];

/// For each byte, which entry of `TRIGGERS` its lower-case form begins (or none): the scan
/// below costs one table load for most bytes.
const TRIGGER_OF: [u8; 256] = {
    let mut t = [u8::MAX; 256];
    let mut i = 0;
    while i < TRIGGERS.len() {
        let c = TRIGGERS[i].0;
        t[c as usize] = i as u8;
        t[(c - 32) as usize] = i as u8;
        i += 1;
    }
    t
};

/// A case-insensitive scan for the trigger words in one pass, without allocating: it runs
/// on every query that passes through a pooled session, so most bytes cost one table load.
fn may_have_effects(sql: &str) -> bool {
    let hay = sql.as_bytes();
    // After a line comment the start of a statement is not told by the byte before it; only
    // looked for when a `set` or `reset` is not at a statement start, not for every query.
    let line_comments = || hay.windows(2).any(|w| w == b"--");
    is_transaction_control(sql)
        || hay.iter().enumerate().any(|(i, &b)| {
            let Some(&(first, words)) = TRIGGERS.get(TRIGGER_OF[b as usize] as usize) else {
                return false;
            };
            words.iter().any(|w| {
                hay.get(i..i + w.len()).is_some_and(|s| s.eq_ignore_ascii_case(w))
                    && (!matches!(first, b's' | b'r')
                        || starts_statement(hay, i)
                        || hay.get(i..i + 10).is_some_and(|s| s.eq_ignore_ascii_case(b"set_config"))
                        || line_comments())
            })
        })
}

/// Whether position `i` begins a statement: only blanks, a `;` or the end of a block
/// comment come before it.
fn starts_statement(hay: &[u8], i: usize) -> bool {
    match hay[..i].iter().rev().find(|b| !b.is_ascii_whitespace()) {
        None => true,
        Some(b) => matches!(b, b';' | b'/'),
    }
}

/// Words that begin a transaction-control statement (`END` and `ABORT` are PostgreSQL's
/// spellings of COMMIT and ROLLBACK).
const TRANSACTION_WORDS: &[&str] =
    &["begin", "start", "commit", "end", "rollback", "abort", "savepoint", "release"];

/// Whether the first word of `sql` begins a transaction-control statement. Only the first
/// word: these words are common inside other statements (`CASE … END`).
fn is_transaction_control(sql: &str) -> bool {
    let word = sql.trim_start().split(|c: char| !c.is_ascii_alphabetic()).next().unwrap_or_default();
    TRANSACTION_WORDS.iter().any(|w| w.eq_ignore_ascii_case(word))
}

/// Classifies `sql`, parsing it only when it might matter.
pub fn classify(sql: &str) -> Vec<Effect> {
    if !may_have_effects(sql) {
        return Vec::new();
    }
    let Ok(parsed) = pg_query::parse(sql, pg_query::ParserOptions::DEFAULT) else {
        // The server will reject it too.
        return Vec::new();
    };
    let mut effects = Vec::new();
    for raw in &parsed.protobuf.stmts {
        let Some(node) = raw.stmt.as_ref().and_then(|n| n.node.as_ref()) else { continue };
        let text = statement_text(sql, raw.stmt_location, raw.stmt_len);
        statement_effects(node, text, &mut effects);
    }
    for (func, _) in &parsed.functions {
        let name = func.rsplit('.').next().unwrap_or(func);
        match name {
            "pg_advisory_lock"
            | "pg_advisory_lock_shared"
            | "pg_try_advisory_lock"
            | "pg_try_advisory_lock_shared" => effects.push(Effect::AdvisoryLock),
            "pg_advisory_unlock_all" => effects.push(Effect::AdvisoryUnlockAll),
            "set_config" => effects.push(Effect::Untracked),
            _ => {}
        }
    }
    effects
}

fn statement_text(sql: &str, location: i32, len: i32) -> &str {
    let start = usize::try_from(location).unwrap_or(0).min(sql.len());
    let end = if len <= 0 { sql.len() } else { (start + len as usize).min(sql.len()) };
    sql.get(start..end).unwrap_or(sql).trim()
}

fn is_temp(relpersistence: &str) -> bool {
    relpersistence == "t"
}

fn statement_effects(node: &NodeEnum, text: &str, out: &mut Vec<Effect>) {
    match node {
        NodeEnum::VariableSetStmt(v) if !v.is_local => {
            let name = v.name.to_ascii_lowercase();
            match VariableSetKind::try_from(v.kind) {
                Ok(
                    VariableSetKind::VarSetValue
                    | VariableSetKind::VarSetCurrent
                    | VariableSetKind::VarSetMulti,
                ) => out.push(Effect::Set { name, sql: text.to_owned() }),
                Ok(VariableSetKind::VarSetDefault | VariableSetKind::VarReset) => {
                    out.push(Effect::Reset { name })
                }
                Ok(VariableSetKind::VarResetAll) => out.push(Effect::ResetAll),
                _ => {}
            }
        }
        NodeEnum::DiscardStmt(d) => match DiscardMode::try_from(d.target) {
            Ok(DiscardMode::DiscardAll) => out.push(Effect::DiscardAll),
            Ok(DiscardMode::DiscardTemp) => out.push(Effect::DiscardTemp),
            _ => {}
        },
        NodeEnum::ListenStmt(l) => out.push(Effect::Listen(l.conditionname.clone())),
        NodeEnum::UnlistenStmt(u) if u.conditionname.is_empty() => out.push(Effect::UnlistenAll),
        NodeEnum::UnlistenStmt(u) => out.push(Effect::Unlisten(u.conditionname.clone())),
        NodeEnum::CreateStmt(c) if c.relation.as_ref().is_some_and(|r| is_temp(&r.relpersistence)) => {
            out.push(Effect::TempObject)
        }
        NodeEnum::CreateTableAsStmt(c)
            if c.into.as_ref().and_then(|i| i.rel.as_ref()).is_some_and(|r| is_temp(&r.relpersistence)) =>
        {
            out.push(Effect::TempObject)
        }
        NodeEnum::ViewStmt(v) if v.view.as_ref().is_some_and(|r| is_temp(&r.relpersistence)) => {
            out.push(Effect::TempObject)
        }
        NodeEnum::CreateSeqStmt(s) if s.sequence.as_ref().is_some_and(|r| is_temp(&r.relpersistence)) => {
            out.push(Effect::TempObject)
        }
        NodeEnum::SelectStmt(s)
            if s.into_clause
                .as_ref()
                .and_then(|i| i.rel.as_ref())
                .is_some_and(|r| is_temp(&r.relpersistence)) =>
        {
            out.push(Effect::TempObject)
        }
        // CURSOR_OPT_HOLD in parsenodes.h.
        NodeEnum::DeclareCursorStmt(d) if d.options & 0x0020 != 0 => {
            out.push(Effect::HoldCursor(d.portalname.clone()))
        }
        NodeEnum::ClosePortalStmt(c) if c.portalname.is_empty() => out.push(Effect::CloseAllCursors),
        NodeEnum::ClosePortalStmt(c) => out.push(Effect::CloseCursor(c.portalname.clone())),
        NodeEnum::PrepareStmt(p) => out.push(Effect::SqlPrepare(p.name.clone())),
        NodeEnum::TransactionStmt(t) => {
            use pg_query::protobuf::TransactionStmtKind as K;
            match K::try_from(t.kind) {
                Ok(K::TransStmtBegin | K::TransStmtStart) => out.push(Effect::Begin),
                // PREPARE TRANSACTION ends the transaction as a commit does, for the session.
                Ok(K::TransStmtCommit | K::TransStmtPrepare) => out.push(Effect::Commit { chain: t.chain }),
                Ok(K::TransStmtRollback) => out.push(Effect::Rollback { chain: t.chain }),
                Ok(K::TransStmtSavepoint) => out.push(Effect::Savepoint(t.savepoint_name.clone())),
                Ok(K::TransStmtRelease) => out.push(Effect::Release(t.savepoint_name.clone())),
                Ok(K::TransStmtRollbackTo) => out.push(Effect::RollbackTo(t.savepoint_name.clone())),
                _ => {}
            }
        }
        NodeEnum::DeallocateStmt(d) if d.isall || d.name.is_empty() => out.push(Effect::SqlDeallocateAll),
        NodeEnum::DeallocateStmt(d) => out.push(Effect::SqlDeallocate(d.name.clone())),
        _ => {}
    }
}

/// Classifications by statement text, bounded by the bytes of text it keeps (entries alone
/// would let a client of long statements fill memory): when a shard is full it starts over,
/// which costs a few re-parses and never a wrong answer; a text over a quarter of a shard
/// is classified every time and not kept.
pub struct ClassifyCache {
    shards: Vec<Mutex<Shard>>,
    per_shard_bytes: usize,
}

#[derive(Default)]
struct Shard {
    map: HashMap<Arc<str>, Effects>,
    bytes: usize,
}

impl ClassifyCache {
    /// At most `capacity_bytes` of statement text, spread over shards.
    pub fn new(capacity_bytes: usize) -> Self {
        let shards = 16;
        ClassifyCache {
            shards: (0..shards).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard_bytes: (capacity_bytes / shards).max(1),
        }
    }

    pub fn get(&self, sql: &str) -> Effects {
        if !may_have_effects(sql) {
            return Effects::default();
        }
        let shard = &self.shards[shard_of(sql, self.shards.len())];
        if let Some(hit) = shard.lock().expect("classify cache poisoned").map.get(sql) {
            return Arc::clone(hit);
        }
        let effects: Effects = Arc::new(classify(sql));
        // What an entry costs beyond its text: the key's and the value's headers.
        let cost = sql.len() + 64;
        if cost > self.per_shard_bytes / 4 {
            return effects;
        }
        let mut shard = shard.lock().expect("classify cache poisoned");
        if shard.bytes + cost > self.per_shard_bytes {
            shard.map.clear();
            shard.bytes = 0;
        }
        if shard.map.insert(Arc::from(sql), Arc::clone(&effects)).is_none() {
            shard.bytes += cost;
        }
        effects
    }
}

fn shard_of(s: &str, n: usize) -> usize {
    // FNV-1a over at most the first 64 bytes: cheap and good enough to spread shards.
    let mut h: u32 = 0x811c9dc5;
    for b in s.as_bytes().iter().take(64) {
        h = (h ^ u32::from(*b)).wrapping_mul(0x01000193);
    }
    h as usize % n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings() {
        assert_eq!(
            classify("SET search_path TO app, public"),
            vec![Effect::Set { name: "search_path".into(), sql: "SET search_path TO app, public".into() }]
        );
        assert_eq!(classify("set local statement_timeout = 5"), vec![]);
        assert_eq!(classify("RESET search_path"), vec![Effect::Reset { name: "search_path".into() }]);
        assert_eq!(classify("SET TimeZone = DEFAULT"), vec![Effect::Reset { name: "timezone".into() }]);
        assert_eq!(classify("reset all"), vec![Effect::ResetAll]);
        assert_eq!(classify("DISCARD ALL"), vec![Effect::DiscardAll]);
        let two = classify("select 1; SET application_name = 'x'; select 2");
        assert_eq!(
            two,
            vec![Effect::Set { name: "application_name".into(), sql: "SET application_name = 'x'".into() }]
        );
        assert!(matches!(
            &classify("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")[..],
            [Effect::Set { .. }]
        ));
    }

    #[test]
    fn pins() {
        assert_eq!(classify("LISTEN jobs"), vec![Effect::Listen("jobs".into())]);
        assert_eq!(classify("UNLISTEN *"), vec![Effect::UnlistenAll]);
        assert_eq!(classify("select pg_advisory_lock(1)"), vec![Effect::AdvisoryLock]);
        assert_eq!(classify("select pg_advisory_xact_lock(1)"), vec![]);
        assert_eq!(classify("create temp table t(i int)"), vec![Effect::TempObject]);
        assert_eq!(classify("create temporary table t as select 1"), vec![Effect::TempObject]);
        assert_eq!(classify("select 1 into temp t"), vec![Effect::TempObject]);
        assert_eq!(classify("create table t(i int)"), vec![]);
        assert_eq!(classify("declare c cursor with hold for select 1"), vec![Effect::HoldCursor("c".into())]);
        assert_eq!(classify("declare c cursor for select 1"), vec![]);
        assert_eq!(classify("close all"), vec![Effect::CloseAllCursors]);
        assert_eq!(classify("prepare p as select 1"), vec![Effect::SqlPrepare("p".into())]);
        assert_eq!(classify("deallocate all"), vec![Effect::SqlDeallocateAll]);
        assert_eq!(classify("select set_config('search_path', 'x', false)"), vec![Effect::Untracked]);
    }

    #[test]
    fn transaction_control() {
        assert_eq!(classify("begin"), vec![Effect::Begin]);
        assert_eq!(classify("START TRANSACTION ISOLATION LEVEL SERIALIZABLE"), vec![Effect::Begin]);
        assert_eq!(classify("end"), vec![Effect::Commit { chain: false }]);
        assert_eq!(classify("COMMIT AND CHAIN"), vec![Effect::Commit { chain: true }]);
        assert_eq!(classify("abort"), vec![Effect::Rollback { chain: false }]);
        assert_eq!(
            classify("savepoint a; release savepoint a"),
            vec![Effect::Savepoint("a".into()), Effect::Release("a".into())]
        );
        assert_eq!(classify("rollback to savepoint a"), vec![Effect::RollbackTo("a".into())]);
        assert_eq!(
            classify("begin; set search_path = x; rollback"),
            vec![
                Effect::Begin,
                Effect::Set { name: "search_path".into(), sql: "set search_path = x".into() },
                Effect::Rollback { chain: false }
            ]
        );
        // Only a leading keyword makes a statement worth parsing for this.
        assert!(!may_have_effects("select case when true then 1 end"));
    }

    #[test]
    fn the_trigger_scan_finds_every_word_in_any_case() {
        for sql in [
            "SeT search_path = x",
            "select pg_ADVISORY_lock(1)",
            "create TEMP table t()",
            "declare c cursor with HOLD for select 1",
            "Prepare p as select 1",
            "DEALLOCATE p",
            "discard all",
            "LISTEN ch",
            "close c",
            "select set_config('a', 'b', false)",
        ] {
            assert!(may_have_effects(sql), "{sql}");
        }
        for sql in [
            "/* hint */ SET search_path = x",
            "select 1; set x = 1",
            "-- note\nset x = 1",
            "RESET ALL",
            "select 1;reset statement_timeout",
        ] {
            assert!(may_have_effects(sql), "{sql}");
        }
        for sql in [
            "select 1",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 42",
            "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 7",
            "select offset_reset from t",
            "",
            "s",
            "se",
        ] {
            assert!(!may_have_effects(sql), "{sql}");
        }
    }

    #[test]
    fn ordinary_statements_have_no_effects() {
        for sql in ["select 1", "update t set x = 1", "insert into settings values (1)", "not even sql ;;"] {
            assert_eq!(classify(sql), vec![], "{sql}");
        }
    }

    #[test]
    fn cache_returns_the_same_answer() {
        let cache = ClassifyCache::new(32 << 10);
        for _ in 0..100 {
            assert_eq!(*cache.get("LISTEN x"), vec![Effect::Listen("x".into())]);
        }
        assert!(cache.get("select 1").is_empty());
    }

    #[test]
    fn the_cache_is_bounded_by_the_bytes_of_text_it_keeps() {
        let cache = ClassifyCache::new(64 << 10);
        // Long statements with effects, each different: many times the budget.
        for i in 0..2_000 {
            let sql = format!("SET application_name = '{i}{}'", "x".repeat(900));
            assert!(matches!(cache.get(&sql).as_slice(), [Effect::Set { .. }]));
        }
        let kept: usize = cache.shards.iter().map(|s| s.lock().unwrap().bytes).sum();
        assert!(kept <= 64 << 10, "{kept} bytes kept");
        // One over a quarter of a shard is answered and not kept.
        let huge = format!("SET application_name = '{}'", "y".repeat(64 << 10));
        assert!(matches!(cache.get(&huge).as_slice(), [Effect::Set { .. }]));
        assert!(cache.shards.iter().all(|s| !s.lock().unwrap().map.contains_key(huge.as_str())));
    }
}
