//! Direct writes held back until the end of the poll that made them.
//!
//! One publish body holds events of many users, and the in-memory broker delivers each of
//! them while the publish is polled. Written the moment each is delivered, the frames go
//! out one `sendmsg` at a time between the other work of the publish (the next user's
//! history, dedupe, frame), so a client reading many connections is woken for nearly
//! every one of them, and each such wake-up is paid for in the sender's `sendmsg`. Inside
//! a [`HeldWrites`] scope a live event that would be written directly is queued instead,
//! without waking the connection's writer, and the scope writes every such frame when it
//! ends, one after the other: the same `sendmsg`s, in one burst.
//!
//! A scope lives within one synchronous stretch on one thread (one poll: see
//! [`poll_holding`]), never across an `.await`, so a frame is held
//! for microseconds and no other task can find its delivery held by a scope that has
//! gone to sleep. Scopes nest; the outermost one writes. Its end runs on unwinding too.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::sync::Arc;

use super::UnifiedWebSocketManager;
use super::connection::{ConnShared, FanOutTime};

thread_local! {
    /// Open scopes on this thread.
    static DEPTH: Cell<u32> = const { Cell::new(0) };
    /// The connections with frames held back, each after the manager it belongs to (the
    /// in-memory broker may deliver to several managers' connections from one publish).
    static HELD: RefCell<Held> = const {
        RefCell::new(Held { managers: Vec::new(), conns: Vec::new() })
    };
}

#[derive(Default)]
struct Held {
    managers: Vec<UnifiedWebSocketManager>,
    /// Each connection and the index of its manager in `managers`.
    conns: Vec<(usize, Arc<ConnShared>)>,
}

/// Connections (and managers) a finished scope keeps room for; a larger list, grown by
/// one huge publish, is freed.
const HELD_KEEP_CAPACITY: usize = 1024;

/// How many held connections are written under one reading of the clocks
/// ([`FanOutTime`]). A scope writes them one after the other, a few microseconds each, so
/// the time a write is stamped with (the latency metric, the receipt's delivery time) is
/// at most this many writes early, where reading both clocks for every connection was a
/// measurable share of a saturated node's time.
pub(crate) const WRITES_PER_CLOCK_READ: usize = 16;

/// Whether a scope is open on this thread: a direct write may be held back.
#[inline]
pub(crate) fn holding() -> bool {
    DEPTH.with(Cell::get) > 0
}

/// Records that `conn` (of `manager`) holds frames back ([`super::connection::Pushed::Held`])
/// for the open scope to write. Called only while [`holding`].
pub(crate) fn hold(manager: &UnifiedWebSocketManager, conn: &Arc<ConnShared>) {
    HELD.with(|held| {
        let mut held = held.borrow_mut();
        let index = match held
            .managers
            .iter()
            .rposition(|m| Arc::ptr_eq(&m.inner, &manager.inner))
        {
            Some(i) => i,
            None => {
                held.managers.push(manager.clone());
                held.managers.len() - 1
            }
        };
        held.conns.push((index, conn.clone()));
    });
}

/// An open scope: while it lives, direct writes on this thread are held back; the last
/// one to end writes them.
pub(crate) struct HeldWrites(());

impl HeldWrites {
    pub(crate) fn enter() -> Self {
        DEPTH.with(|d| d.set(d.get() + 1));
        HeldWrites(())
    }
}

impl Drop for HeldWrites {
    fn drop(&mut self) {
        let depth = DEPTH.with(|d| {
            let depth = d.get() - 1;
            d.set(depth);
            depth
        });
        if depth > 0 {
            return;
        }
        // Taken out first: writing takes no scope, but the list must not be borrowed
        // while anything else runs.
        let Held {
            mut managers,
            mut conns,
        } = HELD.with(|h| std::mem::take(&mut *h.borrow_mut()));
        let mut now = FanOutTime::default();
        for (i, (index, conn)) in conns.drain(..).enumerate() {
            if i > 0 && i % WRITES_PER_CLOCK_READ == 0 {
                now = FanOutTime::default();
            }
            conn.write_held(&managers[index], &now);
        }
        managers.clear();
        if conns.capacity() <= HELD_KEEP_CAPACITY && managers.capacity() <= HELD_KEEP_CAPACITY {
            HELD.with(|h| {
                let mut h = h.borrow_mut();
                if h.conns.capacity() == 0 {
                    *h = Held { managers, conns };
                }
            });
        }
    }
}

/// Polls `future` with direct writes held back for the length of each poll ([module
/// docs](self)): what its deliveries would write one by one goes out in a burst when the
/// poll returns.
pub(crate) async fn poll_holding<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    std::future::poll_fn(|cx| {
        let _scope = HeldWrites::enter();
        future.as_mut().poll(cx)
    })
    .await
}
