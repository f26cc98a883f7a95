//! The emitter pool: one emitter per run; live runs never evicted and a new run refused
//! when the pool is full of them (issue 15); finished runs leaving at their terminal event
//! and remembered as finished; idle emitters that carry nothing dropped and unsettled
//! events settled by the background task, on tokio's paused clock; and a task that ends
//! with the pool.

mod support;

use std::sync::Arc;
use std::time::Duration;

use agentwire_emitter::{
    EmitterError, PoolConfig, RetryPolicy, WebSocketEmitterFactory, WebSocketEmitterPool,
};
use agentwire_manager::conformance::Fault;
use agentwire_manager::{BrokerError, ConnectOptions, ManagerConfig, UnifiedWebSocketManager};
use agentwire_protocol::{EventType, RunOutcome, RunState, RunViolation};
use serde_json::Value;
use support::{ctx, flaky, read_events, user};

fn pool(config: PoolConfig) -> WebSocketEmitterPool {
    WebSocketEmitterPool::new(
        WebSocketEmitterFactory::new(UnifiedWebSocketManager::in_memory()),
        config,
    )
}

fn small(max_emitters: usize) -> PoolConfig {
    PoolConfig {
        max_emitters,
        ..PoolConfig::default()
    }
}

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_run_gets_the_same_emitter_and_shares_its_state() {
    let pool = pool(PoolConfig::default());
    let a = pool.get_emitter(&ctx("alice", "r1")).expect("room");
    let b = pool
        .get_emitter(&ctx("alice", "r1").with_request_id("other-request"))
        .expect("room");
    assert!(a.same_as(&b));
    let r2 = pool.get_emitter(&ctx("alice", "r2")).expect("room");
    let bob = pool.get_emitter(&ctx("bob", "r1")).expect("room");
    assert!(!a.same_as(&r2) && !a.same_as(&bob));
    a.emit_agent_started("x").await.expect("started");
    b.emit_agent_thinking("shared state", None)
        .await
        .expect("b sees the run started by a");
    let stats = pool.stats();
    assert_eq!((stats.size, stats.created, stats.reused), (3, 3, 1));
    assert_eq!(stats.max_emitters, 100);
}

#[tokio::test(start_paused = true)]
async fn a_full_pool_drops_emitters_that_carry_nothing_never_a_live_run() {
    let pool = pool(small(3));
    // r1 running, held by no one; r2 not started but held; r3 not started, not held.
    pool.get_emitter(&ctx("u", "r1"))
        .expect("room")
        .emit_agent_started("a")
        .await
        .expect("started");
    let r2 = pool.get_emitter(&ctx("u", "r2")).expect("room");
    pool.get_emitter(&ctx("u", "r3")).expect("room");

    pool.get_emitter(&ctx("u", "r4")).expect("r3 makes room");
    let stats = pool.stats();
    assert_eq!((stats.size, stats.evicted_full, stats.refused), (3, 1, 0));
    assert_eq!(
        pool.get_emitter(&ctx("u", "r1"))
            .expect("pooled")
            .run_state()
            .await,
        RunState::Running {
            open_tool_calls: Default::default(),
            open_messages: Default::default(),
        },
        "the running run kept its state"
    );
    assert!(
        pool.get_emitter(&ctx("u", "r2"))
            .expect("pooled")
            .same_as(&r2)
    );
}

#[tokio::test(start_paused = true)]
async fn a_pool_full_of_live_runs_refuses_a_new_run() {
    let pool = pool(small(2));
    let r1 = pool.get_emitter(&ctx("u", "r1")).expect("room");
    r1.emit_agent_started("a").await.expect("started");
    let r2 = pool.get_emitter(&ctx("u", "r2")).expect("room");
    r2.emit_agent_started("a").await.expect("started");

    let err = pool.get_emitter(&ctx("u", "r3")).expect_err("full");
    assert_eq!(err.limit, 2);
    let as_emit_error = EmitterError::from(err);
    assert!(matches!(as_emit_error, EmitterError::TooManyRuns(_)));
    assert_eq!(pool.stats().refused, 1);
    assert_eq!(pool.len(), 2, "nothing was evicted for it");

    r1.emit_agent_completed(Value::Null, None)
        .await
        .expect("r1 ends");
    pool.get_emitter(&ctx("u", "r3"))
        .expect("the finished run made room")
        .emit_agent_started("a")
        .await
        .expect("r3 starts");
    r2.emit_agent_thinking("still here", None)
        .await
        .expect("r2 untouched");
}

