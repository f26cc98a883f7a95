//! End to end: the Python package `clients/python` (issue 19). Starts three servers and
//! runs its pytest suite, `python3 -m pytest clients/python/tests`, against them:
//!
//! - `AGENTWIRE_URL`: default limits, run check on, a publish-only key
//!   (`AGENTWIRE_PUBLISH_KEY`), a full key (`AGENTWIRE_ADMIN_KEY`, for reading history)
//!   and the JWT secret (`AGENTWIRE_JWT_SECRET`);
//! - `AGENTWIRE_LIMITED_URL`: a publish rate of 2 events per second, bursts of 2 (429 with
//!   `Retry-After`);
//! - `AGENTWIRE_FLAKY_URL`: a broker that loses every second answer (503 with
//!   `Retry-After` for an event it did accept).
//!
//! Needs `python3` with pytest (and httpx for the async client): `.ci/run` installs them
//! with `pip install -e 'clients/python[async,test]'`. Where they are missing the test
//! fails under CI (`CI=true`) and is skipped, with the reason printed, elsewhere.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use agentwire::manager::{BrokerError, InMemoryBroker, ManagerConfig, UnifiedWebSocketManager};
use agentwire_e2e::{
    API_KEY, SECRET, TestServer, command_succeeds, prerequisite, run_bounded, workspace_root,
};
use agentwire_manager::conformance::{Fault, FaultyBroker};

/// A publish-only API key of every server here.
const PUBLISH_KEY: &str = "agentwire-e2e-python-publish-key";

/// The suite waits on rate limits for a few seconds in all; this is the backstop.
const PYTEST_TIMEOUT: Duration = Duration::from_secs(240);

/// What is missing to run the suite, if anything.
fn missing_python() -> Option<String> {
    if !command_succeeds("python3", &["--version"]) {
        return Some("python3 is not installed".to_owned());
    }
    if !command_succeeds("python3", &["-c", "import pytest"]) {
        return Some(
            "pytest is not installed for python3: pip install -e 'clients/python[async,test]'"
                .to_owned(),
        );
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_package_suite_passes_against_real_servers() {
    if !prerequisite(missing_python(), "the Python package suite") {
        return;
    }
    let keys = |c: &mut agentwire::server::ServerConfig| {
        c.publish_api_keys = vec![PUBLISH_KEY.into()];
    };
    let server = TestServer::start_with(keys).await;
    let limited = TestServer::start_with(|c| {
        keys(c);
        c.publish_rate = 2;
        c.publish_burst = 2;
    })
    .await;
    // Every second answer is lost: the event is accepted, the publisher hears that the
    // broker timed out (503) — as when an answer is lost on the way back.
    let broker = Arc::new(FaultyBroker::new(InMemoryBroker::default(), |attempt| {
        attempt.is_multiple_of(2).then(|| {
            Fault::LoseAnswer(BrokerError::Timeout(
                "the test broker lost the answer".into(),
            ))
        })
    }));
    let flaky = TestServer::start_over(
        UnifiedWebSocketManager::new(ManagerConfig::default(), broker.clone()),
        keys,
    )
    .await;

    let root = workspace_root();
    let mut pytest = Command::new("python3");
    pytest
        .current_dir(&root)
        .args(["-m", "pytest", "clients/python/tests", "-q", "-rs"])
        // No .pytest_cache and no __pycache__ in the work tree.
        .args(["-p", "no:cacheprovider"])
        .env("PYTHONDONTWRITEBYTECODE", "1")
        // The package as checked out, installed or not.
        .env("PYTHONPATH", root.join("clients/python/src"))
        .env("AGENTWIRE_URL", format!("http://{}", server.addr))
        .env("AGENTWIRE_LIMITED_URL", format!("http://{}", limited.addr))
        .env("AGENTWIRE_FLAKY_URL", format!("http://{}", flaky.addr))
        .env("AGENTWIRE_PUBLISH_KEY", PUBLISH_KEY)
        .env("AGENTWIRE_ADMIN_KEY", API_KEY)
        .env("AGENTWIRE_JWT_SECRET", SECRET);
    let (ok, output) = tokio::task::spawn_blocking(move || run_bounded(pytest, PYTEST_TIMEOUT))
        .await
        .expect("the pytest runner");
    eprintln!("{output}");
    server.stop().await;
    limited.stop().await;
    flaky.stop().await;
    assert!(ok, "the Python package suite failed:\n{output}");
    assert!(
        !output.contains("skipped"),
        "tests were skipped though every server was given:\n{output}"
    );
    assert!(broker.attempts().len() > 1, "the flaky server was not used");
}
