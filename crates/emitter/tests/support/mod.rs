//! Shared helpers of the emitter tests: ids, a broker that fails on demand, and a reader
//! of a connection's frames.

#![allow(dead_code, unreachable_pub)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentwire_emitter::RunContext;
use agentwire_manager::{
    Accepted, Broker, BrokerError, Connection, History, InMemoryBroker, NewEvent, Outbound,
    Subscriber,
};
use agentwire_protocol::{EventEnvelope, Seq, ServerFrame, UserId};
use async_trait::async_trait;
use tokio::time::Instant;

pub fn user(id: &str) -> UserId {
    id.parse().expect("valid user id")
}

pub fn ctx(user_id: &str, run: &str) -> RunContext {
    RunContext::new(
        user(user_id),
        "t1".parse().expect("valid thread id"),
        run.parse().expect("valid run id"),
    )
}

/// How a [`FlakyBroker`] fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The publish is refused before it reaches the inner broker.
    Before,
    /// The inner broker accepts the publish, then the caller is told it failed: a
    /// success the emitter never sees.
    AfterAccepting,
}

/// An in-memory broker whose next `fail_times` publishes fail with `error`; it records
/// when each publish was attempted.
#[derive(Debug)]
pub struct FlakyBroker {
    inner: InMemoryBroker,
    state: Mutex<Flaky>,
}

#[derive(Debug)]
struct Flaky {
    remaining: usize,
    error: BrokerError,
    failure: Failure,
    attempts: Vec<Instant>,
}

impl FlakyBroker {
    pub fn new(fail_times: usize, error: BrokerError, failure: Failure) -> Arc<Self> {
        Arc::new(FlakyBroker {
            inner: InMemoryBroker::default(),
            state: Mutex::new(Flaky {
                remaining: fail_times,
                error,
                failure,
                attempts: Vec::new(),
            }),
        })
    }

    /// When each publish was attempted.
    pub fn attempts(&self) -> Vec<Instant> {
        self.state.lock().expect("lock").attempts.clone()
    }

    /// Time between consecutive attempts.
    pub fn gaps(&self) -> Vec<Duration> {
        self.attempts().windows(2).map(|w| w[1] - w[0]).collect()
    }
}

#[async_trait]
impl Broker for FlakyBroker {
    async fn publish(&self, user: &UserId, event: NewEvent) -> Result<Accepted, BrokerError> {
        let (fail, failure, error) = {
            let mut st = self.state.lock().expect("lock");
            st.attempts.push(Instant::now());
            let fail = st.remaining > 0;
            st.remaining = st.remaining.saturating_sub(1);
            (fail, st.failure, st.error.clone())
        };
        match (fail, failure) {
            (false, _) => self.inner.publish(user, event).await,
            (true, Failure::Before) => Err(error),
            (true, Failure::AfterAccepting) => {
                self.inner.publish(user, event).await?;
                Err(error)
            }
        }
    }

    async fn subscribe(
        &self,
        user: &UserId,
        subscriber: Arc<dyn Subscriber>,
    ) -> Result<(), BrokerError> {
        self.inner.subscribe(user, subscriber).await
    }

    async fn unsubscribe(
        &self,
        user: &UserId,
        subscriber: &Arc<dyn Subscriber>,
    ) -> Result<(), BrokerError> {
        self.inner.unsubscribe(user, subscriber).await
    }

    async fn history(
        &self,
        user: &UserId,
        after: Seq,
        limit: usize,
    ) -> Result<History, BrokerError> {
        self.inner.history(user, after, limit).await
    }
}

/// Reads the events queued on `conn` until `n` have arrived (skipping
/// `connection_established`), failing after `wait`.
pub async fn read_events(conn: &Connection, n: usize, wait: Duration) -> Vec<EventEnvelope> {
    let mut events = Vec::new();
    let deadline = Instant::now() + wait;
    while events.len() < n {
        let mut frames = Vec::new();
        match tokio::time::timeout_at(deadline, conn.next_frames(&mut frames, 64)).await {
            Ok(Outbound::Frames) => {}
            Ok(Outbound::Close(code)) => panic!("connection closed with {code:?}"),
            Err(_) => panic!("only {} of {n} events arrived: {events:?}", events.len()),
        }
        for frame in frames {
            match ServerFrame::decode(&frame).expect("frame decodes") {
                ServerFrame::Event(e) => events.push(e),
                ServerFrame::ConnectionEstablished(_) => {}
                other => panic!("unexpected frame {other:?}"),
            }
        }
    }
    events
}

/// Asserts that no event (anything but `connection_established`) is queued on `conn`
/// within `wait`.
pub async fn assert_no_more_events(conn: &Connection, wait: Duration) {
    let deadline = Instant::now() + wait;
    loop {
        let mut frames = Vec::new();
        match tokio::time::timeout_at(deadline, conn.next_frames(&mut frames, 64)).await {
            Err(_) => return,
            Ok(Outbound::Close(code)) => panic!("connection closed with {code:?}"),
            Ok(Outbound::Frames) => {
                for frame in frames {
                    match ServerFrame::decode(&frame).expect("frame decodes") {
                        ServerFrame::ConnectionEstablished(_) => {}
                        other => panic!("unexpected frame {other:?}"),
                    }
                }
            }
        }
    }
}
