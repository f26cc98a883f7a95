//! How many Redis commands one published event costs, counted by `INFO commandstats` on a
//! private Redis (the shared one counts every other test's commands too).

mod support;

use agentwire_manager::Broker;
use agentwire_redis::testing::{self, RedisServer};
use support::{RedisHarness, custom_event, user};

/// Commands run per call, by name, from `INFO commandstats`, leaving out what the test
/// itself and the connections' set-up run.
fn commands(server: &RedisServer) -> Vec<(String, u64)> {
    const NOT_THE_SCRIPT: [&str; 11] = [
        "info",
        "config",
        "ping",
        "client",
        "hello",
        "select",
        "subscribe",
        "ssubscribe",
        "evalsha",
        "eval",
        "script",
    ];
    let stats = server
        .cli(&["INFO", "commandstats"])
        .expect("INFO commandstats");
    stats
        .lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            let name = name.split('|').next()?;
            (!NOT_THE_SCRIPT.contains(&name)).then(|| (name.to_owned(), calls))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_event_publish_runs_at_most_seventeen_commands() {
    let Some(server) = testing::require("Redis command count test", RedisServer::start()) else {
        return;
    };
    let harness = RedisHarness::standalone(&server.url(), "commands");
    let broker = harness.connect(harness.config()).await;
    let alice = user("alice");
    // The stream exists before counting starts: its creation costs a few commands more.
    broker
        .publish(&alice, custom_event(0, None))
        .await
        .expect("first");
    server
        .cli(&["CONFIG", "RESETSTAT"])
        .expect("CONFIG RESETSTAT");
    const EVENTS: u64 = 20;
    for n in 1..=EVENTS {
        broker
            .publish(&alice, custom_event(n, None))
            .await
            .expect("publish");
    }
    let counted = commands(&server);
    let total: u64 = counted.iter().map(|(_, calls)| calls).sum();
    let per_event = total as f64 / EVENTS as f64;
    eprintln!("{per_event} commands per event: {counted:?}");
    assert!(
        per_event <= 17.0,
        "{per_event} commands per event: {counted:?}"
    );
}