#[tokio::test(start_paused = true)]
async fn a_finished_run_leaves_the_pool_and_is_remembered_as_finished() {
    let pool = pool(PoolConfig {
        max_finished_runs: 2,
        ..PoolConfig::default()
    });
    let r1 = pool.get_emitter(&ctx("u", "r1")).expect("room");
    r1.emit_agent_started("a").await.expect("started");
    r1.emit_agent_error("boom", None, false)
        .await
        .expect("failed");
    assert!(pool.is_empty(), "gone at its terminal event");

    let late = pool.get_emitter(&ctx("u", "r1")).expect("remembered");
    assert!(!late.same_as(&r1));
    assert_eq!(
        late.run_state().await,
        RunState::Finished(RunOutcome::Failed)
    );
    let err = late
        .emit_agent_started("again")
        .await
        .expect_err("no second life");
    assert_eq!(
        err.violation(),
        Some(&RunViolation::AfterTerminal {
            event: EventType::AgentStarted,
            ended_with: EventType::AgentError,
        })
    );
    assert!(
        pool.is_empty(),
        "a finished run's emitter is not pooled again"
    );

    for run in ["r2", "r3"] {
        let e = pool.get_emitter(&ctx("u", run)).expect("room");
        e.emit_agent_started("a").await.expect("started");
        e.emit_agent_completed(Value::Null, None)
            .await
            .expect("completed");
    }
    let stats = pool.stats();
    assert_eq!(
        (
            stats.finished,
            stats.finished_remembered,
            stats.finished_forgotten
        ),
        (3, 2, 1)
    );
    // r1, the oldest, was forgotten: past `max_finished_runs` a late start is a new run.
    assert_eq!(
        pool.get_emitter(&ctx("u", "r1"))
            .expect("room")
            .run_state()
            .await,
        RunState::NotStarted
    );
}

#[tokio::test(start_paused = true)]
async fn idle_emitters_that_carry_nothing_are_removed_by_the_background_task() {
    // The stall watchdog is off: the running run is quiet for 55 minutes on purpose.
    let manager = UnifiedWebSocketManager::new(
        agentwire_manager::ManagerConfig {
            run_stall_timeout: Duration::ZERO,
            ..Default::default()
        },
        Arc::new(agentwire_manager::InMemoryBroker::default()),
    );
    let pool = WebSocketEmitterPool::new(
        WebSocketEmitterFactory::new(manager),
        PoolConfig {
            idle_ttl: Duration::from_secs(300),
            cleanup_interval: Duration::from_secs(30),
            ..PoolConfig::default()
        },
    );
    pool.get_emitter(&ctx("u", "running"))
        .expect("room")
        .emit_agent_started("x")
        .await
        .expect("started");
    pool.get_emitter(&ctx("u", "idle")).expect("room");

    tokio::time::sleep(Duration::from_secs(331)).await;
    settle().await;
    assert_eq!(pool.len(), 1, "{:?}", pool.stats());
    assert_eq!(pool.stats().evicted_idle, 1);

    // A running run is never dropped by the pool for being quiet (the broker keeps its
    // state for `RunLimits::ttl`, 1 h after its last event).
    tokio::time::sleep(Duration::from_secs(3000)).await;
    settle().await;
    assert_eq!(pool.len(), 1);
    pool.get_emitter(&ctx("u", "running"))
        .expect("pooled")
        .emit_agent_completed(Value::Null, None)
        .await
        .expect("the run goes on after 55 quiet minutes");
    assert!(pool.is_empty());
}

