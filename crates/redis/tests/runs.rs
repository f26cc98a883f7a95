//! Run guards on Redis (rule 11 of the broker contract), beyond the conformance suite:
//! random event sequences decide on Redis exactly as `RunState` — the reference — and the
//! in-memory broker do; three brokers ("nodes") racing `agent_started` of one run accept
//! exactly one; the run registry's counts return to zero after churn from many nodes; and
//! the documented failure mode — a reservation whose run state never came (a node that
//! died between its two calls) — holds its place only until the registry's expiry.

mod support;

use std::sync::Arc;
use std::time::Duration;

use agentwire_manager::conformance::{self, Harness};
use agentwire_manager::{
    BatchError, Broker, BrokerError, InMemoryBroker, NewEvent, PublisherId, RunLimit, RunLimits,
};
use agentwire_protocol::{EventId, RunId, RunOutcome, RunState, RunStep, RunViolation, UserId};
use agentwire_redis::testing::{self, RedisCluster};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use redis::AsyncCommands;
use support::{RedisHarness, user};

fn run_id(name: &str) -> RunId {
    name.parse().expect("a valid run id")
}

fn owner(name: &str) -> PublisherId {
    PublisherId::new(name).expect("a valid publisher")
}

/// A guarded event of `run` taking `step`, numbered `n`, under `event_id` if given.
fn run_event(run: &RunId, step: RunStep, n: u64, event_id: Option<&str>, by: &str) -> NewEvent {
    let id = event_id.map(|i| EventId::new(i).expect("a valid event id"));
    conformance::guarded_event(run, step, n, id, &owner(by))
}

fn start(run: &str, n: u64) -> NewEvent {
    run_event(&run_id(run), RunStep::Start, n, None, "p")
}

fn step_strategy() -> impl Strategy<Value = RunStep> {
    let tool = prop::sample::select(vec!["a", "b", "c"]).prop_map(str::to_owned);
    prop_oneof![
        2 => Just(RunStep::Start),
        2 => Just(RunStep::Think),
        3 => tool.clone().prop_map(RunStep::OpenToolCall),
        3 => tool.clone().prop_map(RunStep::CloseToolCall),
        3 => tool.clone().prop_map(RunStep::StreamMessage),
        2 => tool.prop_map(RunStep::CloseMessage),
        1 => Just(RunStep::End(RunOutcome::Completed)),
        1 => Just(RunStep::End(RunOutcome::Failed)),
    ]
}

/// Batches of (run index, step), each batch 1–3 events.
fn batches() -> impl Strategy<Value = Vec<Vec<(usize, RunStep)>>> {
    vec(vec((0..2usize, step_strategy()), 1..=3), 1..=14)
}

/// What a broker answered for one batch: the seqs it took, or the refused event's index
/// and the violation.
type Outcome = Result<usize, (Option<usize>, BrokerError)>;

async fn outcome(broker: &dyn Broker, user: &UserId, events: Vec<NewEvent>) -> Outcome {
    let n = events.len();
    broker
        .publish_many(user, events)
        .await
        .map(|a| {
            assert_eq!(a.len(), n);
            n
        })
        .map_err(
            |BatchError {
                 refused_at, error, ..
             }| (refused_at, error),
        )
}

/// The shared Redis, or why not.
fn shared() -> Option<String> {
    testing::require("run guards on Redis", testing::shared_redis())
}

