//! End to end: the embedding example, `crates/agentwire/examples/embedded_agent_service.rs`,
//! compiled here as a module and served on `127.0.0.1:0`. A user's WebSocket client sees,
//! in order, the simulated run that user started through the service's own `POST /runs`;
//! another user's client sees none of it; the service's page and agentwire's routes are
//! served side by side; `POST /runs` wants a valid token. Over the Redis broker, two
//! instances of the example (one mounting `router_with`, the other `router`) are two nodes:
//! a run started on one reaches its user's client on the other.

#[allow(
    dead_code,
    unreachable_pub,
    reason = "the example's `main` and address settings serve `cargo run --example`; this test serves its `app`"
)]
#[path = "../../crates/agentwire/examples/embedded_agent_service.rs"]
mod example;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use agentwire::bridge::{DEMO_THREAD_ID, SIMULATED_RUN_EVENTS};
use agentwire::manager::ManagerConfig;
use agentwire::protocol::{EventEnvelope, EventType, RunId};
use agentwire::redis::{RedisBroker, RedisConfig, RedisTarget};
use agentwire::server::{Auth, router_with};
use agentwire::{AgentBridgeExt, UnifiedWebSocketManager};
use agentwire_e2e::{
    Client, HttpResponse, SECRET, WAIT, connect_to, http_request, test_config, token_ttl,
};
use agentwire_redis::testing;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Fast enough for a test, slow enough that the run's events are spread over time.
const PACE: Duration = Duration::from_millis(5);

/// How long a client must stay silent to count as having received nothing.
const QUIET: Duration = Duration::from_millis(300);

/// The example's app, serving until dropped.
struct ExampleService {
    addr: SocketAddr,
    task: JoinHandle<std::io::Result<()>>,
}

impl Drop for ExampleService {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ExampleService {
    /// Builds what the example's `main` builds and serves it, with the e2e secret (`main`
    /// reads it from `AGENTWIRE_JWT_SECRET`), mounting agentwire with `router_with` so the
    /// e2e API key works too.
    async fn start() -> ExampleService {
        let manager = UnifiedWebSocketManager::in_memory();
        let agentwire = router_with(manager.clone(), &test_config()).expect("agentwire routes");
        ExampleService::serve(manager, agentwire).await
    }

