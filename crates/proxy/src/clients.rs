//! Who is connected: one entry per logged-in client, for SHOW CLIENTS and the client gauges.
//! Sessions update their own entry's state with atomic stores; nothing here is on a lock
//! per message.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::session::ListenerKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ClientState {
    /// Between transactions, holding no server.
    Idle = 0,
    /// Holding a server.
    Active = 1,
    /// Waiting for a server.
    Waiting = 2,
}

impl ClientState {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientState::Idle => "idle",
            ClientState::Active => "active",
            ClientState::Waiting => "waiting",
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            1 => ClientState::Active,
            2 => ClientState::Waiting,
            _ => ClientState::Idle,
        }
    }
}

#[derive(Debug)]
pub struct ClientInfo {
    pub id: u64,
    pub peer: String,
    pub database: String,
    pub user: String,
    pub application_name: String,
    pub kind: ListenerKind,
    pub connected_at: SystemTime,
    state: AtomicU8,
    pinned: AtomicBool,
    /// Told when the client's database leaves the route table (deleted, or a preview that
    /// expired): the session ends with an error that says so.
    pub(crate) gone: tokio::sync::Notify,
}

impl ClientInfo {
    pub fn state(&self) -> ClientState {
        ClientState::from_u8(self.state.load(Ordering::Relaxed))
    }

    pub fn set_state(&self, s: ClientState) {
        self.state.store(s as u8, Ordering::Relaxed);
    }

    pub fn pinned(&self) -> bool {
        self.pinned.load(Ordering::Relaxed)
    }

    pub fn set_pinned(&self, p: bool) {
        self.pinned.store(p, Ordering::Relaxed);
    }
}

#[derive(Debug, Default)]
pub struct ClientRegistry {
    next: AtomicU64,
    map: Mutex<HashMap<u64, Arc<ClientInfo>>>,
}

impl ClientRegistry {
    pub fn register(
        self: &Arc<Self>,
        peer: &str,
        database: &str,
        user: &str,
        application_name: &str,
        kind: ListenerKind,
    ) -> ClientHandle {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let info = Arc::new(ClientInfo {
            id,
            peer: peer.to_owned(),
            database: database.to_owned(),
            user: user.to_owned(),
            application_name: application_name.to_owned(),
            kind,
            connected_at: SystemTime::now(),
            state: AtomicU8::new(if kind == ListenerKind::Direct {
                ClientState::Active
            } else {
                ClientState::Idle
            } as u8),
            pinned: AtomicBool::new(false),
            gone: tokio::sync::Notify::new(),
        });
        self.map.lock().expect("client registry poisoned").insert(id, Arc::clone(&info));
        ClientHandle { registry: Arc::clone(self), info }
    }

    /// Tells every client whose database `routed` no longer has that it is gone.
    pub(crate) fn unrouted(&self, routed: impl Fn(&str) -> bool) {
        for c in self.map.lock().expect("client registry poisoned").values() {
            if !routed(&c.database) {
                c.gone.notify_one();
            }
        }
    }

    /// Every client, oldest first.
    pub fn all(&self) -> Vec<Arc<ClientInfo>> {
        let mut v: Vec<_> = self.map.lock().expect("client registry poisoned").values().cloned().collect();
        v.sort_by_key(|c| c.id);
        v
    }
}

/// A client's entry; removed when the session ends.
#[derive(Debug)]
pub struct ClientHandle {
    registry: Arc<ClientRegistry>,
    pub info: Arc<ClientInfo>,
}

impl Drop for ClientHandle {
    fn drop(&mut self) {
        self.registry.map.lock().expect("client registry poisoned").remove(&self.info.id);
    }
}

/// The error a session ends with when its database stops being routed.
pub(crate) fn database_gone(database: &str) -> wire::ErrorResponse {
    wire::ErrorResponse::fatal(
        wire::SqlState::ADMIN_SHUTDOWN,
        format!(
            "terminating connection: database \"{database}\" no longer exists (it was deleted, or its preview expired)"
        ),
    )
}
