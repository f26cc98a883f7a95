//! The contract of [`ReceiptStore`] (its docs number the rules) as async properties
//! generic over a [`ReceiptHarness`] that hands out several handles on one fresh store (as
//! several nodes hold). Time is real: the expiry property uses a short time to keep.

use std::sync::Arc;
use std::time::Duration;

use agentwire_protocol::{Epoch, Seq, UserId};
use async_trait::async_trait;

use crate::receipt_store::{InMemoryReceipts, ReceiptStore, StoredReceipt};

/// Builds receipt stores for the receipt properties.
#[async_trait]
pub trait ReceiptHarness: Send + Sync {
    /// `handles` handles on one store no other call shares, each keeping a receipt `ttl`.
    async fn stores(&self, handles: usize, ttl: Duration) -> Vec<Arc<dyn ReceiptStore>>;
}

/// The harness of [`InMemoryReceipts`].
#[derive(Debug, Default)]
pub struct InMemoryReceiptHarness;

#[async_trait]
impl ReceiptHarness for InMemoryReceiptHarness {
    async fn stores(&self, handles: usize, ttl: Duration) -> Vec<Arc<dyn ReceiptStore>> {
        let store = InMemoryReceipts::new(ttl, 10_000);
        (0..handles)
            .map(|_| Arc::new(store.clone()) as Arc<dyn ReceiptStore>)
            .collect()
    }
}

/// A time to keep no property waits out.
const LONG: Duration = Duration::from_secs(60);

fn fresh_user(label: &str) -> UserId {
    UserId::new(format!(
        "receipt-{label}-{}",
        agentwire_protocol::EventId::generate()
    ))
    .unwrap_or_else(|e| panic!("a valid user id: {e}"))
}

async fn record(store: &Arc<dyn ReceiptStore>, user: &UserId, epoch: &Epoch, d: u64, a: u64) {
    store
        .record(user, &StoredReceipt::new(epoch.clone(), Seq(d), Seq(a)))
        .await
        .unwrap_or_else(|e| panic!("record failed: {e}"));
}

async fn read(store: &Arc<dyn ReceiptStore>, user: &UserId) -> Option<(Epoch, u64, u64)> {
    store
        .read(user)
        .await
        .unwrap_or_else(|e| panic!("read failed: {e}"))
        .map(|r| (r.epoch, r.delivered_seq.get(), r.acked_seq.get()))
}

/// Rules 1–4: records through different handles only move a receipt forward, acked never
/// exceeds delivered, another epoch starts over, and a read after a record sees it.
pub async fn receipt_max_only_and_epochs(h: &dyn ReceiptHarness) {
    let stores = h.stores(2, LONG).await;
    let (a, b) = (&stores[0], &stores[1]);
    let user = fresh_user("max");
    assert_eq!(read(a, &user).await, None, "never recorded");
    let e1 = Epoch::generate();
    record(a, &user, &e1, 5, 3).await;
    assert_eq!(
        read(b, &user).await,
        Some((e1.clone(), 5, 3)),
        "seen by another handle"
    );
    record(b, &user, &e1, 4, 4).await;
    assert_eq!(
        read(a, &user).await,
        Some((e1.clone(), 5, 4)),
        "max of each seq"
    );
    record(a, &user, &e1, 2, 7).await;
    assert_eq!(
        read(b, &user).await,
        Some((e1.clone(), 7, 7)),
        "what was acknowledged was delivered"
    );
    record(b, &user, &e1, 0, 0).await;
    assert_eq!(read(a, &user).await, Some((e1, 7, 7)), "never back");
    let e2 = Epoch::generate();
    record(b, &user, &e2, 2, 1).await;
    assert_eq!(
        read(a, &user).await,
        Some((e2, 2, 1)),
        "a new epoch starts over"
    );
}

/// Rule 1 under concurrency: many records from several handles at once leave the largest
/// of each seq.
pub async fn receipt_concurrent_records(h: &dyn ReceiptHarness) {
    let stores = h.stores(3, LONG).await;
    let user = fresh_user("concurrent");
    let epoch = Epoch::generate();
    let tasks: Vec<_> = (0..60u64)
        .map(|i| {
            let store = stores[(i % 3) as usize].clone();
            let (user, epoch) = (user.clone(), epoch.clone());
            // Delivered peaks at i = 41, acked at i = 17.
            let d = if i == 41 { 500 } else { i };
            let a = if i == 17 { 90 } else { i / 2 };
            tokio::spawn(async move { record(&store, &user, &epoch, d, a).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap_or_else(|e| panic!("record task: {e}"));
    }
    assert_eq!(read(&stores[0], &user).await, Some((epoch, 500, 90)));
}

/// Rule 5: a receipt not recorded for the time to keep is forgotten.
pub async fn receipt_expiry(h: &dyn ReceiptHarness) {
    let ttl = Duration::from_millis(300);
    let stores = h.stores(1, ttl).await;
    let user = fresh_user("expiry");
    let epoch = Epoch::generate();
    record(&stores[0], &user, &epoch, 3, 1).await;
    assert!(read(&stores[0], &user).await.is_some());
    tokio::time::sleep(ttl * 3).await;
    assert_eq!(
        read(&stores[0], &user).await,
        None,
        "forgotten after its time"
    );
}

/// Every receipt property, in order.
pub async fn run_receipt_properties(h: &dyn ReceiptHarness) {
    receipt_max_only_and_epochs(h).await;
    receipt_concurrent_records(h).await;
    receipt_expiry(h).await;
}