    /// The example's app over `manager`, with `agentwire` (its routes over `manager`)
    /// merged in.
    async fn serve(manager: UnifiedWebSocketManager, agentwire: axum::Router) -> ExampleService {
        let bridge = manager.create_agent_bridge();
        let auth = Auth::hs256(SECRET.as_bytes()).expect("the e2e secret is not empty");
        let app = example::app(
            example::AgentService::new(bridge, auth).with_pace(PACE),
            agentwire,
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("bound address");
        let task = tokio::spawn(async move { axum::serve(listener, app).await });
        ExampleService { addr, task }
    }

    async fn http(&self, method: &str, path: &str, bearer: Option<&str>) -> HttpResponse {
        http_request(self.addr, method, path, bearer).await
    }

    /// Starts a run for `user` through the example's `POST /runs`; returns its run id.
    async fn start_run(&self, user: &str) -> RunId {
        let r = self
            .http("POST", "/runs", Some(&token_ttl(user, 3600)))
            .await;
        assert_eq!(r.status, 202, "{}", r.body);
        let body = r.json();
        assert_eq!(body["user_id"], user);
        assert_eq!(body["thread_id"], DEMO_THREAD_ID);
        body["run_id"]
            .as_str()
            .and_then(|id| id.parse().ok())
            .unwrap_or_else(|| panic!("a run id in {body}"))
    }
}

/// Reads the events of one whole simulated run and checks they are exactly the
/// documented sequence, in order, of run `run`.
async fn read_run(client: &mut Client, run: &RunId) -> Vec<EventEnvelope> {
    let mut events = Vec::new();
    for _ in 0..SIMULATED_RUN_EVENTS.len() {
        events.push(client.event().await);
    }
    let types: Vec<EventType> = events.iter().map(|e| e.event.event_type()).collect();
    assert_eq!(
        types,
        [
            EventType::AgentStarted,
            EventType::AgentThinking,
            EventType::ToolExecuting,
            EventType::ToolCompleted,
            EventType::ToolExecuting,
            EventType::ToolCompleted,
            EventType::AgentThinking,
            EventType::MessageDelta,
            EventType::MessageDelta,
            EventType::MessageDelta,
            EventType::MessageDelta,
            EventType::MessageDelta,
            EventType::MessageDelta,
            EventType::MessageCompleted,
            EventType::AgentCompleted,
        ]
    );
    for e in &events {
        assert_eq!(e.event.run_id.as_ref(), Some(run), "{e:?}");
    }
    assert!(
        events.windows(2).all(|w| w[0].seq < w[1].seq),
        "seq increases along the run"
    );
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_sees_the_run_its_user_started_and_no_one_else_does() {
    let service = ExampleService::start().await;
    let mut alice = connect_to(service.addr, "alice", "").await;
    let mut bob = connect_to(service.addr, "bob", "").await;

    let alices_run = service.start_run("alice").await;
    read_run(&mut alice, &alices_run).await;
    assert_eq!(
        bob.recv_within(QUIET).await,
        None,
        "bob's client receives nothing of alice's run"
    );

    let bobs_run = service.start_run("bob").await;
    assert_ne!(alices_run, bobs_run, "every run gets a run of its own");
    read_run(&mut bob, &bobs_run).await;
    assert_eq!(
        alice.recv_within(QUIET).await,
        None,
        "alice's client receives nothing of bob's run"
    );

    alice.close().await;
    bob.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_and_agentwire_routes_are_served_side_by_side() {
    let service = ExampleService::start().await;

    let page = service.http("GET", "/", None).await;
    assert_eq!(page.status, 200);
    assert!(
        page.header("content-type")
            .is_some_and(|t| t.starts_with("text/html")),
        "{:?}",
        page.headers
    );
    assert!(page.body.contains("/ws?token="), "the page connects to /ws");
    assert!(page.body.contains("\"/runs\""), "the page starts runs");

    let health = service.http("GET", "/healthz", None).await;
    assert_eq!(health.status, 200, "{}", health.body);
    assert_eq!(health.json()["status"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starting_a_run_wants_a_valid_token() {
    let service = ExampleService::start().await;
    let mut alice = connect_to(service.addr, "alice", "").await;

    let missing = service.http("POST", "/runs", None).await;
    assert_eq!(missing.status, 401, "{}", missing.body);
    assert_eq!(missing.header("www-authenticate"), Some("Bearer"));
    assert_eq!(missing.json()["error"], "unauthorized");

    let forged = agentwire::server::mint_hs256(
        b"not the secret",
        &agentwire_e2e::user("alice"),
        WAIT,
        None,
        None,
    )
    .expect("mint");
    let refused = service.http("POST", "/runs", Some(&forged)).await;
    assert_eq!(refused.status, 401, "{}", refused.body);

    assert_eq!(
        alice.recv_within(QUIET).await,
        None,
        "a refused request starts no run"
    );
    alice.close().await;
}

/// A manager over the Redis broker, under `prefix`, on the Redis at `url`.
async fn redis_manager(url: &str, prefix: &str) -> UnifiedWebSocketManager {
    let config = RedisConfig::builder(RedisTarget::Standalone(url.to_owned()))
        .key_prefix(prefix)
        .build()
        .expect("a valid Redis configuration");
    let broker = RedisBroker::connect(config).await.expect("Redis answers");
    UnifiedWebSocketManager::new(ManagerConfig::default(), Arc::new(broker))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_redis_a_run_started_on_one_instance_reaches_its_user_on_another() {
    let Some(url) = testing::require("the example over Redis", testing::shared_redis()) else {
        return;
    };
    let prefix = testing::unique_prefix("embedded");
    let one = redis_manager(&url, &prefix).await;
    let routes = router_with(one.clone(), &test_config()).expect("agentwire routes");
    let node_a = ExampleService::serve(one, routes).await;
    let two = redis_manager(&url, &prefix).await;
    let auth = Auth::hs256(SECRET.as_bytes()).expect("the e2e secret is not empty");
    let routes = agentwire::server::router(two.clone(), auth);
    let node_b = ExampleService::serve(two, routes).await;

    let mut alice = connect_to(node_a.addr, "alice", "").await;
    let mut bob = connect_to(node_b.addr, "bob", "").await;
    let run = node_b.start_run("alice").await;
    let events = read_run(&mut alice, &run).await;
    assert_eq!(events[0].seq.get(), 1, "alice's stream starts here");
    assert_eq!(
        bob.recv_within(QUIET).await,
        None,
        "bob's client receives nothing of alice's run"
    );
    // Resumed on the other instance, alice's client is told it missed nothing.
    let epoch = alice
        .established
        .as_ref()
        .map(|hello| hello.epoch.to_string())
        .expect("alice's hello");
    let again = connect_to(
        node_b.addr,
        "alice",
        &format!("?last_seq={}&epoch={epoch}", events[7].seq.get()),
    )
    .await;
    let hello_on_b = again.established.clone().expect("the hello on node b");
    again.close().await;
    assert!(hello_on_b.resumed, "{hello_on_b:?}");
    alice.close().await;
    bob.close().await;
}
