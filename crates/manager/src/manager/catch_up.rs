//! Catching a connection up: replaying history page by page, paced by the writer, until it
//! can go live; and catching a user's connections up again when the broker says
//! deliveries may have been missed (a resync).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use agentwire_protocol::{CloseCode, UserId};

use super::UnifiedWebSocketManager;
use super::connection::{ConnShared, GoLive};

/// The wait of a catch-up whose history reads make no progress: backoff from
/// [`STALL_FIRST`] doubling to [`STALL_MAX`], for at most `ManagerConfig::catch_up_wait`
/// in a row.
struct Stall {
    limit: std::time::Duration,
    waited: std::time::Duration,
    next: std::time::Duration,
}

/// The first wait of a stalled catch-up.
const STALL_FIRST: std::time::Duration = std::time::Duration::from_millis(1);
/// The longest single wait of a stalled catch-up.
const STALL_MAX: std::time::Duration = std::time::Duration::from_millis(100);

impl Stall {
    fn new(limit: std::time::Duration) -> Self {
        Stall {
            limit,
            waited: std::time::Duration::ZERO,
            next: STALL_FIRST,
        }
    }

    /// Progress was made: the next stall starts from scratch.
    fn reset(&mut self) {
        self.waited = std::time::Duration::ZERO;
        self.next = STALL_FIRST;
    }

    /// Waits before the next read; `false` once the limit is spent.
    async fn wait(&mut self) -> bool {
        if self.waited >= self.limit {
            return false;
        }
        let d = self.next.min(self.limit - self.waited);
        tokio::time::sleep(d).await;
        self.waited += d;
        self.next = (self.next * 2).min(STALL_MAX);
        true
    }
}

impl UnifiedWebSocketManager {
    pub(super) fn spawn_catch_up(
        &self,
        shared: Arc<ConnShared>,
        first: Option<crate::broker::History>,
    ) {
        let manager = self.clone();
        let task = async move { manager.catch_up(shared, first).await };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(task);
            }
            Err(_) => tracing::error!(
                "agentwire manager used outside a tokio runtime; stream not started"
            ),
        }
    }

    /// Replays history after what the connection has, then goes live. Runs at connect,
    /// when a live event arrives past a gap, and on a resync — one at a time per
    /// connection: a resync of a connection that is catching up makes the running
    /// catch-up read history once more instead of starting another
    /// (`ConnShared::request_resync`), so replays never interleave.
    pub(super) async fn catch_up(
        &self,
        shared: Arc<ConnShared>,
        mut page: Option<crate::broker::History>,
    ) {
        let counters = &self.inner.counters;
        let limit = self.inner.config.replay_page.max(1);
        let mut stall = Stall::new(self.inner.config.catch_up_wait);
        loop {
            if shared.closing().is_some() {
                return;
            }
            let before = shared.last_sent();
            let history = match page.take() {
                Some(h) => h,
                None => match self.inner.broker.history(&shared.user, before, limit).await {
                    Ok(h) => h,
                    Err(e) if e.is_transient() && stall.wait().await => {
                        tracing::debug!(connection = %shared.id, error = %e, "history read failed; retrying");
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(connection = %shared.id, error = %e, "history read failed");
                        self.catch_up_failed(&shared);
                        return;
                    }
                },
            };
            if shared.epoch().is_some_and(|e| e != history.epoch) {
                shared.close(CloseCode::TryAgainLater);
                return;
            }
            if let Some((from, to)) = history.gap
                && to > shared.last_sent()
            {
                shared.push_gap(from.max(shared.last_sent().next()), to, counters);
                shared.skip_to(to);
            }
            for event in &history.events {
                if !shared.push_replayed(event, counters).await {
                    return;
                }
            }
            // Go live only once history is read to its end: a replay longer than one page
            // must not wait for the next live event to fetch the rest.
            if shared.last_sent() >= history.last_seq {
                match shared.try_go_live(counters) {
                    GoLive::Done => return,
                    GoLive::ReadAgain => {
                        stall.reset();
                        continue;
                    }
                    GoLive::Behind => {}
                }
            }
            // History has more pages, or pending live events start past what history
            // returned: read again. History holds every delivered event, so progress is
            // certain unless the broker breaks that contract; then wait with backoff, and
            // give up after `catch_up_wait` rather than spin.
            if shared.last_sent() != before {
                stall.reset();
            } else if !stall.wait().await {
                tracing::error!(connection = %shared.id, "history does not reach delivered events");
                self.catch_up_failed(&shared);
                return;
            }
        }
    }

    pub(super) fn catch_up_failed(&self, shared: &ConnShared) {
        if shared.close(CloseCode::InternalError) {
            self.inner
                .counters
                .catch_up_failures
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Catches every live connection of `user` on this node up from history, as when the
    /// broker may have missed deliveries to them: what the manager does when its broker
    /// subscription calls [`Subscriber::resync`](crate::Subscriber::resync). A connection already catching up reads
    /// history once more before it goes live. Returns how many catch-ups it started.
    pub fn resync_user(&self, user: &UserId) -> usize {
        self.inner.counters.resyncs.fetch_add(1, Ordering::Relaxed);
        let shard = self.shard(user);
        let Some(entry) = shard.get(user) else {
            return 0;
        };
        let mut started = 0;
        for conn in &entry.conns {
            if conn.request_resync() {
                self.spawn_catch_up(conn.clone(), None);
                started += 1;
            }
        }
        started
    }
}
