//! A pool's accounting of its server slots and the line of clients waiting for one. A slot
//! is counted from the moment it is taken and is always held by a guard: a [`Reservation`]
//! while its server is being opened, then a [`ServerSlot`] inside the server. Either gives
//! the slot back when dropped, whatever the path (an error, a timeout, a dead server), and
//! wakes a waiting client to open a server in its place; so `open` is never a counter to
//! keep right but the sum of what exists: idle servers, servers out of the idle list, and
//! reservations. It never does I/O and never drops a guard while its lock is held (a guard's
//! drop takes it).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, oneshot};

/// Slots of one pool, shared with the guards that give them back.
pub(crate) struct Ledger<S> {
    state: Mutex<Slots<S>>,
    /// Wakes checkouts held by PAUSE, and PAUSE itself, when slots are given back or the
    /// pool is resumed.
    pub changed: Notify,
}

struct Slots<S> {
    idle: Vec<S>,
    /// Servers that exist outside the idle list: lent to clients, handed to a waiter, or on
    /// their way to being closed.
    lent: u32,
    /// Servers being opened.
    opening: u32,
    waiters: VecDeque<Waiter<S>>,
    paused: bool,
    /// The pool's database left the route table: no server is kept idle any more.
    closed: bool,
}

struct Waiter<S> {
    since: Instant,
    tx: oneshot::Sender<S>,
}

impl<S> Slots<S> {
    fn open(&self) -> u32 {
        self.idle.len() as u32 + self.lent + self.opening
    }

    /// A slot became free: the longest-waiting client still there is woken (its sender
    /// dropped) to open a server itself; one whose wait already ended wakes nobody.
    fn wake_one(&mut self) {
        while let Some(w) = self.waiters.pop_front() {
            if !w.tx.is_closed() {
                return;
            }
        }
    }
}

/// What a checkout does next.
pub(crate) enum Next<S> {
    /// An idle server, now lent.
    Take(S),
    /// A slot to open a new server in.
    Open(Reservation<S>),
    /// The pool is full: a server (or, when the sender is dropped, a free slot) comes here.
    Wait(oneshot::Receiver<S>),
    Paused,
}

/// Counts as a pool reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SlotCounts {
    pub idle: u32,
    /// Servers out of the idle list (in use, or on their way back or out).
    pub in_use: u32,
    pub opening: u32,
}

impl SlotCounts {
    pub fn open(&self) -> u32 {
        self.idle + self.in_use + self.opening
    }
}

