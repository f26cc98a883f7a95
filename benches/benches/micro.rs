//! Criterion micro-benchmarks of agentwire's hot paths: envelope encode/decode, the
//! publish decode (a JSON body of 50 events into typed events), the registry under
//! contention (connect/disconnect, and lookups while other tasks churn), fan-out of one
//! event to N local queues, history append at the per-user bound (each append trims the
//! oldest event) and a page read, and the server's work for one publish request short of
//! HTTP (decode a batch of 50, prepare, emit, fan out), and streamed text merging in the
//! queue of a reader that stopped. Run with
//! `cargo bench -p agentwire-bench --bench micro`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentwire_bench::{sample_event, sample_frame_json, sample_publish_batch};
use agentwire_manager::{
    Broker, ConnectOptions, HistoryConfig, InMemoryBroker, ManagerConfig, NewEvent, QueueLimits,
    Resume, UnifiedWebSocketManager,
};
use agentwire_protocol::{
    AgentStarted, ClientFrame, Event, Limits, MessageDelta, PublishBody, Seq, ServerFrame, UserId,
};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

fn user(i: usize) -> UserId {
    UserId::new(format!("user-{i}")).expect("valid id")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn protocol(c: &mut Criterion) {
    let mut g = c.benchmark_group("protocol");
    let frame = sample_frame_json(200);
    let envelope = ServerFrame::decode(frame.as_bytes()).expect("sample decodes");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode_envelope", |b| {
        b.iter(|| black_box(&envelope).to_json())
    });
    g.bench_function("decode_envelope", |b| {
        b.iter(|| ServerFrame::decode(black_box(frame.as_bytes())))
    });
    g.bench_function("decode_client_ack", |b| {
        b.iter(|| ClientFrame::decode(black_box(br#"{"type":"ack","seq":12345}"#)))
    });
    let batch: Vec<serde_json::Value> = (0..50)
        .map(|i| {
            serde_json::json!({"user_id": format!("user-{i}"), "type": "agent_thinking",
                "thread_id": "t1", "run_id": "r1", "data": {"thought": "x".repeat(200), "step": i}})
        })
        .collect();
    let batch = serde_json::to_vec(&batch).expect("json");
    g.throughput(Throughput::Elements(50));
    g.bench_function("decode_publish_batch_50", |b| {
        b.iter(|| PublishBody::decode(black_box(&batch), Limits::EVENT, 100))
    });
    // Agent runs as the load generator publishes them: objects in `arguments` and `result`.
    let runs = sample_publish_batch(50, 200);
    let decoded = PublishBody::decode(&runs, Limits::EVENT, 100).expect("sample decodes");
    assert_eq!(decoded.into_requests().len(), 50);
    g.bench_function("decode_publish_batch_50_runs", |b| {
        b.iter(|| PublishBody::decode(black_box(&runs), Limits::EVENT, 100))
    });
    // The same events with `type` before `data`, as the load generator (and most clients)
    // write them: the order the decoder reads in one pass without keeping `data` aside.
    let type_first: Vec<String> = (0..50)
        .map(|i| {
            format!(
                r#"{{"user_id":"user-{i}","type":"agent_thinking","thread_id":"t1","run_id":"r1","data":{{"thought":"{}","step":{i},"sent_at_us":1796039396123456,"u":{i},"k":42}}}}"#,
                "x".repeat(110)
            )
        })
        .collect();
    let type_first = format!("[{}]", type_first.join(",")).into_bytes();
    let decoded = PublishBody::decode(&type_first, Limits::EVENT, 100).expect("sample decodes");
    assert_eq!(decoded.into_requests().len(), 50);
    g.throughput(Throughput::Elements(50));
    g.bench_function("decode_publish_batch_50_type_first", |b| {
        b.iter(|| PublishBody::decode(black_box(&type_first), Limits::EVENT, 100))
    });
    // The same two bodies as the server's publish API reads them: checked in one pass,
    // `data` copied as written rather than built.
    for (name, body) in [("type_first", &type_first), ("runs", &runs)] {
        let events = PublishBody::decode_events(body, Limits::EVENT, 100).expect("decodes");
        assert_eq!(events.events.len(), 50);
        g.bench_function(format!("decode_events_batch_50_{name}"), |b| {
            b.iter(|| PublishBody::decode_events(black_box(body), Limits::EVENT, 100))
        });
    }
    let event = sample_event(200);
    g.throughput(Throughput::Elements(1));
    g.bench_function("serialize_event_body", |b| {
        b.iter(|| black_box(&event).body_json())
    });
    g.finish();
}

fn registry(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("registry");
    for tasks in [1usize, 4] {
        g.throughput(Throughput::Elements(1));
        g.bench_with_input(
            BenchmarkId::new("connect_disconnect", tasks),
            &tasks,
            |b, &tasks| {
                let manager = UnifiedWebSocketManager::new(
                    ManagerConfig {
                        max_connections: 1_000_000,
                        ..ManagerConfig::default()
                    },
                    Arc::new(InMemoryBroker::default()),
                );
                b.iter_custom(|iters| {
                    let per_task = iters.div_ceil(tasks as u64);
                    rt.block_on(async {
                        let start = Instant::now();
                        let handles: Vec<_> = (0..tasks)
                            .map(|t| {
                                let m = manager.clone();
                                tokio::spawn(async move {
                                    for i in 0..per_task {
                                        let u = user(t * 1_000_000 + (i % 1000) as usize);
                                        let opts = ConnectOptions {
                                            resume: Resume::LiveOnly,
                                        };
                                        let conn = m.connect_user(u, opts).await.expect("connects");
                                        black_box(m.connections_of(conn.user_id()).len());
                                        drop(conn);
                                    }
                                })
                            })
                            .collect();
                        for h in handles {
                            h.await.expect("task");
                        }
                        start.elapsed()
                    })
                })
            },
        );
    }
    g.finish();
}

/// Lookups of a user's connections while `churners` other tasks connect and disconnect
/// users of the same registry.
fn registry_lookup(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("registry");
    for churners in [0usize, 2] {
        g.throughput(Throughput::Elements(1));
        g.bench_with_input(
            BenchmarkId::new("lookup_while_churning", churners),
            &churners,
            |b, &churners| {
                let manager = UnifiedWebSocketManager::new(
                    ManagerConfig {
                        max_connections: 1_000_000,
                        ..ManagerConfig::default()
                    },
                    Arc::new(InMemoryBroker::default()),
                );
                // 1,000 users with 2 connections each stay connected throughout.
                let held: Vec<_> = rt.block_on(async {
                    let mut v = Vec::new();
                    for i in 0..1_000 {
                        for _ in 0..2 {
                            let opts = ConnectOptions {
                                resume: Resume::LiveOnly,
                            };
                            v.push(manager.connect_user(user(i), opts).await.expect("connects"));
                        }
                    }
                    v
                });
                let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
                let churn: Vec<_> = (0..churners)
                    .map(|t| {
                        let m = manager.clone();
                        let stop = stop.clone();
                        rt.spawn(async move {
                            let mut i = 0usize;
                            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                                let u = user(10_000 + t * 100_000 + i % 1000);
                                let opts = ConnectOptions {
                                    resume: Resume::LiveOnly,
                                };
                                drop(m.connect_user(u, opts).await.expect("connects"));
                                i += 1;
                                if i.is_multiple_of(64) {
                                    tokio::task::yield_now().await;
                                }
                            }
                        })
                    })
                    .collect();
                let users: Vec<UserId> = (0..1_000).map(user).collect();
                let mut i = 0usize;
                b.iter(|| {
                    i = (i + 1) % users.len();
                    black_box(manager.connections_of(&users[i]).len())
                });
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
                for h in churn {
                    rt.block_on(h).expect("churn task");
                }
                drop(held);
            },
        );
    }
    g.finish();
}

/// What `POST /v1/events` does per request short of HTTP and the run table: decode a body
/// of 50 events for 50 users, prepare each (validate, serialize once), emit it (broker
/// accept, history, fan-out to the user's 2 queues). The queues are drained outside the
/// timing.
fn publish_path(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("publish_path");
    let manager = UnifiedWebSocketManager::new(
        ManagerConfig {
            queue: QueueLimits {
                max_frames: 1 << 20,
                max_bytes: 1 << 30,
            },
            ..ManagerConfig::default()
        },
        Arc::new(InMemoryBroker::default()),
    );
    let conns: Vec<_> = rt.block_on(async {
        let mut v = Vec::new();
        for i in 0..50 {
            for _ in 0..2 {
                let opts = ConnectOptions {
                    resume: Resume::LiveOnly,
                };
                v.push(manager.connect_user(user(i), opts).await.expect("connects"));
            }
        }
        v
    });
    let body: Vec<serde_json::Value> = (0..50)
        .map(|i| {
            serde_json::json!({"user_id": format!("user-{i}"), "type": "agent_thinking",
                "thread_id": "t1", "run_id": "r1",
                "data": {"thought": "x".repeat(120), "step": 3, "sent_at_us": 1_764_104_400_123_456u64, "u": i, "k": 7}})
        })
        .collect();
    let body = serde_json::to_vec(&body).expect("json");
    g.throughput(Throughput::Elements(50));
    g.bench_function("decode_prepare_emit_batch_50", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut spent = Duration::ZERO;
                let mut sink = Vec::new();
                for _ in 0..iters {
                    let start = Instant::now();
                    let events = PublishBody::decode_events(black_box(&body), Limits::EVENT, 100)
                        .expect("decodes")
                        .events;
                    for event in events {
                        let p = manager.prepare_published(event).expect("valid");
                        manager.emit_prepared(&p).await.expect("accepted");
                    }
                    spent += start.elapsed();
                    for conn in &conns {
                        sink.clear();
                        conn.next_frames(&mut sink, 4096).await;
                    }
                }
                spent
            })
        })
    });
    g.finish();
}

