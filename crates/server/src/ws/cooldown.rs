//! The cool-down after a frame flood: a user whose connection was closed with 1008 for
//! sending frames faster than `--client-frame-rate` is refused at the handshake (429
//! `rate_limited`, `Retry-After`) for `--client-frame-cooldown`, on this node.
//!
//! Why: the per-connection limit closes a flooder, but a flooder that connects again at
//! once floods again, and each round costs the node a handshake, a registration and the
//! frames read before the next 1008. Refusing the user's next handshakes right after the
//! token is verified costs one map look-up, before the upgrade, the manager and any
//! replay. The table is per node (it does not go through the broker): with several nodes
//! a flooder is closed once per node per window, which keeps each node's cost bounded.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use agentwire_protocol::UserId;
use tokio::time::Instant;

/// Most users held in cool-down at once on a node. Past it the user nearest the end of
/// its window is let go early (`agentwire_client_frame_cooldowns_cut_total`).
pub(crate) const MAX_COOLING_USERS: usize = 65_536;

/// The users in cool-down on this node.
#[derive(Debug)]
pub(crate) struct Cooldowns {
    window: Duration,
    table: Mutex<Table>,
}

/// Users and when their window ends; `order` holds the same entries by end (every window
/// has the same length, so that is the order they were started in). A user cooled down
/// again appears twice in `order`; only the entry matching `until` counts.
#[derive(Debug, Default)]
struct Table {
    until: HashMap<UserId, Instant>,
    order: VecDeque<(UserId, Instant)>,
}

/// What [`Cooldowns::start`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Started {
    /// The user is in cool-down; none was cut short.
    Fresh,
    /// The table was full: another user's window was cut short to make room.
    CutAnother,
}

impl Cooldowns {
    /// `window` zero turns the cool-down off.
    pub(crate) fn new(window: Duration) -> Cooldowns {
        Cooldowns {
            window,
            table: Mutex::new(Table::default()),
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        // Every change leaves the table whole (inserts and removals of owned values).
        self.table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Puts `user` in cool-down from now; `None` when the cool-down is off.
    pub(crate) fn start(&self, user: &UserId) -> Option<Started> {
        if self.window.is_zero() {
            return None;
        }
        let now = Instant::now();
        let until = now + self.window;
        let mut t = self.table();
        t.forget_ended(now);
        let mut started = Started::Fresh;
        while t.order.len() >= MAX_COOLING_USERS {
            if t.pop_front().is_some() {
                started = Started::CutAnother;
            }
        }
        t.until.insert(user.clone(), until);
        t.order.push_back((user.clone(), until));
        Some(started)
    }

    /// How long `user` is still refused; `None` when it may connect.
    pub(crate) fn remaining(&self, user: &UserId) -> Option<Duration> {
        if self.window.is_zero() {
            return None;
        }
        let now = Instant::now();
        let t = self.table();
        let until = *t.until.get(user)?;
        (until > now).then(|| until - now)
    }

    /// Users in cool-down (windows that ended and were not yet swept included).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.table().until.len()
    }
}

impl Table {
    /// Drops the entries whose window ended.
    fn forget_ended(&mut self, now: Instant) {
        while self.order.front().is_some_and(|(_, until)| *until <= now) {
            self.pop_front();
        }
    }

    /// Drops the oldest entry; the user it names when it was the user's current window.
    fn pop_front(&mut self) -> Option<UserId> {
        let (user, until) = self.order.pop_front()?;
        if self.until.get(&user) == Some(&until) {
            self.until.remove(&user);
            return Some(user);
        }
        None
    }
}

/// Whole seconds for `Retry-After`, rounded up (at least 1).
pub(crate) fn retry_after_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0 || d.is_zero())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(s: &str) -> UserId {
        UserId::new(s).expect("valid user id")
    }

    #[tokio::test(start_paused = true)]
    async fn a_user_is_refused_for_the_window_then_let_in() {
        let c = Cooldowns::new(Duration::from_secs(10));
        assert_eq!(c.remaining(&user("alice")), None);
        assert_eq!(c.start(&user("alice")), Some(Started::Fresh));
        assert_eq!(c.remaining(&user("alice")), Some(Duration::from_secs(10)));
        assert_eq!(c.remaining(&user("bob")), None, "only the flooder");
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(c.remaining(&user("alice")), Some(Duration::from_secs(6)));
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(c.remaining(&user("alice")), None);
        // The next start sweeps the ended window.
        c.start(&user("bob"));
        assert_eq!(c.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_second_flood_restarts_the_window() {
        let c = Cooldowns::new(Duration::from_secs(10));
        c.start(&user("alice"));
        tokio::time::advance(Duration::from_secs(8)).await;
        c.start(&user("alice"));
        tokio::time::advance(Duration::from_secs(5)).await;
        // The first window's entry is swept without ending the second.
        c.start(&user("bob"));
        assert_eq!(c.remaining(&user("alice")), Some(Duration::from_secs(5)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_table_cuts_the_oldest_window() {
        let c = Cooldowns::new(Duration::from_secs(10));
        for i in 0..MAX_COOLING_USERS {
            assert_eq!(c.start(&user(&format!("u{i}"))), Some(Started::Fresh));
        }
        assert_eq!(c.start(&user("late")), Some(Started::CutAnother));
        assert_eq!(c.len(), MAX_COOLING_USERS);
        assert_eq!(c.remaining(&user("u0")), None, "the oldest was let go");
        assert!(c.remaining(&user("late")).is_some());
    }

    #[test]
    fn off_when_the_window_is_zero() {
        let c = Cooldowns::new(Duration::ZERO);
        assert_eq!(c.start(&user("alice")), None);
        assert_eq!(c.remaining(&user("alice")), None);
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(10)), 10);
        assert_eq!(retry_after_secs(Duration::from_millis(9_001)), 10);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }
}