#[tokio::test(start_paused = true)]
async fn the_background_task_settles_an_event_no_one_retries() {
    // The first 4 attempts fail: the emit's 2, and the first cleanup round's 2.
    let broker = flaky(4, Fault::Refuse(BrokerError::Unavailable("down".into())));
    let manager = UnifiedWebSocketManager::new(ManagerConfig::default(), broker.clone());
    let pool = WebSocketEmitterPool::new(
        WebSocketEmitterFactory::new(manager.clone()).with_retry(RetryPolicy {
            max_attempts: 2,
            jitter: false,
            ..RetryPolicy::default()
        }),
        PoolConfig::default(),
    );
    let run = ctx("alice", "r1");
    let emitter = pool.get_emitter(&run).expect("room");
    let err = emitter
        .emit_agent_started("a")
        .await
        .expect_err("the broker is down");
    let EmitterError::Unsettled { event_id, .. } = err else {
        panic!("{err:?}")
    };
    drop(emitter);

    tokio::time::sleep(Duration::from_secs(31)).await;
    settle().await;
    assert_eq!(pool.factory().metrics().settled, 0, "still down");
    tokio::time::sleep(Duration::from_secs(30)).await;
    settle().await;
    assert_eq!(pool.factory().metrics().settled, 1);
    assert_eq!(broker.attempts().len(), 5);

    let emitter = pool.get_emitter(&run).expect("pooled");
    assert_eq!(emitter.unsettled().await, None);
    assert!(matches!(
        emitter.run_state().await,
        RunState::Running { .. }
    ));
    let conn = manager
        .connect_user(user("alice"), ConnectOptions::default())
        .await
        .expect("connect");
    let events = read_events(&conn, 1, Duration::from_secs(5)).await;
    assert_eq!(events[0].event_id, event_id);
}

#[tokio::test(start_paused = true)]
async fn the_cleanup_task_ends_when_the_pool_is_dropped() {
    let before = alive_tasks();
    let pool = pool(PoolConfig::default());
    let clone = pool.clone();
    settle().await;
    assert_eq!(alive_tasks(), before + 1);
    drop(pool);
    settle().await;
    assert_eq!(alive_tasks(), before + 1, "a clone still holds the pool");
    drop(clone);
    settle().await;
    assert_eq!(alive_tasks(), before);
}

#[tokio::test(start_paused = true)]
async fn shutdown_and_clear_are_idempotent() {
    let before = alive_tasks();
    let pool = pool(PoolConfig::default());
    pool.get_emitter(&ctx("u", "r1")).expect("room");
    pool.get_emitter(&ctx("u", "r2")).expect("room");
    assert_eq!(pool.clear(), 2);
    assert_eq!(pool.clear(), 0);
    pool.get_emitter(&ctx("u", "r3")).expect("room");
    assert!(pool.remove(&ctx("u", "r3")).is_some());
    assert!(pool.remove(&ctx("u", "r3")).is_none());
    pool.get_emitter(&ctx("u", "r4")).expect("room");
    pool.shutdown();
    pool.shutdown();
    settle().await;
    assert_eq!(alive_tasks(), before, "shutdown stopped the task");
    assert!(pool.is_empty());
    // Still usable; idle cleanup now only on demand.
    pool.get_emitter(&ctx("u", "r5")).expect("room");
    tokio::time::advance(Duration::from_secs(301)).await;
    assert_eq!(pool.cleanup_idle(), 1);
    assert_eq!(pool.settle_unsettled().await, 0);
    drop(pool);
}

#[test]
fn a_pool_made_outside_a_runtime_works_without_a_task() {
    let pool = pool(PoolConfig {
        max_emitters: 0,
        ..PoolConfig::default()
    });
    pool.get_emitter(&ctx("u", "r1")).expect("room");
    pool.get_emitter(&ctx("u", "r2"))
        .expect("r1 carries nothing and makes room");
    assert_eq!(pool.len(), 1, "max_emitters 0 is treated as 1");
    assert_eq!(pool.cleanup_idle(), 0);
}
