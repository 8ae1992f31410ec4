//! Why a pooled client must keep its server: session state PostgreSQL ties to a backend
//! (listeners, session advisory locks, temporary objects, held cursors, SQL prepared
//! statements, settings changed by functions). Each reason is released by its own undo.

use std::collections::HashSet;

use super::classify::Effect;

#[derive(Debug, Default, Clone)]
pub struct Pins {
    listening: HashSet<String>,
    advisory_locks: bool,
    temp_objects: bool,
    hold_cursors: HashSet<String>,
    sql_prepared: HashSet<String>,
    /// A change the proxy cannot replay elsewhere (`set_config`): pinned for good.
    untracked: bool,
}

impl Pins {
    pub fn is_pinned(&self) -> bool {
        !self.listening.is_empty()
            || self.advisory_locks
            || self.temp_objects
            || !self.hold_cursors.is_empty()
            || !self.sql_prepared.is_empty()
            || self.untracked
    }

    pub fn apply(&mut self, e: &Effect) {
        match e {
            Effect::Listen(c) => {
                self.listening.insert(c.clone());
            }
            Effect::Unlisten(c) => {
                self.listening.remove(c);
            }
            Effect::UnlistenAll => self.listening.clear(),
            Effect::AdvisoryLock => self.advisory_locks = true,
            Effect::AdvisoryUnlockAll => self.advisory_locks = false,
            Effect::TempObject => self.temp_objects = true,
            Effect::DiscardTemp => self.temp_objects = false,
            Effect::HoldCursor(c) => {
                self.hold_cursors.insert(c.clone());
            }
            Effect::CloseCursor(c) => {
                self.hold_cursors.remove(c);
            }
            Effect::CloseAllCursors => self.hold_cursors.clear(),
            Effect::SqlPrepare(p) => {
                self.sql_prepared.insert(p.clone());
            }
            Effect::SqlDeallocate(p) => {
                self.sql_prepared.remove(p);
            }
            Effect::SqlDeallocateAll => self.sql_prepared.clear(),
            Effect::Untracked => self.untracked = true,
            Effect::DiscardAll => {
                let untracked = self.untracked;
                *self = Pins { untracked, ..Pins::default() };
            }
            // A pin taken in a transaction that rolls back stays until released: pinned for
            // too long is safe, unpinned too early is not.
            Effect::Set { .. }
            | Effect::Reset { .. }
            | Effect::ResetAll
            | Effect::Begin
            | Effect::Commit { .. }
            | Effect::Rollback { .. }
            | Effect::Savepoint(_)
            | Effect::Release(_)
            | Effect::RollbackTo(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_until_unlisten() {
        let mut p = Pins::default();
        p.apply(&Effect::Listen("a".into()));
        p.apply(&Effect::Listen("b".into()));
        p.apply(&Effect::Unlisten("a".into()));
        assert!(p.is_pinned());
        p.apply(&Effect::UnlistenAll);
        assert!(!p.is_pinned());
        p.apply(&Effect::TempObject);
        p.apply(&Effect::DiscardAll);
        assert!(!p.is_pinned());
        p.apply(&Effect::Untracked);
        p.apply(&Effect::DiscardAll);
        assert!(p.is_pinned());
    }
}
