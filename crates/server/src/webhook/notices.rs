//! The pending notices of one node: each run end the manager tells of waits until
//! `--receipt-webhook-after`, then the user's receipt is read (every node's, with
//! `--broker redis`); a run whose terminal event was acknowledged needs no notice, any other's is sent (`send`). At most
//! `--receipt-webhook-max-pending` wait or are being sent at once.
//!
//! The task holds the manager weakly and ends when the manager is dropped.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use agentwire_manager::{RunEnded, UnifiedWebSocketManager, WeakManager};
use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::json;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::send::{Outcome, Sender};
use super::{WebhookConfigError, WebhookSettings};

/// The longest the task sleeps, so it notices the manager is gone.
const IDLE_WAKE: Duration = Duration::from_secs(1);

type Labels = [(&'static str, &'static str); 1];

/// The webhook's metrics.
#[derive(Debug, Clone, Default)]
struct WebhookMetrics {
    sent: Counter,
    acked: Counter,
    failed: Family<Labels, Counter>,
    dropped: Family<Labels, Counter>,
    pending: Gauge,
}

impl WebhookMetrics {
    fn register(registry: &mut Registry) -> WebhookMetrics {
        let m = WebhookMetrics::default();
        registry.register(
            "agentwire_receipt_webhook_sent",
            "Receipt webhook notices the receiver took (2xx)",
            m.sent.clone(),
        );
        registry.register(
            "agentwire_receipt_webhook_acked",
            "Run ends whose terminal event was acknowledged within --receipt-webhook-after \
             (no notice)",
            m.acked.clone(),
        );
        registry.register(
            "agentwire_receipt_webhook_failed",
            "Failed receipt webhook attempts, by reason (timeout, request, status_5xx, \
             status_429, status_4xx)",
            m.failed.clone(),
        );
        registry.register(
            "agentwire_receipt_webhook_dropped",
            "Receipt webhook notices never taken, by reason (full: \
             --receipt-webhook-max-pending were pending; refused: a 4xx other than 429; \
             retries: --receipt-webhook-retries spent)",
            m.dropped.clone(),
        );
        registry.register(
            "agentwire_receipt_webhook_pending",
            "Receipt webhook notices waiting for their time or being sent (at most \
             --receipt-webhook-max-pending)",
            m.pending.clone(),
        );
        m
    }
}

#[derive(Debug, Default)]
struct Due {
    at: BTreeMap<(Instant, u64), RunEnded>,
    next: u64,
}

#[derive(Debug)]
struct Shared {
    due: Mutex<Due>,
    /// Notices waiting or being sent.
    pending: AtomicUsize,
    wake: Notify,
    sender: Sender,
    metrics: WebhookMetrics,
    after: Duration,
    max_pending: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Due> {
        self.due.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Schedules the check of one run end, unless the bound is reached.
    fn offer(&self, ended: RunEnded) {
        let taken = self
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_pending).then_some(n + 1)
            })
            .is_ok();
        if !taken {
            self.metrics
                .dropped
                .get_or_create(&[("reason", "full")])
                .inc();
            return;
        }
        self.metrics.pending.inc();
        let at = Instant::now() + self.after;
        let mut due = self.lock();
        let tick = due.next;
        due.next += 1;
        let first = due
            .at
            .first_key_value()
            .is_none_or(|(k, _)| (at, tick) < *k);
        due.at.insert((at, tick), ended);
        drop(due);
        if first {
            self.wake.notify_one();
        }
    }

    fn done(&self) {
        self.pending.fetch_sub(1, Ordering::AcqRel);
        self.metrics.pending.dec();
    }
}

/// The receipt webhook of one node, built and not yet observing a manager.
#[derive(Debug)]
pub(crate) struct ReceiptWebhook {
    settings: WebhookSettings,
    sender: Sender,
}