/// Streamed text into a connection whose reader has stopped: `n` `message_delta`s of one
/// message (24 bytes of text each) emitted while nothing is taken from the queue, so from
/// the queue's half-way mark on each one merges into the newest frame (up to
/// `MAX_MERGED_DELTA_BYTES`). The time per delta is what a merge costs at that frame size:
/// flat in `n` when a merge costs what the newcomer holds, growing with `n` when it costs
/// what the merged frame holds.
fn merge_deltas(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("merge_deltas");
    for n in [1_000usize, 8_000] {
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, &n| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut spent = Duration::ZERO;
                    for _ in 0..iters {
                        let manager = UnifiedWebSocketManager::new(
                            ManagerConfig {
                                queue: QueueLimits {
                                    max_frames: 8,
                                    max_bytes: 1 << 20,
                                },
                                ..ManagerConfig::default()
                            },
                            Arc::new(InMemoryBroker::default()),
                        );
                        let u = user(0);
                        let opts = ConnectOptions {
                            resume: Resume::LiveOnly,
                        };
                        let conn = manager
                            .connect_user(u.clone(), opts)
                            .await
                            .expect("connects");
                        let run = Some("r1".parse().expect("run id"));
                        let deltas: Vec<_> = (0..n)
                            .map(|i| {
                                let data = MessageDelta {
                                    message_id: "m1".into(),
                                    delta: format!("piece {i:>8} of text. "),
                                    extra: Default::default(),
                                };
                                manager
                                    .prepare_event(&u, &Event::new(None, run.clone(), data), None)
                                    .expect("valid")
                            })
                            .collect();
                        // One event read first, and a moment for the catch-up to end:
                        // the deltas reach a live connection.
                        let first = Event::new(None, run.clone(), AgentStarted::default());
                        manager
                            .emit_critical_event(&u, first)
                            .await
                            .expect("accepted");
                        let mut sink = Vec::new();
                        conn.next_frames(&mut sink, 16).await;
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        let start = Instant::now();
                        for d in &deltas {
                            manager.emit_prepared(d).await.expect("accepted");
                        }
                        spent += start.elapsed();
                        assert!(manager.get_stats().deltas_merged > 0, "nothing merged");
                        drop(conn);
                    }
                    spent
                })
            })
        });
    }
    g.finish();
}