impl<S> Ledger<S> {
    pub fn new(paused: bool) -> Arc<Self> {
        Arc::new(Ledger {
            state: Mutex::new(Slots {
                idle: Vec::new(),
                lent: 0,
                opening: 0,
                waiters: VecDeque::new(),
                paused,
                closed: false,
            }),
            changed: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Slots<S>> {
        self.state.lock().expect("pool slots poisoned")
    }

    pub fn counts(&self) -> SlotCounts {
        let s = self.lock();
        SlotCounts { idle: s.idle.len() as u32, in_use: s.lent, opening: s.opening }
    }

    pub fn open(&self) -> u32 {
        self.lock().open()
    }

    pub fn is_paused(&self) -> bool {
        self.lock().paused
    }

    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// How long the longest-waiting client still waiting has waited.
    pub fn max_wait(&self) -> Duration {
        let s = self.lock();
        s.waiters.iter().find(|w| !w.tx.is_closed()).map_or(Duration::ZERO, |w| w.since.elapsed())
    }

    /// An idle server, a slot to open one in (while fewer than `size` are open), or a place
    /// in line.
    pub fn checkout(self: &Arc<Self>, size: u32) -> Next<S> {
        let mut s = self.lock();
        if s.paused {
            return Next::Paused;
        }
        if let Some(server) = s.idle.pop() {
            s.lent += 1;
            return Next::Take(server);
        }
        if s.open() < size {
            s.opening += 1;
            return Next::Open(Reservation { ledger: Arc::downgrade(self) });
        }
        // Clients that gave up would otherwise pile up here until a slot came free.
        s.waiters.retain(|w| !w.tx.is_closed());
        let (tx, rx) = oneshot::channel();
        s.waiters.push_back(Waiter { since: Instant::now(), tx });
        Next::Wait(rx)
    }

    /// A slot to open a server in while fewer than `want` are open, for keeping
    /// `min_pool_size` warm; none while paused or closed.
    pub fn reserve(self: &Arc<Self>, want: u32) -> Option<Reservation<S>> {
        let mut s = self.lock();
        if s.paused || s.closed || s.open() >= want {
            return None;
        }
        s.opening += 1;
        Some(Reservation { ledger: Arc::downgrade(self) })
    }

    /// A lent server coming back clean: to the longest-waiting client, or to the idle list.
    /// Returns it when it is to be closed instead (paused, closed, or more servers open than
    /// `size` and nobody waiting); the caller drops it, outside the lock.
    pub fn checkin(&self, server: S, size: u32) -> Option<S> {
        let mut s = self.lock();
        if s.paused || s.closed {
            return Some(server);
        }
        let mut server = server;
        while let Some(w) = s.waiters.pop_front() {
            match w.tx.send(server) {
                // Still lent: the waiter has it now.
                Ok(()) => return None,
                Err(back) => server = back,
            }
        }
        if s.open() > size {
            return Some(server);
        }
        s.lent -= 1;
        s.idle.push(server);
        None
    }

    /// Lends every idle server, to close them (PAUSE, a moved upstream, a closed pool).
    pub fn take_idle(&self) -> Vec<S> {
        let mut s = self.lock();
        let idle = std::mem::take(&mut s.idle);
        s.lent += idle.len() as u32;
        idle
    }

    /// Lets `sort` split the idle list (oldest first) into servers kept idle and servers to
    /// close, which are returned lent for the caller to drop outside the lock.
    pub fn sweep_idle(&self, sort: impl FnOnce(Vec<S>) -> (Vec<S>, Vec<S>)) -> Vec<S> {
        let mut s = self.lock();
        let (kept, retired) = sort(std::mem::take(&mut s.idle));
        s.idle = kept;
        s.lent += retired.len() as u32;
        retired
    }

    /// `pool_size` changed: every waiting client looks again (a larger pool has room for it).
    pub fn resized(&self) {
        self.lock().waiters.clear();
    }

    /// Pausing or resuming makes every waiting client look again: waiting for a server in a
    /// paused pool is waiting for RESUME (nothing is handed over meanwhile), and after RESUME
    /// the servers PAUSE closed have left room.
    pub fn set_paused(&self, paused: bool) {
        let mut s = self.lock();
        s.paused = paused;
        s.waiters.clear();
        drop(s);
        self.changed.notify_waiters();
    }

    /// For a pool whose database is gone: nothing is kept idle from now on. Returns the idle
    /// servers, lent, to be dropped.
    pub fn close(&self) -> Vec<S> {
        self.lock().closed = true;
        self.take_idle()
    }

    fn give_back(&self, opening: bool) {
        let mut s = self.lock();
        if opening {
            s.opening -= 1;
        } else {
            s.lent -= 1;
        }
        s.wake_one();
        drop(s);
        self.changed.notify_waiters();
    }
}

/// A slot taken to open a server in. Dropped (the connect failed, timed out or was given
/// up), it gives the slot back.
pub(crate) struct Reservation<S> {
    ledger: Weak<Ledger<S>>,
}

impl<S> Reservation<S> {
    /// The server was opened: the slot is its own from now on, and is given back when the
    /// returned guard (kept inside the server) is dropped.
    pub fn opened(mut self) -> ServerSlot<S> {
        let ledger = std::mem::take(&mut self.ledger);
        if let Some(l) = ledger.upgrade() {
            let mut s = l.lock();
            s.opening -= 1;
            s.lent += 1;
        }
        ServerSlot { ledger }
    }
}

impl<S> Drop for Reservation<S> {
    fn drop(&mut self) {
        if let Some(l) = self.ledger.upgrade() {
            l.give_back(true);
        }
    }
}

/// The slot of a server that exists. Dropped with the server, it gives the slot back.
pub(crate) struct ServerSlot<S> {
    ledger: Weak<Ledger<S>>,
}

impl<S> Drop for ServerSlot<S> {
    fn drop(&mut self) {
        if let Some(l) = self.ledger.upgrade() {
            l.give_back(false);
        }
    }
}

#[cfg(test)]
mod tests;