impl ReceiptWebhook {
    /// The webhook of `settings`: its client (with the system's CA certificates for https).
    ///
    /// # Errors
    /// [`WebhookConfigError::Start`] when the client cannot be built, or outside a tokio
    /// runtime (the webhook's task runs on it).
    pub(crate) fn new(settings: WebhookSettings) -> Result<ReceiptWebhook, WebhookConfigError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(WebhookConfigError::Start(
                "the receipt webhook needs a tokio runtime to run on".into(),
            ));
        }
        let sender = Sender::new(settings.clone()).map_err(WebhookConfigError::Start)?;
        Ok(ReceiptWebhook { settings, sender })
    }

    /// Observes `manager`'s run ends from now on, with its metrics in `registry`, and
    /// starts its task. A manager observed by another server's webhook already (one
    /// manager under two servers) keeps that one; this one is logged and left idle.
    pub(crate) fn attach(self, manager: &UnifiedWebSocketManager, registry: &mut Registry) {
        let shared = Arc::new(Shared {
            due: Mutex::default(),
            pending: AtomicUsize::new(0),
            wake: Notify::new(),
            metrics: WebhookMetrics::register(registry),
            after: self.settings.after,
            max_pending: self.settings.max_pending,
            sender: self.sender,
        });
        let observer = Arc::downgrade(&shared);
        let observed = manager.observe_run_ends(move |ended| {
            if let Some(shared) = observer.upgrade() {
                shared.offer(ended);
            }
        });
        if let Err(e) = observed {
            tracing::warn!(error = %e, "the receipt webhook of this server sends nothing");
            return;
        }
        tracing::info!(url = %self.settings.display_url, after = ?self.settings.after, "receipt webhook on");
        tokio::spawn(run(shared, manager.downgrade()));
    }
}

async fn run(shared: Arc<Shared>, manager: WeakManager) {
    loop {
        let next = shared.lock().at.first_key_value().map(|(k, _)| k.0);
        let nap = next
            .map_or(IDLE_WAKE, |at| at.saturating_duration_since(Instant::now()))
            .min(IDLE_WAKE);
        tokio::select! {
            () = tokio::time::sleep(nap) => {}
            () = shared.wake.notified() => {}
        }
        let Some(manager) = manager.upgrade() else {
            break;
        };
        let now = Instant::now();
        let ready: Vec<RunEnded> = {
            let mut due = shared.lock();
            let mut ready = Vec::new();
            while let Some(entry) = due.at.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                ready.push(entry.remove());
            }
            ready
        };
        for ended in ready {
            check(&shared, &manager, ended);
        }
    }
}

/// How long a check waits to read the receipt again after the store failed.
const CHECK_RETRY: Duration = Duration::from_secs(1);

/// Reads the user's receipt for a run end that is due (the cluster's, with a shared
/// store), on a task of its own: no notice when its terminal event was acknowledged, else
/// one is sent. A receipt that cannot be read is read again after [`CHECK_RETRY`].
fn check(shared: &Arc<Shared>, manager: &UnifiedWebSocketManager, ended: RunEnded) {
    let shared = shared.clone();
    let manager = manager.clone();
    tokio::spawn(async move {
        let (delivered, acked) = match manager.receipt_in(&ended.user_id, &ended.epoch).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "the receipt webhook could not read a receipt; again shortly");
                let mut due = shared.lock();
                let tick = due.next;
                due.next += 1;
                due.at.insert((Instant::now() + CHECK_RETRY, tick), ended);
                return;
            }
        };
        drop(manager);
        if acked >= ended.seq {
            shared.metrics.acked.inc();
            shared.done();
            return;
        }
        let body = notice(&shared, &ended, delivered, acked);
        let metrics = &shared.metrics;
        let outcome = shared
            .sender
            .deliver(body, |f| {
                metrics
                    .failed
                    .get_or_create(&[("reason", f.reason())])
                    .inc();
            })
            .await;
        match outcome {
            Outcome::Sent => metrics.sent.inc(),
            Outcome::Refused => metrics
                .dropped
                .get_or_create(&[("reason", "refused")])
                .inc(),
            Outcome::RetriesSpent => metrics
                .dropped
                .get_or_create(&[("reason", "retries")])
                .inc(),
        };
        shared.done();
    });
}

/// The notice's JSON body: the same bytes at every attempt.
fn notice(
    shared: &Shared,
    ended: &RunEnded,
    delivered: agentwire_protocol::Seq,
    acked: agentwire_protocol::Seq,
) -> Bytes {
    let state = match (ended.event_type, ended.stalled) {
        (_, true) => "stalled",
        (agentwire_protocol::EventType::AgentCompleted, _) => "completed",
        _ => "failed",
    };
    let body = json!({
        "type": "run_not_acked",
        "user_id": ended.user_id,
        "run_id": ended.run_id,
        "epoch": ended.epoch,
        "state": state,
        "terminal": {
            "seq": ended.seq,
            "type": ended.event_type.as_str(),
            "delivered": delivered >= ended.seq,
            "acked": false,
        },
        "delivered_seq": delivered,
        "acked_seq": acked,
        "after_ms": u64::try_from(shared.after.as_millis()).unwrap_or(u64::MAX),
        "receipt": crate::api::receipt_path(&ended.user_id, Some(&ended.run_id)),
    });
    Bytes::from(body.to_string())
}
