//! The contract of [`PublishRates`] (its docs number the rules) as async properties generic
//! over a [`RatesHarness`]. Time is real; the properties bound what is granted by the time
//! that really passed, so a slow machine loosens the bound rather than fails it.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::rates::{InMemoryRates, PublishRate, PublishRates, RateDecision};
use crate::runs::PublisherId;

/// Builds limiters for the rate properties.
#[async_trait]
pub trait RatesHarness: Send + Sync {
    /// `nodes` handles on one fresh limiter that no other call shares.
    async fn limiters(&self, nodes: usize) -> Vec<Arc<dyn PublishRates>>;
}

/// The harness of [`InMemoryRates`] (one node: every handle is the same limiter).
#[derive(Debug, Default)]
pub struct InMemoryRatesHarness;

#[async_trait]
impl RatesHarness for InMemoryRatesHarness {
    async fn limiters(&self, nodes: usize) -> Vec<Arc<dyn PublishRates>> {
        let one: Arc<dyn PublishRates> = Arc::new(InMemoryRates::default());
        vec![one; nodes]
    }
}

fn publisher(label: &str) -> PublisherId {
    PublisherId::new(format!(
        "rate-{label}-{}",
        agentwire_protocol::EventId::generate()
    ))
    .unwrap_or_else(|e| panic!("a valid publisher: {e}"))
}

async fn take(
    l: &Arc<dyn PublishRates>,
    p: &PublisherId,
    n: usize,
    rate: PublishRate,
) -> RateDecision {
    l.take(p, n, rate)
        .await
        .unwrap_or_else(|e| panic!("take failed: {e}"))
}

/// Rules 1, 3 and 4: a fresh publisher takes its burst at once, then waits; more than the
/// burst is refused as such and takes nothing; a refused request takes nothing; another
/// publisher is untouched.
pub async fn rate_burst_and_refusals(h: &dyn RatesHarness) {
    let l = h.limiters(1).await.remove(0);
    let rate = PublishRate {
        per_second: 1,
        burst: 5,
    };
    let (p, q) = (publisher("p"), publisher("q"));
    assert_eq!(
        take(&l, &p, 6, rate).await,
        RateDecision::OverBurst { burst: 5 }
    );
    assert_eq!(take(&l, &p, 3, rate).await, RateDecision::Taken);
    assert_eq!(take(&l, &p, 2, rate).await, RateDecision::Taken);
    match take(&l, &p, 2, rate).await {
        RateDecision::Wait(w) => assert!(
            w > Duration::from_millis(500) && w <= Duration::from_secs(2),
            "two events at 1/s on an empty bucket wait about 2 s, not {w:?}"
        ),
        other => panic!("expected a wait, got {other:?}"),
    }
    assert_eq!(
        take(&l, &p, 6, rate).await,
        RateDecision::OverBurst { burst: 5 }
    );
    assert_eq!(
        take(&l, &q, 5, rate).await,
        RateDecision::Taken,
        "publishers apart"
    );
}

/// Rule 2 across nodes: one publisher asking through three handles at once, one event per
/// request, is granted at most its burst plus the rate over the time that passed — not
/// three times it — and at least its burst.
pub async fn rate_holds_across_nodes(h: &dyn RatesHarness) {
    let nodes = h.limiters(3).await;
    let rate = PublishRate {
        per_second: 20,
        burst: 10,
    };
    let p = publisher("shared");
    let started = Instant::now();
    let span = Duration::from_millis(1500);
    let tasks: Vec<_> = (0..6)
        .map(|i| {
            let (l, p) = (nodes[i % 3].clone(), p.clone());
            tokio::spawn(async move {
                let mut granted = 0u64;
                while started.elapsed() < span {
                    match l.take(&p, 1, rate).await {
                        Ok(RateDecision::Taken) => granted += 1,
                        Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                        Err(e) => panic!("take failed: {e}"),
                    }
                }
                granted
            })
        })
        .collect();
    let mut granted = 0;
    for t in tasks {
        granted += t.await.unwrap_or_else(|e| panic!("task: {e}"));
    }
    let elapsed = started.elapsed().as_secs_f64();
    let most = 10.0 + elapsed * 20.0 + 1.0;
    #[allow(clippy::cast_precision_loss)] // a few hundred events
    let got = granted as f64;
    assert!(
        got <= most,
        "granted {granted} in {elapsed:.2} s: more than burst + rate × time ({most:.0})"
    );
    assert!(granted >= 10, "granted {granted}: not even the burst");
}

/// Every rate property, in order.
pub async fn run_rate_properties(h: &dyn RatesHarness) {
    rate_burst_and_refusals(h).await;
    rate_holds_across_nodes(h).await;
}
