//! The watchdog: a run with no event and no heartbeat for its stall timeout is ended by
//! the manager with `agent_error` code `stalled` (retryable), through the broker like any
//! event — once, seen by a connected client and by one that connects later; a late event
//! of the run is then a run violation. Events, heartbeats and the run's own timeout keep
//! it alive; of several managers sharing a broker (nodes), exactly one ends it.

mod support;

use std::sync::Arc;
use std::time::Duration;

use agentwire_manager::{
    Broker, ConnectOptions, EmitError, HistoryConfig, InMemoryBroker, ManagerConfig, PublisherId,
    RunPresence, StallReason, UnifiedWebSocketManager,
};
use agentwire_protocol::{
    AgentStarted, AgentThinking, Event, EventData, EventType, RunId, RunViolation, STALLED_CODE,
    Seq, ToolCompleted, ToolExecuting, UserId,
};
use support::*;

const TIMEOUT: Duration = Duration::from_secs(120);

/// A broker whose history outlives the tests' hours of paused time.
fn broker() -> Arc<dyn Broker> {
    let day = Duration::from_secs(86_400);
    Arc::new(InMemoryBroker::new(HistoryConfig {
        max_age: day,
        dedupe_window: day,
        ..HistoryConfig::default()
    }))
}

fn node(config: ManagerConfig) -> UnifiedWebSocketManager {
    UnifiedWebSocketManager::new(config, broker())
}

fn config(timeout: Duration) -> ManagerConfig {
    ManagerConfig {
        run_stall_timeout: timeout,
        ..ManagerConfig::default()
    }
}

fn run(name: &str) -> RunId {
    name.parse().expect("run id")
}

fn owner() -> PublisherId {
    PublisherId::new("key:test").expect("publisher")
}

async fn publish(
    m: &UnifiedWebSocketManager,
    u: &UserId,
    r: &RunId,
    data: impl Into<EventData>,
) -> Result<u64, EmitError> {
    let event = Event::new(Some("t1".parse().expect("thread")), Some(r.clone()), data);
    let prepared = m.prepare_event(u, &event, None)?.guarded(owner());
    Ok(m.emit_prepared(&prepared).await?.seq.get())
}

fn started(stall_timeout_ms: Option<u64>) -> AgentStarted {
    AgentStarted {
        agent_name: Some("triage".into()),
        stall_timeout_ms,
        ..Default::default()
    }
}

fn executing(id: &str) -> ToolExecuting {
    ToolExecuting {
        tool_call_id: id.into(),
        tool_name: "search".into(),
        ..Default::default()
    }
}

fn thinking() -> AgentThinking {
    AgentThinking {
        thought: "…".into(),
        ..Default::default()
    }
}

/// The types of the user's stream, from history.
async fn types(m: &UnifiedWebSocketManager, u: &UserId) -> Vec<EventType> {
    let h = m.history(u, Seq::ZERO, 100).await.expect("history");
    h.events.iter().map(|e| e.event_type).collect()
}

async fn stalled_errors(m: &UnifiedWebSocketManager, u: &UserId) -> usize {
    types(m, u)
        .await
        .into_iter()
        .filter(|t| *t == EventType::AgentError)
        .count()
}

#[tokio::test(start_paused = true)]
async fn a_silent_run_is_ended_once_as_stalled() {
    let m = node(config(TIMEOUT));
    let u = user("alice");
    let r = run("r1");
    publish(&m, &u, &r, started(None)).await.expect("start");
    publish(&m, &u, &r, executing("tc1")).await.expect("tool");
    assert_eq!(m.get_stats().watched_runs, 1);
    // Connected before the deadline (and within the connection's heartbeat timeout).
    tokio::time::sleep(TIMEOUT - Duration::from_secs(5)).await;
    let mut live = connect(&m, &u, ConnectOptions::default()).await;
    live.until_seq(2).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    live.until_seq(3).await;
    let error = live.events().last().expect("an event").clone();
    let EventData::AgentError(data) = &error.event.data else {
        panic!("the run ended with {:?}", error.event.data);
    };
    assert_eq!(data.code.as_deref(), Some(STALLED_CODE));
    assert!(data.retryable);
    assert_eq!(error.event.run_id.as_ref(), Some(&r));
    assert_eq!(error.event.thread_id, Some("t1".parse().expect("thread")));
    // A client that connects later sees it once too, from history.
    let mut later = connect(&m, &u, ConnectOptions::default()).await;
    later.until_seq(3).await;
    assert_eq!(later.seqs(), vec![1, 2, 3]);
    // The late publisher is refused: the run ended.
    let late = ToolCompleted {
        tool_call_id: "tc1".into(),
        tool_name: "search".into(),
        ..Default::default()
    };
    assert_eq!(
        publish(&m, &u, &r, late).await,
        Err(EmitError::Violation(RunViolation::AfterTerminal {
            event: EventType::ToolCompleted,
            ended_with: EventType::AgentError,
        }))
    );
    tokio::time::sleep(TIMEOUT * 3).await;
    assert_eq!(stalled_errors(&m, &u).await, 1);
    let stats = m.get_stats();
    assert_eq!(stats.runs_stalled[StallReason::Timeout.index()], 1);
    assert_eq!(stats.runs_stalled[StallReason::RunTimeout.index()], 0);
    assert_eq!(stats.watched_runs, 0);
}

