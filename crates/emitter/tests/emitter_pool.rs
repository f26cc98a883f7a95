//! The emitter pool: reuse per run, LRU eviction when full, idle cleanup by the background
//! task on tokio's paused clock, and a task that ends with the pool.

mod support;

use std::time::Duration;

use agentwire_emitter::{PoolConfig, WebSocketEmitterFactory, WebSocketEmitterPool};
use agentwire_manager::UnifiedWebSocketManager;
use support::ctx;

fn pool(config: PoolConfig) -> WebSocketEmitterPool {
    WebSocketEmitterPool::new(
        WebSocketEmitterFactory::new(UnifiedWebSocketManager::in_memory()),
        config,
    )
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
    let a = pool.get_emitter(&ctx("alice", "r1"));
    let b = pool.get_emitter(&ctx("alice", "r1").with_request_id("other-request"));
    assert!(a.same_as(&b));
    assert!(!a.same_as(&pool.get_emitter(&ctx("alice", "r2"))));
    assert!(!a.same_as(&pool.get_emitter(&ctx("bob", "r1"))));
    a.emit_agent_started("x").await.expect("started");
    b.emit_agent_thinking("shared state", None)
        .await
        .expect("b sees the run started by a");
    let stats = pool.stats();
    assert_eq!((stats.size, stats.created, stats.reused), (3, 3, 1));
    assert_eq!(stats.max_emitters, 100);
}

#[tokio::test(start_paused = true)]
async fn a_full_pool_evicts_the_least_recently_used() {
    let pool = pool(PoolConfig {
        max_emitters: 3,
        ..PoolConfig::default()
    });
    let r1 = pool.get_emitter(&ctx("u", "r1"));
    let r2 = pool.get_emitter(&ctx("u", "r2"));
    pool.get_emitter(&ctx("u", "r3"));
    // r1 used again: r2 is now the least recently used.
    assert!(pool.get_emitter(&ctx("u", "r1")).same_as(&r1));
    pool.get_emitter(&ctx("u", "r4"));
    assert_eq!(pool.len(), 3);
    assert_eq!(pool.stats().evicted_lru, 1);
    assert!(pool.get_emitter(&ctx("u", "r1")).same_as(&r1), "r1 kept");
    // r2 was evicted: a new emitter now (and r3, least recently used, makes room).
    assert!(!pool.get_emitter(&ctx("u", "r2")).same_as(&r2));
    let stats = pool.stats();
    assert_eq!((stats.size, stats.evicted_lru, stats.created), (3, 2, 5));
}

#[tokio::test(start_paused = true)]
async fn idle_emitters_are_removed_by_the_background_task() {
    let pool = pool(PoolConfig {
        idle_ttl: Duration::from_secs(300),
        cleanup_interval: Duration::from_secs(30),
        ..PoolConfig::default()
    });
    let busy = pool.get_emitter(&ctx("u", "busy"));
    pool.get_emitter(&ctx("u", "idle"));

    tokio::time::sleep(Duration::from_secs(200)).await;
    busy.emit_agent_started("x").await.expect("used: not idle");
    tokio::time::sleep(Duration::from_secs(130)).await;
    settle().await;
    // 330 s after its last use `idle` is gone; `busy` was used 130 s ago.
    assert_eq!(pool.len(), 1, "{:?}", pool.stats());
    assert_eq!(pool.stats().evicted_idle, 1);
    assert!(pool.get_emitter(&ctx("u", "busy")).same_as(&busy));

    tokio::time::sleep(Duration::from_secs(331)).await;
    settle().await;
    assert!(pool.is_empty());
    assert_eq!(pool.stats().evicted_idle, 2);
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
    pool.get_emitter(&ctx("u", "r1"));
    pool.get_emitter(&ctx("u", "r2"));
    assert_eq!(pool.clear(), 2);
    assert_eq!(pool.clear(), 0);
    pool.get_emitter(&ctx("u", "r3"));
    assert!(pool.remove(&ctx("u", "r3")).is_some());
    assert!(pool.remove(&ctx("u", "r3")).is_none());
    pool.get_emitter(&ctx("u", "r4"));
    pool.shutdown();
    pool.shutdown();
    settle().await;
    assert_eq!(alive_tasks(), before, "shutdown stopped the task");
    assert!(pool.is_empty());
    // Still usable; idle cleanup now only on demand.
    pool.get_emitter(&ctx("u", "r5"));
    tokio::time::advance(Duration::from_secs(301)).await;
    assert_eq!(pool.cleanup_idle(), 1);
    drop(pool);
}

#[test]
fn a_pool_made_outside_a_runtime_works_without_a_task() {
    let pool = pool(PoolConfig {
        max_emitters: 0,
        ..PoolConfig::default()
    });
    pool.get_emitter(&ctx("u", "r1"));
    pool.get_emitter(&ctx("u", "r2"));
    assert_eq!(pool.len(), 1, "max_emitters 0 is treated as 1");
    assert_eq!(pool.cleanup_idle(), 0);
}
