//! One server connection owned by a pool: the stream, its own read and write buffers (they
//! belong to the server, not to the clients that borrow it, so memory scales with servers),
//! and what the proxy knows of its session state: statements prepared on it and settings
//! applied to it.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use futures_util::FutureExt;
use tokio::io::AsyncReadExt;

use super::settings::Settings;
use crate::stream::UpstreamStream;

/// Decrements the pool's count of open servers when the connection is dropped.
pub(super) struct Slot {
    pub(super) release: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(f) = self.release.take() {
            f();
        }
    }
}

pub struct ServerConn {
    pub id: u64,
    pub stream: UpstreamStream,
    pub pid: i32,
    pub secret: i32,
    pub rbuf: BytesMut,
    pub wbuf: BytesMut,
    pub prepared: HashSet<Arc<str>>,
    pub settings: Settings,
    pub created: Instant,
    pub last_used: Instant,
    pub generation: u64,
    /// It broke the protocol: whatever it holds, it is closed when given back.
    pub broken: bool,
    pub(super) _slot: Slot,
}

impl std::fmt::Debug for ServerConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConn").field("id", &self.id).field("pid", &self.pid).finish_non_exhaustive()
    }
}

impl ServerConn {
    /// An idle server has nothing to say: if it has (a FATAL before closing, say) or its
    /// socket is closed, it is not fit to use.
    pub fn is_healthy(&mut self) -> bool {
        if !self.rbuf.is_empty() {
            return false;
        }
        self.stream.read_buf(&mut self.rbuf).now_or_never().is_none()
    }

    /// Frees buffer memory held while idle beyond a modest size.
    pub fn shrink(&mut self) {
        const KEEP: usize = 64 * 1024;
        if self.rbuf.is_empty() && self.rbuf.capacity() > KEEP {
            self.rbuf = BytesMut::new();
        }
        if self.wbuf.is_empty() && self.wbuf.capacity() > KEEP {
            self.wbuf = BytesMut::new();
        }
    }
}