fn fan_out(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("fan_out");
    for n in [1usize, 3, 16, 64] {
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, &n| {
            let manager = UnifiedWebSocketManager::new(
                ManagerConfig {
                    max_connections_per_user: n,
                    queue: QueueLimits {
                        max_frames: 1 << 20,
                        max_bytes: 1 << 30,
                    },
                    ..ManagerConfig::default()
                },
                Arc::new(InMemoryBroker::default()),
            );
            let u = user(0);
            let conns: Vec<_> = rt.block_on(async {
                let mut v = Vec::new();
                for _ in 0..n {
                    let opts = ConnectOptions {
                        resume: Resume::LiveOnly,
                    };
                    v.push(
                        manager
                            .connect_user(u.clone(), opts)
                            .await
                            .expect("connects"),
                    );
                }
                v
            });
            let event = sample_event(200);
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut spent = Duration::ZERO;
                    let mut left = iters;
                    let mut sink = Vec::new();
                    while left > 0 {
                        let chunk = left.min(512);
                        let start = Instant::now();
                        for _ in 0..chunk {
                            let p = manager.prepare_event(&u, &event, None).expect("valid");
                            manager.emit_prepared(&p).await.expect("accepted");
                        }
                        spent += start.elapsed();
                        for conn in &conns {
                            sink.clear();
                            while sink.len() < chunk as usize {
                                conn.next_frames(&mut sink, 4096).await;
                            }
                        }
                        left -= chunk;
                    }
                    spent
                })
            })
        });
    }
    g.finish();
}

