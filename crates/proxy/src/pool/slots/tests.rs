//! The ledger driven by random sequences of what happens to a pool (checkouts, returns,
//! servers that break idle or in use, connects that succeed or fail, clients that give up,
//! maintenance ticks, PAUSE/RESUME, reloads that resize or close the pool), with fake
//! servers that count themselves: after every step the counts are what exists, and no
//! client waits while the pool has room.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::prelude::*;
use tokio::sync::oneshot::error::TryRecvError;

use super::*;

/// Counts fake servers alive.
struct Live(Arc<AtomicUsize>);

impl Live {
    fn new(n: &Arc<AtomicUsize>) -> Self {
        n.fetch_add(1, Ordering::SeqCst);
        Live(Arc::clone(n))
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A server: what exists is what is alive, and its slot goes with it.
struct Fake {
    healthy: bool,
    _slot: ServerSlot<Fake>,
    _live: Live,
}

enum Client {
    Holding(Fake),
    Opening(Reservation<Fake>),
    Waiting(oneshot::Receiver<Fake>),
    Paused,
}

#[derive(Debug, Clone)]
enum Op {
    Checkout,
    ConnectOk(usize),
    ConnectFails(usize),
    Checkin(usize),
    /// A client's server broke while in use: dropped, not returned.
    Broken(usize),
    /// An idle server's socket closed.
    IdleDies(usize),
    /// A waiting client's pool_timeout.
    GivesUp(usize),
    Tick {
        min: u32,
        connect_ok: bool,
    },
    Pause,
    Resume,
    Resize(u32),
    Close,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Checkout),
        3 => any::<usize>().prop_map(Op::ConnectOk),
        2 => any::<usize>().prop_map(Op::ConnectFails),
        3 => any::<usize>().prop_map(Op::Checkin),
        1 => any::<usize>().prop_map(Op::Broken),
        1 => any::<usize>().prop_map(Op::IdleDies),
        1 => any::<usize>().prop_map(Op::GivesUp),
        2 => (0u32..6, any::<bool>()).prop_map(|(min, connect_ok)| Op::Tick { min, connect_ok }),
        1 => Just(Op::Pause),
        1 => Just(Op::Resume),
        1 => (1u32..6).prop_map(Op::Resize),
        1 => Just(Op::Close),
    ]
}

struct World {
    ledger: Arc<Ledger<Fake>>,
    clients: Vec<Client>,
    live: Arc<AtomicUsize>,
    size: u32,
    /// The largest `size` yet: a smaller one closes servers as they come back, not at once.
    size_high: u32,
}

impl World {
    fn new(size: u32) -> Self {
        World {
            ledger: Ledger::new(false),
            clients: Vec::new(),
            live: Arc::new(AtomicUsize::new(0)),
            size,
            size_high: size,
        }
    }

    fn server(&self, r: Reservation<Fake>) -> Fake {
        Fake { healthy: true, _slot: r.opened(), _live: Live::new(&self.live) }
    }

    /// What the pool's checkout loop does until it holds something: a broken idle server is
    /// dropped and the client goes round again.
    fn checkout(&self) -> Client {
        loop {
            match self.ledger.checkout(self.size) {
                Next::Take(s) if s.healthy => return Client::Holding(s),
                Next::Take(broken) => drop(broken),
                Next::Open(r) => return Client::Opening(r),
                Next::Wait(rx) => return Client::Waiting(rx),
                Next::Paused => return Client::Paused,
            }
        }
    }

    /// Index of the `n`th client (wrapping) for which `pick` holds.
    fn nth(&self, n: usize, pick: impl Fn(&Client) -> bool) -> Option<usize> {
        let matching: Vec<usize> = (0..self.clients.len()).filter(|&i| pick(&self.clients[i])).collect();
        (!matching.is_empty()).then(|| matching[n % matching.len()])
    }

