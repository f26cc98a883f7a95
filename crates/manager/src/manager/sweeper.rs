//! The sweeper: closes connections silent past the heartbeat deadline, gives back the
//! registry slots of users who left, forgets receipts past their time and lets the broker
//! trim history, every `sweep_interval`, from a task holding only a weak reference.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use agentwire_protocol::CloseCode;
use tokio::time::Instant;

use super::UnifiedWebSocketManager;
use super::connection::ConnShared;
use crate::capacity::give_back_map_capacity;

impl UnifiedWebSocketManager {
    /// One pass of the sweeper: closes connections whose peer has been silent past the
    /// heartbeat deadline, shrinks registry shards that users left (a quarter full or
    /// less), forgets receipts past `receipt_ttl` and lets the broker trim history.
    /// Returns how many connections it closed. The sweeper task calls it every
    /// `sweep_interval`.
    pub fn sweep(&self) -> usize {
        let now = Instant::now();
        let policy = self.inner.config.heartbeat;
        let mut closed = 0;
        for shard in self.inner.shards.iter() {
            let mut users = shard.lock().unwrap_or_else(|p| p.into_inner());
            // Users who left took their entries, not the slots: give those back.
            give_back_map_capacity(&mut users);
            let silent: Vec<Arc<ConnShared>> = users
                .values()
                .flat_map(|e| e.conns.iter())
                .filter(|c| policy.is_expired(c.silent_for(now)))
                .cloned()
                .collect();
            drop(users);
            for conn in silent {
                if conn.close(CloseCode::GoingAway) {
                    self.inner
                        .counters
                        .heartbeat_timeouts
                        .fetch_add(1, Ordering::Relaxed);
                    closed += 1;
                }
            }
        }
        self.expire_receipts(now);
        self.inner.broker.sweep();
        closed
    }

    /// Starts the sweeper once, on the first connect inside a runtime. It holds only a
    /// weak reference and ends when the manager is dropped.
    pub(super) fn start_sweeper(&self) {
        if self.inner.sweeper_started.load(Ordering::Relaxed) {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.inner.sweeper_started.swap(true, Ordering::AcqRel) {
            return;
        }
        self.start_renewal(&handle);
        self.start_load_probe(&handle);
        self.every(&handle, self.inner.config.sweep_interval, |m| async move {
            m.sweep();
        });
    }

    /// Runs `pass` every `period` (the first after one period) in a task that holds only a
    /// weak reference and ends once the manager is dropped.
    pub(super) fn every<F, Fut>(
        &self,
        handle: &tokio::runtime::Handle,
        period: std::time::Duration,
        pass: F,
    ) where
        F: Fn(UnifiedWebSocketManager) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let weak = Arc::downgrade(&self.inner);
        handle.spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { break };
                pass(UnifiedWebSocketManager { inner }).await;
            }
        });
    }
}