/// A new event of the sample body, as the manager hands it to a broker.
fn new_event(body: &bytes::Bytes) -> NewEvent {
    NewEvent::new(
        agentwire_protocol::EventType::AgentThinking,
        None,
        body.clone(),
    )
}

/// One user's history held at its bound (1,000 events, the default): an append adds one
/// event and trims the oldest, as for any user who publishes steadily; a page read takes
/// 100 events from the middle (a reconnect catching up). The async calls run in one
/// `block_on` per sample, so its cost is not in the figures.
fn history(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("history");
    let bound = HistoryConfig::default().max_events_per_user;
    let broker = InMemoryBroker::new(HistoryConfig::default());
    let u = user(0);
    let body = bytes::Bytes::from(sample_event(200).body_json());
    rt.block_on(async {
        for _ in 0..bound {
            broker
                .publish(&u, new_event(&body))
                .await
                .expect("accepted");
        }
    });
    g.throughput(Throughput::Elements(1));
    let mut next = 0;
    g.bench_function("append", |b| {
        b.iter_custom(|iters| {
            time_publishes(
                &rt,
                &broker,
                std::slice::from_ref(&u),
                &mut next,
                iters,
                || new_event(&body),
            )
        })
    });
    // The history is still at its bound: a page from its middle is all there.
    let last = rt
        .block_on(broker.history(&u, Seq(0), 1))
        .expect("history")
        .last_seq;
    let after = Seq(last.0 - bound as u64 / 2);
    let page = rt
        .block_on(broker.history(&u, after, 100))
        .expect("history");
    assert!(page.gap.is_none() && page.events.len() == 100);
    g.throughput(Throughput::Elements(100));
    g.bench_function("range_read_100", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(broker.history(&u, after, 100).await.expect("history"));
                }
                start.elapsed()
            })
        })
    });
    g.finish();
    history_at_budget(c, &rt);
}

/// The node's history at its byte budget, 1,000 users publishing in turn, each event with
/// its own id, as a server that has run for a while holds it: an append checks the id
/// against the user's dedupe index, and trims the node's oldest entry, another user's,
/// written long before (its frame, its entry and its slot in that user's index, all out
/// of the caches by then). The per-user history above stays in the caches; this one,
/// 256 MiB of it, does not.
fn history_at_budget(c: &mut Criterion, rt: &tokio::runtime::Runtime) {
    const USERS: usize = 1_000;
    let mut g = c.benchmark_group("history");
    let broker = InMemoryBroker::new(HistoryConfig::default());
    let users: Vec<UserId> = (0..USERS).map(user).collect();
    let body = bytes::Bytes::from(sample_event(200).body_json());
    let event = || {
        NewEvent::new(
            agentwire_protocol::EventType::AgentThinking,
            Some(agentwire_protocol::EventId::generate()),
            body.clone(),
        )
    };
    let mut next = 0;
    rt.block_on(async {
        while broker.stats().history_trimmed == 0 {
            broker
                .publish(&users[next % USERS], event())
                .await
                .expect("accepted");
            next += 1;
        }
    });
    g.throughput(Throughput::Elements(1));
    g.bench_function("append_at_byte_budget_1000_users", |b| {
        b.iter_custom(|iters| time_publishes(rt, &broker, &users, &mut next, iters, event))
    });
    g.finish();
}

/// Publishes `iters` events of `event` in one `block_on`, the `n`-th to
/// `users[n % users.len()]` with `n` counted on from `*next`; the time they took.
fn time_publishes(
    rt: &tokio::runtime::Runtime,
    broker: &InMemoryBroker,
    users: &[UserId],
    next: &mut usize,
    iters: u64,
    event: impl Fn() -> NewEvent,
) -> Duration {
    rt.block_on(async {
        let start = Instant::now();
        for _ in 0..iters {
            let u = &users[*next % users.len()];
            *next += 1;
            black_box(broker.publish(u, event()).await.expect("accepted"));
        }
        start.elapsed()
    })
}

criterion_group!(
    benches,
    protocol,
    registry,
    registry_lookup,
    fan_out,
    history,
    publish_path,
    merge_deltas
);
criterion_main!(benches);