    fn checkin(&self, s: Fake) {
        if let Some(closing) = self.ledger.checkin(s, self.size) {
            drop(closing);
        }
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Checkout => {
                let c = self.checkout();
                self.clients.push(c);
            }
            Op::ConnectOk(n) => {
                if let Some(i) = self.nth(n, |c| matches!(c, Client::Opening(_))) {
                    let Client::Opening(r) = self.clients.swap_remove(i) else { unreachable!() };
                    let s = self.server(r);
                    self.clients.push(Client::Holding(s));
                }
            }
            Op::ConnectFails(n) => {
                if let Some(i) = self.nth(n, |c| matches!(c, Client::Opening(_))) {
                    drop(self.clients.swap_remove(i));
                }
            }
            Op::Checkin(n) => {
                if let Some(i) = self.nth(n, |c| matches!(c, Client::Holding(_))) {
                    let Client::Holding(s) = self.clients.swap_remove(i) else { unreachable!() };
                    self.checkin(s);
                }
            }
            Op::Broken(n) => {
                if let Some(i) = self.nth(n, |c| matches!(c, Client::Holding(_))) {
                    drop(self.clients.swap_remove(i));
                }
            }
            Op::IdleDies(n) => {
                let none = self.ledger.sweep_idle(|mut idle| {
                    let len = idle.len();
                    if len > 0 {
                        idle[n % len].healthy = false;
                    }
                    (idle, Vec::new())
                });
                assert!(none.is_empty());
            }
            Op::GivesUp(n) => {
                if let Some(i) = self.nth(n, |c| matches!(c, Client::Waiting(_))) {
                    let Client::Waiting(mut rx) = self.clients.swap_remove(i) else { unreachable!() };
                    // As the pool's checkout does at its deadline: a server sent meanwhile goes on.
                    rx.close();
                    if let Ok(s) = rx.try_recv() {
                        self.checkin(s);
                    }
                }
            }
            Op::Tick { min, connect_ok } => {
                let retired = self.ledger.sweep_idle(|idle| idle.into_iter().partition(|s| s.healthy));
                drop(retired);
                let want = min.min(self.size);
                for _ in 0..want {
                    let Some(r) = self.ledger.reserve(want) else { break };
                    if !connect_ok {
                        drop(r);
                        break;
                    }
                    let s = self.server(r);
                    self.checkin(s);
                }
            }
            Op::Pause => {
                self.ledger.set_paused(true);
                drop(self.ledger.take_idle());
            }
            Op::Resume => self.ledger.set_paused(false),
            Op::Resize(n) => {
                self.size = n;
                self.size_high = self.size_high.max(n);
                self.ledger.resized();
            }
            Op::Close => drop(self.ledger.close()),
        }
    }

    /// Lets every woken client act, as their tasks would, until none has anything to do.
    fn settle(&mut self) {
        loop {
            let mut acted = false;
            for i in 0..self.clients.len() {
                let next = match &mut self.clients[i] {
                    Client::Waiting(rx) => match rx.try_recv() {
                        Ok(s) if s.healthy => Some(Client::Holding(s)),
                        Ok(broken) => {
                            drop(broken);
                            Some(self.checkout())
                        }
                        // A slot came free: open a server in it.
                        Err(TryRecvError::Closed) => Some(self.checkout()),
                        Err(TryRecvError::Empty) => None,
                    },
                    Client::Paused if !self.ledger.is_paused() => Some(self.checkout()),
                    _ => None,
                };
                if let Some(c) = next {
                    self.clients[i] = c;
                    acted = true;
                }
            }
            if !acted {
                return;
            }
        }
    }

    fn check(&self) -> Result<(), TestCaseError> {
        let c = self.ledger.counts();
        let holding = self.clients.iter().filter(|c| matches!(c, Client::Holding(_))).count() as u32;
        let opening = self.clients.iter().filter(|c| matches!(c, Client::Opening(_))).count() as u32;
        let waiting = self.clients.iter().filter(|c| matches!(c, Client::Waiting(_))).count();
        prop_assert_eq!(c.open(), c.idle + c.in_use + c.opening);
        prop_assert_eq!(c.in_use, holding, "servers out of the idle list are the ones clients hold");
        prop_assert_eq!(c.opening, opening, "reservations are the connects in flight");
        prop_assert_eq!(
            self.live.load(Ordering::SeqCst) as u32,
            c.idle + c.in_use,
            "counted servers are the servers that exist"
        );
        prop_assert_eq!(self.ledger.open(), c.open());
        prop_assert!(
            c.open() <= self.size_high,
            "{} open for a pool of at most {}",
            c.open(),
            self.size_high
        );
        if waiting > 0 && !self.ledger.is_paused() {
            prop_assert!(c.open() >= self.size, "{waiting} waiting with {} of {} open", c.open(), self.size);
        }
        if self.ledger.is_paused() || self.ledger.is_closed() {
            prop_assert_eq!(c.idle, 0, "nothing idles in a paused or closed pool");
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn counts_are_what_exists_after_any_sequence(size in 1u32..6, ops in proptest::collection::vec(op(), 1..80)) {
        let mut w = World::new(size);
        for op in &ops {
            w.apply(op);
            w.settle();
            w.check()?;
        }
        // Everyone leaves: what is left is idle, then nothing once that is closed too.
        w.ledger.set_paused(false);
        while let Some(c) = w.clients.pop() {
            match c {
                Client::Holding(s) => w.checkin(s),
                gone => drop(gone),
            }
            w.settle();
            w.check()?;
        }
        let c = w.ledger.counts();
        prop_assert_eq!((c.in_use, c.opening), (0, 0));
        drop(w.ledger.take_idle());
        prop_assert_eq!(w.ledger.open(), 0);
        prop_assert_eq!(w.live.load(Ordering::SeqCst), 0);
    }
}

#[test]
fn a_failed_connect_wakes_a_waiter_to_open_one_itself() {
    let mut w = World::new(1);
    w.apply(&Op::Checkout);
    w.apply(&Op::Checkout);
    assert!(matches!(w.clients[1], Client::Waiting(_)));
    w.apply(&Op::ConnectFails(0));
    w.settle();
    assert!(matches!(w.clients[0], Client::Opening(_)), "the waiter got the slot back");
    assert_eq!(w.ledger.counts(), SlotCounts { idle: 0, in_use: 0, opening: 1 });
}

#[test]
fn a_waiter_that_gave_up_does_not_swallow_a_wakeup() {
    let mut w = World::new(1);
    for _ in 0..3 {
        w.apply(&Op::Checkout);
    }
    // The first waiter (client 1) leaves; client 2 still waits.
    let Client::Waiting(rx) = w.clients.remove(1) else { panic!("client 1 waits") };
    drop(rx);
    w.apply(&Op::ConnectFails(0));
    w.settle();
    assert_eq!(w.clients.len(), 1);
    assert!(matches!(w.clients[0], Client::Opening(_)), "the remaining waiter was woken");
}

#[test]
fn warm_up_that_fails_gives_back_every_slot() {
    let mut w = World::new(5);
    w.apply(&Op::Tick { min: 5, connect_ok: true });
    assert_eq!(w.ledger.counts(), SlotCounts { idle: 5, in_use: 0, opening: 0 });
    // The instance restarts: every idle server dies, and the refill fails while it is down.
    for i in 0..5 {
        w.apply(&Op::IdleDies(i));
    }
    w.apply(&Op::Tick { min: 5, connect_ok: false });
    assert_eq!(w.ledger.open(), 0);
    w.apply(&Op::Tick { min: 5, connect_ok: true });
    assert_eq!(w.ledger.counts(), SlotCounts { idle: 5, in_use: 0, opening: 0 });
    assert_eq!(w.live.load(Ordering::SeqCst), 5);
}

#[test]
fn clients_waiting_when_paused_look_again_at_resume() {
    let mut w = World::new(1);
    for _ in 0..4 {
        w.apply(&Op::Checkout);
    }
    w.apply(&Op::ConnectOk(0));
    w.apply(&Op::Pause);
    // The one server comes back and is closed: one slot, three waiters.
    w.apply(&Op::Checkin(0));
    w.settle();
    assert!(
        w.clients.iter().all(|c| matches!(c, Client::Paused)),
        "nobody waits for a server in a paused pool"
    );
    w.apply(&Op::Resume);
    w.settle();
    let opening = w.clients.iter().filter(|c| matches!(c, Client::Opening(_))).count();
    let waiting = w.clients.iter().filter(|c| matches!(c, Client::Waiting(_))).count();
    assert_eq!((opening, waiting), (1, 2));
}