/// Random batches of two runs' events decide the same on Redis, on the in-memory broker
/// and by the reference (`RunState::apply_step`, the first refusal in batch order
/// refusing the batch): the same accepted batches, the same refused event, the same
/// violation.
#[test]
fn random_runs_decide_on_redis_as_the_reference_does() {
    let Some(url) = shared() else { return };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let harness = RedisHarness::standalone(&url, "runs-prop");
    let redis = rt.block_on(harness.make());
    let memory = InMemoryBroker::default();
    let mut runner = TestRunner::new(Config {
        cases: 96,
        ..Config::default()
    });
    let result = runner.run(&batches(), |batches| {
        rt.block_on(async {
            let user = UserId::new(format!("prop-{}", EventId::generate())).expect("user");
            let runs = [run_id("r0"), run_id("r1")];
            let mut model = [RunState::default(), RunState::default()];
            let mut n = 0;
            for batch in batches {
                let mut next = model.clone();
                let mut want: Result<usize, (usize, RunViolation)> = Ok(batch.len());
                let mut events = Vec::new();
                for (i, (r, step)) in batch.into_iter().enumerate() {
                    n += 1;
                    if want.is_ok()
                        && let Err(v) = next[r].apply_step(&step)
                    {
                        want = Err((i, v));
                    }
                    events.push(run_event(&runs[r], step, n, None, "p"));
                }
                let on_redis = outcome(&redis, &user, events.clone()).await;
                let in_memory = outcome(&memory, &user, events).await;
                let want: Outcome = want.map_err(|(i, v)| (Some(i), BrokerError::Violation(v)));
                prop_assert_eq!(&on_redis, &want, "Redis and the reference disagree");
                prop_assert_eq!(
                    &in_memory,
                    &want,
                    "the in-memory broker and the reference disagree"
                );
                if want.is_ok() {
                    model = next;
                }
            }
            Ok(())
        })
    });
    rt.block_on(harness.delete_keys());
    if let Err(e) = result {
        panic!("{e}");
    }
    assert_eq!(redis.metrics().script_errors, 0);
}