#[tokio::test(start_paused = true)]
async fn events_and_heartbeats_keep_a_run_alive() {
    let m = node(config(TIMEOUT));
    let u = user("bob");
    let r = run("busy");
    publish(&m, &u, &r, started(None)).await.expect("start");
    tokio::time::sleep(Duration::from_secs(100)).await;
    publish(&m, &u, &r, thinking()).await.expect("think");
    tokio::time::sleep(Duration::from_secs(100)).await;
    assert_eq!(
        m.heartbeat_run(&u, &r).await.expect("heartbeat"),
        RunPresence::Running
    );
    tokio::time::sleep(Duration::from_secs(100)).await;
    assert_eq!(stalled_errors(&m, &u).await, 0, "ended despite a heartbeat");
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(stalled_errors(&m, &u).await, 1);
    assert_eq!(
        m.heartbeat_run(&u, &r).await.expect("heartbeat"),
        RunPresence::Ended
    );
    assert_eq!(
        m.heartbeat_run(&u, &run("never-started"))
            .await
            .expect("heartbeat"),
        RunPresence::Unknown
    );
    // A run that ends on its own is not watched any more.
    let done = run("done");
    publish(&m, &u, &done, started(None)).await.expect("start");
    publish(&m, &u, &done, agentwire_protocol::AgentCompleted::default())
        .await
        .expect("end");
    assert_eq!(m.get_stats().watched_runs, 0);
}

#[tokio::test(start_paused = true)]
async fn a_run_sets_its_own_timeout() {
    let m = node(config(TIMEOUT));
    let u = user("carol");
    let (quick, never, slow) = (run("quick"), run("never"), run("slow"));
    publish(&m, &u, &quick, started(Some(10_000)))
        .await
        .expect("start");
    publish(&m, &u, &never, started(Some(0)))
        .await
        .expect("start");
    publish(&m, &u, &slow, started(Some(600_000)))
        .await
        .expect("start");
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(stalled_errors(&m, &u).await, 1, "the 10 s run");
    tokio::time::sleep(Duration::from_secs(300)).await;
    assert_eq!(stalled_errors(&m, &u).await, 1, "only the 10 s run");
    tokio::time::sleep(Duration::from_secs(300)).await;
    assert_eq!(stalled_errors(&m, &u).await, 2, "the 600 s run too");
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(stalled_errors(&m, &u).await, 2, "a 0 timeout never stalls");
    let stats = m.get_stats();
    assert_eq!(stats.runs_stalled[StallReason::RunTimeout.index()], 2);
}

#[tokio::test(start_paused = true)]
async fn a_zero_timeout_turns_the_watchdog_off() {
    let m = node(config(Duration::ZERO));
    let u = user("dave");
    publish(&m, &u, &run("r"), started(None))
        .await
        .expect("start");
    assert_eq!(m.get_stats().watched_runs, 0);
    tokio::time::sleep(Duration::from_secs(3000)).await;
    assert_eq!(stalled_errors(&m, &u).await, 0);
}

#[tokio::test(start_paused = true)]
async fn the_watched_runs_are_bounded() {
    let m = node(ManagerConfig {
        max_watched_runs: 2,
        ..config(TIMEOUT)
    });
    let u = user("erin");
    for name in ["a", "b", "c"] {
        publish(&m, &u, &run(name), started(None))
            .await
            .expect("start");
    }
    let stats = m.get_stats();
    assert_eq!((stats.watched_runs, stats.runs_unwatched), (2, 1));
}

/// Three managers over one broker, as three nodes: each published part of the run, so
/// each watches it; the broker's atomic claim lets exactly one end it.
#[tokio::test(start_paused = true)]
async fn of_several_nodes_exactly_one_ends_a_run() {
    let broker = broker();
    let nodes: Vec<UnifiedWebSocketManager> = (0..3)
        .map(|_| UnifiedWebSocketManager::new(config(TIMEOUT), broker.clone()))
        .collect();
    let u = user("frank");
    let r = run("shared");
    publish(&nodes[0], &u, &r, started(None))
        .await
        .expect("start");
    publish(&nodes[1], &u, &r, thinking()).await.expect("think");
    publish(&nodes[2], &u, &r, executing("tc"))
        .await
        .expect("tool");
    tokio::time::sleep(TIMEOUT * 2).await;
    assert_eq!(stalled_errors(&nodes[0], &u).await, 1);
    let ended: u64 = nodes
        .iter()
        .map(|n| n.get_stats().runs_stalled.iter().sum::<u64>())
        .sum();
    assert_eq!(ended, 1, "the run was ended by {ended} nodes");
    assert!(nodes.iter().all(|n| n.get_stats().watched_runs == 0));
}