/// Three brokers sharing one Redis — three nodes — and eight tasks on each publishing
/// `agent_started` of one run at once, each under its own id: exactly one is accepted,
/// every other is `AlreadyStarted`, and the run counts once (a second run does not fit a
/// bound of one run until the first ends).
async fn three_nodes_race(harness: &RedisHarness) {
    let limits = RunLimits {
        max_runs: 1,
        ..RunLimits::default()
    };
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(Arc::new(
            harness.connect(harness.config().run_limits(limits)).await,
        ));
    }
    let u = user(&format!("race-{}", EventId::generate()));
    let tasks: Vec<_> = (0..24u64)
        .map(|n| {
            let (node, u) = (nodes[n as usize % 3].clone(), u.clone());
            tokio::spawn(async move { node.publish(&u, start("contended", n)).await })
        })
        .collect();
    let mut won = 0;
    for t in tasks {
        match t.await.expect("publisher task") {
            Ok(_) => won += 1,
            Err(e) => assert_eq!(e, BrokerError::Violation(RunViolation::AlreadyStarted)),
        }
    }
    assert_eq!(won, 1, "agent_started of one run accepted {won} times");
    // The run counts once: another does not fit, on any node, until it ends.
    for node in &nodes {
        assert_eq!(
            node.publish(&u, start("other", 99)).await,
            Err(BrokerError::TooManyRuns(RunLimit::Runs))
        );
    }
    let end = RunStep::End(RunOutcome::Completed);
    nodes[1]
        .publish(&u, run_event(&run_id("contended"), end, 100, None, "p"))
        .await
        .expect("the run ends");
    nodes[2]
        .publish(&u, start("other", 101))
        .await
        .expect("room once the run ended");
    let h = nodes[0]
        .history(&u, agentwire_protocol::Seq::ZERO, 100)
        .await
        .expect("history");
    assert_eq!(h.last_seq.get(), 3);
    for node in &nodes {
        assert_eq!(node.metrics().script_errors, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_racing_agent_started_accept_exactly_one() {
    let Some(url) = shared() else { return };
    let harness = RedisHarness::standalone(&url, "runs-race");
    three_nodes_race(&harness).await;
    harness.delete_keys().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_racing_agent_started_on_a_cluster_accept_exactly_one() {
    let Some(cluster) = testing::require("run race on a cluster", RedisCluster::start(3)) else {
        return;
    };
    let harness = RedisHarness::cluster(cluster.urls(), "runs-race-cluster");
    three_nodes_race(&harness).await;
    drop(cluster);
}

/// The registry's counts, read straight from Redis: (runs held, runs in progress, owners
/// with runs in progress).
async fn registry_counts(harness: &RedisHarness) -> (i64, i64, usize) {
    let mut conn = redis::Client::open(format!("redis://{}", harness.nodes[0]))
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connection");
    let totals = format!("{}{{%runs}}:totals", harness.prefix);
    let owners = format!("{}{{%runs}}:owners", harness.prefix);
    let runs: Option<i64> = conn.hget(&totals, "runs").await.expect("HGET");
    let live: Option<i64> = conn.hget(&totals, "live").await.expect("HGET");
    let owners: usize = conn.hlen(&owners).await.expect("HLEN");
    (runs.unwrap_or(0), live.unwrap_or(0), owners)
}

/// Many runs through three nodes at once — started, some with tool calls, retried after
/// their end (duplicates), restarted after their end (refused), ended — leave the registry
/// holding exactly the finished runs, none in progress and no publisher's share in use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_counts_return_to_zero_after_churn_on_three_nodes() {
    let Some(url) = shared() else { return };
    let harness = RedisHarness::standalone(&url, "runs-churn");
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(Arc::new(harness.make().await));
    }
    let u = user(&format!("churn-{}", EventId::generate()));
    let tasks: Vec<_> = (0..30u64)
        .map(|n| {
            let nodes = nodes.clone();
            let u = u.clone();
            tokio::spawn(async move {
                let node = |k: u64| nodes[((n + k) % 3) as usize].clone();
                let r = run_id(&format!("run-{}", n % 20));
                let by = if n % 2 == 0 { "even" } else { "odd" };
                let id = format!("start-{n}");
                let first = node(0)
                    .publish(&u, run_event(&r, RunStep::Start, n, Some(&id), by))
                    .await;
                if first.is_err() {
                    // Another task started this run first.
                    return;
                }
                let call = format!("tc-{n}");
                node(1)
                    .publish(
                        &u,
                        run_event(&r, RunStep::OpenToolCall(call.clone()), n, None, by),
                    )
                    .await
                    .expect("open");
                node(2)
                    .publish(&u, run_event(&r, RunStep::CloseToolCall(call), n, None, by))
                    .await
                    .expect("close");
                let end = RunStep::End(RunOutcome::Failed);
                node(0)
                    .publish(&u, run_event(&r, end, n, None, by))
                    .await
                    .expect("end");
                // A retry of the start after the end: its first acceptance.
                let again = node(1)
                    .publish(&u, run_event(&r, RunStep::Start, n, Some(&id), by))
                    .await
                    .expect("a duplicate");
                assert!(again.duplicate);
                // A new start of the ended run: refused.
                assert!(matches!(
                    node(2)
                        .publish(&u, run_event(&r, RunStep::Start, n, None, by))
                        .await,
                    Err(BrokerError::Violation(RunViolation::AfterTerminal { .. }))
                ));
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    let (runs, live, owners) = registry_counts(&harness).await;
    assert_eq!(
        (runs, live, owners),
        (20, 0, 0),
        "the registry's counts drifted"
    );
    for node in &nodes {
        let m = node.metrics();
        assert_eq!((m.script_errors, m.run_registry_failures), (0, 0), "{m:?}");
    }
    harness.delete_keys().await;
}

/// A node that reserved a run's room and died before publishing leaves a reservation with
/// no run state (here: the state deleted after the fact). The run can still start — on
/// the same reservation, counted once — and the place is held only until the registry's
/// expiry, a ttl and a half after it was last refreshed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_left_behind_holds_its_place_until_the_registry_forgets_it() {
    let Some(url) = shared() else { return };
    let harness = RedisHarness::standalone(&url, "runs-orphan");
    let ttl = Duration::from_millis(800);
    let limits = RunLimits {
        max_runs: 1,
        ttl,
        ..RunLimits::default()
    };
    let node = harness.connect(harness.config().run_limits(limits)).await;
    let u = user(&format!("orphan-{}", EventId::generate()));
    node.publish(&u, start("r1", 1)).await.expect("started");
    // The run's state goes; its reservation stays.
    let mut conn = redis::Client::open(url.as_str())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connection");
    let pattern = format!("{}*:run:r1", harness.prefix);
    let keys: Vec<String> = conn.keys(&pattern).await.expect("KEYS");
    assert_eq!(keys.len(), 1, "{keys:?}");
    let _: i64 = conn.del(&keys[0]).await.expect("DEL");
    // r1 can start again, on its reservation: still one run counted.
    node.publish(&u, start("r1", 2)).await.expect("restarted");
    let _: i64 = conn.del(&keys[0]).await.expect("DEL");
    assert_eq!(
        node.publish(&u, start("r2", 3)).await,
        Err(BrokerError::TooManyRuns(RunLimit::Runs)),
        "the reservation left behind holds its place"
    );
    // A ttl and a half after the last reservation, the registry forgets it.
    tokio::time::sleep(ttl + ttl / 2 + Duration::from_millis(200)).await;
    node.publish(&u, start("r2", 4))
        .await
        .expect("the place is free again");
    assert!(node.metrics().runs_expired >= 1);
    harness.delete_keys().await;
}
