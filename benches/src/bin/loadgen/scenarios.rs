//! The scenarios, and what they share: the target (an external server, or one started in
//! this process), measured periods of publishing, and the JSON they report.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::Common;
use crate::clients::{ClientSpec, Live, Pool, Ready, Snapshot};
use crate::events::{EventMaker, RunShape};
use crate::http::{HttpConn, metric};
use crate::procstat::{Probe, Probes, Sample, loadavg, machine_times, own_cpu_s};
use crate::publish::{self, Plan, Sink, Streams};
use crate::redis_info::{self, RedisStats};

/// Name prefix of the in-process server's threads.
const SERVER_THREADS: &str = "aw-srv";

/// The server under load and how to reach it.
pub(crate) struct Env {
    pub(crate) common: Common,
    /// The nodes under load (one unless several --server were given).
    addrs: Vec<SocketAddr>,
    secret: String,
    api_key: String,
    /// The nodes' processes, and the processes they depend on (--extra-pid).
    probes: Probes,
    extra: Probes,
    in_process: Option<InProcess>,
    max_per_process: u64,
    run_id: String,
}

struct InProcess {
    runtime: tokio::runtime::Runtime,
    manager: agentwire_manager::UnifiedWebSocketManager,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Env {
    pub(crate) fn new(common: &Common, nofile: u64) -> anyhow::Result<Env> {
        let max_per_process = common
            .max_conns_per_process
            .unwrap_or_else(|| nofile.saturating_sub(512).max(64));
        let run_id = format!(
            "lg{}x{}-",
            std::process::id(),
            crate::clients::now_us() % 100_000
        );
        if common.in_process {
            return Env::in_process(common, max_per_process, run_id);
        }
        let (secret, api_key) = match (&common.jwt_secret, &common.api_key) {
            (Some(s), Some(k)) => (s.clone(), k.clone()),
            _ => {
                let path = common.credentials.clone().context(
                    "pass --jwt-secret and --api-key, or --credentials with the server's \
                     development credentials file",
                )?;
                let text = std::fs::read(&path).with_context(|| {
                    format!(
                        "read credentials {} (or pass --jwt-secret and --api-key)",
                        path.display()
                    )
                })?;
                let creds: DevCredentials = serde_json::from_slice(&text)?;
                (
                    common.jwt_secret.clone().unwrap_or(creds.jwt_secret),
                    common.api_key.clone().unwrap_or(creds.api_key),
                )
            }
        };
        if common.server_pids.is_empty() {
            eprintln!("warning: no --server-pid: server CPU and memory are not measured");
        } else if common.server_pids.len() != common.servers.len() {
            eprintln!(
                "warning: {} --server-pid for {} --server: CPU and memory cover the pids given",
                common.server_pids.len(),
                common.servers.len()
            );
        }
        if common.servers.is_empty() {
            anyhow::bail!("no --server");
        }
        Ok(Env {
            common: common.clone(),
            addrs: common.servers.clone(),
            secret,
            api_key,
            probes: Probes(common.server_pids.iter().map(|&p| Probe::Pid(p)).collect()),
            extra: Probes(common.extra_pids.iter().map(|&p| Probe::Pid(p)).collect()),
            in_process: None,
            max_per_process,
            run_id,
        })
    }

    fn in_process(common: &Common, max_per_process: u64, run_id: String) -> anyhow::Result<Env> {
        let pin = common.pin_server;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(common.server_threads.max(1))
            .thread_name(SERVER_THREADS)
            .on_thread_start(move || {
                if let Some(core) = pin {
                    crate::pin(core);
                }
            })
            .enable_all()
            .build()?;
        let secret = format!("{:032x}", crate::clients::now_us());
        let api_key = format!("k{secret}");
        let mut config = agentwire_server::ServerConfig::default();
        config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.jwt_secret = Some(secret.clone());
        config.api_keys = vec![api_key.clone()];
        config.publish_rate = 0;
        config.max_connections = 1_000_000;
        config.max_tcp_connections = 1_200_000;
        config.demo = agentwire_server::DemoMode::Off;
        if let Some(age) = common.inproc_history_max_age {
            config.history_max_age = age;
        }
        let server = runtime.block_on(agentwire_server::Server::bind(config))?;
        let addr = server.local_addr();
        let manager = server.manager().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        runtime.spawn(server.serve(async move {
            let _ = stopped.await;
        }));
        eprintln!("in-process server on {addr}");
        Ok(Env {
            common: common.clone(),
            addrs: vec![addr],
            secret,
            api_key,
            probes: Probes(vec![Probe::OwnThreads(SERVER_THREADS)]),
            extra: Probes(common.extra_pids.iter().map(|&p| Probe::Pid(p)).collect()),
            in_process: Some(InProcess {
                runtime,
                manager,
                stop: Some(stop),
            }),
            max_per_process,
            run_id,
        })
    }

    pub(crate) fn shutdown(self) {
        if let Some(mut p) = self.in_process {
            if let Some(stop) = p.stop.take() {
                let _ = stop.send(());
            }
            p.runtime.shutdown_timeout(Duration::from_secs(5));
        }
    }

    fn mode(&self) -> &'static str {
        if self.in_process.is_some() {
            "in-process"
        } else {
            "http"
        }
    }

    fn sink(&self) -> Sink {
        match &self.in_process {
            Some(p) => Sink::Manager {
                manager: p.manager.clone(),
                runtime: p.runtime.handle().clone(),
            },
            None => Sink::Http {
                addrs: self.addrs.clone(),
                api_key: self.api_key.clone(),
                placement: self.common.placement,
                seed: self.seed(),
            },
        }
    }

    /// Seed of a random placement: fixed per invocation.
    fn seed(&self) -> u64 {
        self.run_id.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        })
    }

    /// The nodes' CPU and memory, summed.
    fn sample(&self) -> Sample {
        self.probes.sample()
    }

    /// The Redis counters, when --redis names one (a failed reading is reported, and
    /// leaves the period without Redis figures).
    async fn redis_stats(&self) -> Option<RedisStats> {
        let addr = self.common.redis.as_deref()?;
        match redis_info::read(addr).await {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("warning: Redis INFO from {addr}: {e:#}");
                None
            }
        }
    }

    fn own_cpu(&self) -> f64 {
        own_cpu_s(self.in_process.as_ref().map(|_| SERVER_THREADS))
    }

    /// Every node's /metrics text.
    async fn metrics(&self) -> Vec<String> {
        let mut texts = Vec::with_capacity(self.addrs.len());
        for &addr in &self.addrs {
            let mut c = HttpConn::new(addr);
            texts.push(match c.get("/metrics", &self.api_key).await {
                Ok(r) if r.status == 200 => String::from_utf8_lossy(&r.body).into_owned(),
                _ => String::new(),
            });
        }
        texts
    }

    /// The gauges the scenarios check, summed over the nodes (null where no node has one).
    async fn gauges(&self) -> Value {
        let texts = self.metrics().await;
        let g = |n: &str| {
            let values: Vec<f64> = texts.iter().filter_map(|t| metric(t, n)).collect();
            if values.is_empty() {
                Value::Null
            } else {
                json!(values.iter().sum::<f64>())
            }
        };
        json!({
            "connections": g("agentwire_connections"),
            "users": g("agentwire_users"),
            "history_events": g("agentwire_history_events"),
            "history_bytes": g("agentwire_history_bytes"),
            "history_users": g("agentwire_history_users"),
            "events_delivered": g("agentwire_events_delivered"),
            "slow_consumer_closes": g("agentwire_slow_consumer_closes"),
            "deltas_merged": g("agentwire_deltas_merged"),
            "queued_bytes": g("agentwire_queued_bytes"),
            "write_timeouts": g("agentwire_write_timeouts"),
            "heartbeat_timeouts": g("agentwire_heartbeat_timeouts"),
            "client_frames_rate_limited": g("agentwire_client_frames_rate_limited"),
            "client_rate_limit_closes": g("agentwire_client_rate_limit_closes"),
        })
    }

    fn spec(&self, tag: &str, users: u32, conns_per_user: u32, slow: SlowReaders) -> ClientSpec {
        ClientSpec {
            servers: self.addrs.clone(),
            placement: self.common.placement,
            seed: self.seed(),
            secret: self.secret.clone(),
            prefix: format!("{}{tag}-", self.run_id),
            first_user: 0,
            users,
            conns_per_user,
            source_ips: self.common.source_ips.clamp(1, 250),
            ip_offset: 0,
            slow_every: slow.every,
            slow_read_bytes_per_s: slow.read_bytes_per_s,
            transport: self.common.transport,
            connect_concurrency: self.common.connect_concurrency,
            token_ttl_s: 24 * 3600,
        }
    }

    async fn connect(&self, spec: ClientSpec) -> anyhow::Result<(Pool, Ready)> {
        let n = spec.connections();
        let workers = n.div_ceil(self.max_per_process.max(1)) as u32;
        eprintln!(
            "opening {n} connections ({} users × {}){}",
            spec.users,
            spec.conns_per_user,
            if workers > 1 {
                format!(" in {workers} worker processes")
            } else {
                String::new()
            }
        );
        let (pool, ready) = Pool::connect(spec, workers).await?;
        eprintln!(
            "  {} open, {} failed in {:.1} s{}",
            ready.connected,
            ready.failed,
            ready.seconds,
            ready
                .first_error
                .as_deref()
                .map(|e| format!(" (first error: {e})"))
                .unwrap_or_default()
        );
        Ok((pool, ready))
    }

    fn header(&self, scenario: &str) -> serde_json::Map<String, Value> {
        let c = &self.common;
        let mut m = serde_json::Map::new();
        m.insert("scenario".into(), json!(scenario));
        m.insert("label".into(), json!(c.label));
        m.insert("mode".into(), json!(self.mode()));
        m.insert(
            "unix_time".into(),
            json!(crate::clients::now_us() / 1_000_000),
        );
        m.insert(
            "config".into(),
            json!({
                "users": c.users, "conns_per_user": c.conns_per_user, "data_bytes": c.data_bytes,
                "batch": c.batch, "lanes": c.lanes, "run_len": c.run_len,
                "duration_s": c.duration.as_secs_f64(), "drain_s": c.drain.as_secs_f64(),
                "p99_limit_ms": c.p99_limit_ms, "source_ips": c.source_ips,
                "servers": self.addrs, "placement": c.placement,
                "server_pids": c.server_pids, "extra_pids": c.extra_pids,
                "server_threads": c.server_threads, "transport": c.transport,
                "streamed": c.streamed,
            }),
        );
        let meta: serde_json::Map<String, Value> =
            c.meta.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
        m.insert("meta".into(), Value::Object(meta));
        m
    }
}

/// Which connections are slow: every `every`-th (0: none), reading at most
/// `read_bytes_per_s` (0: not at all).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SlowReaders {
    pub(crate) every: u32,
    pub(crate) read_bytes_per_s: u64,
}

/// Cumulative counters of a pool, to report each period's own.
#[derive(Debug, Default, Clone, Copy)]
struct Totals {
    lost: u64,
    duplicates: u64,
    reordered: u64,
    misrouted: u64,
    closed_unexpected: u64,
    bad_ids: u64,
    unreadable: u64,
}

impl Totals {
    fn of(s: &Snapshot) -> Self {
        Totals {
            lost: s.lost,
            duplicates: s.duplicates,
            reordered: s.reordered,
            misrouted: s.misrouted,
            closed_unexpected: s.closed_unexpected,
            bad_ids: s.bad_ids,
            unreadable: s.unreadable,
        }
    }
}

/// A pool with what it has seen so far.
struct Clients {
    pool: Pool,
    ready: Ready,
    streams: Arc<Streams>,
    maker: Arc<EventMaker>,
    totals: Totals,
    conns_per_user: u32,
    spec: ClientSpec,
}

impl Clients {
    async fn open(
        env: &Env,
        tag: &str,
        users: u32,
        slow: SlowReaders,
        shape: RunShape,
    ) -> anyhow::Result<Clients> {
        let spec = env.spec(tag, users, env.common.conns_per_user, slow);
        let maker = Arc::new(EventMaker::new(
            spec.prefix.clone(),
            shape,
            env.common.data_bytes,
        ));
        let (pool, ready) = env.connect(spec.clone()).await?;
        Ok(Clients {
            spec,
            pool,
            ready,
            streams: Streams::new(users),
            maker,
            totals: Totals::default(),
            conns_per_user: env.common.conns_per_user,
        })
    }
}

impl Clients {
    /// Events, and streamed-text deltas among them, published to the slow connections'
    /// users (counted once per slow connection).
    fn published_to_slow(&self, expected: &[u64]) -> (u64, u64) {
        let n = u32::try_from(self.spec.connections()).unwrap_or(u32::MAX);
        (0..n)
            .filter(|&i| self.spec.is_slow(i))
            .filter_map(|i| expected.get((i / self.conns_per_user.max(1)) as usize))
            .fold((0, 0), |(events, deltas), &k| {
                (events + k, deltas + self.maker.shape.deltas_in(k))
            })
    }
}

fn pct(h: &hdrhistogram::Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        0.0
    } else {
        h.value_at_quantile(q) as f64 / 1_000.0
    }
}

fn latency_json(h: &hdrhistogram::Histogram<u64>) -> Value {
    json!({
        "count": h.len(),
        "p50_ms": pct(h, 0.50), "p90_ms": pct(h, 0.90), "p99_ms": pct(h, 0.99),
        "p999_ms": pct(h, 0.999), "max_ms": h.max() as f64 / 1_000.0,
        "mean_ms": if h.is_empty() { 0.0 } else { h.mean() / 1_000.0 },
    })
}

/// One measured period: publish `plan` on schedule, drain, check, measure.
async fn period(
    env: &Env,
    clients: &mut Clients,
    offered_deliveries_per_s: f64,
    unit: u32,
    name: &str,
    duration: Duration,
) -> anyhow::Result<Value> {
    let c = &env.common;
    let events_per_s = offered_deliveries_per_s / f64::from(clients.conns_per_user.max(1));
    let plan = Plan {
        users: clients.streams.published.len() as u32,
        events_per_s,
        duration,
        unit,
        batch: c.batch,
        lanes: c.lanes,
        grace: duration / 4 + Duration::from_secs(2),
    };
    let before_metrics = env.gauges().await;
    let redis0 = env.redis_stats().await;
    let nodes0 = env.probes.each();
    let x0 = env.extra.sample();
    let s0 = env.sample();
    let own0 = env.own_cpu() + clients.pool.workers_cpu_s();
    let machine0 = machine_times();
    let load0 = loadavg();
    let t0 = Instant::now();
    let progress = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let sampler = {
        let probes = env.probes.clone();
        let progress = progress.clone();
        let live = match &clients.pool {
            Pool::Local(p) => Some(p.live.clone()),
            Pool::Workers(_) => None,
        };
        let count = |l: &Live| {
            (
                l.received.load(Ordering::Relaxed),
                l.late.load(Ordering::Relaxed),
            )
        };
        let live0 = live.as_deref().map_or((0, 0), count);
        let name = name.to_owned();
        let mut stop_rx = stop_rx;
        tokio::spawn(async move {
            let mut max_rss = 0u64;
            let mut last = probes.sample();
            let mut last_t = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            let mut n = 0u64;
            let mut late_before = live0.1;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop_rx.changed() => break,
                }
                let s = probes.sample();
                max_rss = max_rss.max(s.rss_kib);
                n += 1;
                if n.is_multiple_of(4) {
                    let dt = last_t.elapsed().as_secs_f64();
                    // Received so far, and late (over 10 ms) in the last second.
                    let (recv, late) = match live.as_deref().map(count) {
                        Some((r, l)) => {
                            let late = l - late_before;
                            late_before = l;
                            ((r - live0.0).to_string(), late.to_string())
                        }
                        None => ("-".to_owned(), "-".to_owned()),
                    };
                    eprintln!(
                        "  [{name}] t={:>5.1}s sent={} recv={} late={} server cpu={:>3.0}% rss={} MiB",
                        t0.elapsed().as_secs_f64(),
                        progress.load(Ordering::Relaxed),
                        recv,
                        late,
                        (s.cpu_s - last.cpu_s) / dt * 100.0,
                        s.rss_kib / 1024,
                    );
                    last = s;
                    last_t = Instant::now();
                }
            }
            max_rss
        })
    };
    let outcome = publish::run(
        &env.sink(),
        &clients.maker,
        &clients.streams,
        &plan,
        progress,
    )
    .await;
    let publish_s = t0.elapsed().as_secs_f64();
    let expected = clients.streams.expected();
    let snap = clients.pool.snapshot(Some(&expected), c.drain).await?;
    let wall = t0.elapsed().as_secs_f64();
    let s1 = env.sample();
    let nodes1 = env.probes.each();
    let x1 = env.extra.sample();
    let own1 = env.own_cpu() + clients.pool.workers_cpu_s();
    let machine1 = machine_times();
    let _ = stop_tx.send(true);
    let max_rss = sampler.await.unwrap_or(0).max(s1.rss_kib);
    let after_metrics = env.gauges().await;
    let redis = match (redis0, env.redis_stats().await) {
        (Some(a), Some(b)) => redis_info::delta(&a, &b, outcome.events_accepted),
        _ => Value::Null,
    };

    let now = Totals::of(&snap);
    let prev = clients.totals;
    clients.totals = now;
    let lost = now.lost.saturating_sub(prev.lost);
    let duplicates = now.duplicates - prev.duplicates.min(now.duplicates);
    let reordered = now.reordered - prev.reordered.min(now.reordered);
    let misrouted = now.misrouted - prev.misrouted.min(now.misrouted);
    let closed = now.closed_unexpected - prev.closed_unexpected.min(now.closed_unexpected);
    let bad_ids = now.bad_ids - prev.bad_ids.min(now.bad_ids);
    let unreadable = now.unreadable - prev.unreadable.min(now.unreadable);
    let (slow_events, slow_deltas) = clients.published_to_slow(&expected);
    let hist = snap.histogram();
    let p99 = pct(&hist, 0.99);
    let deliveries = snap.received + snap.received_slow;
    let server_cpu = s1.cpu_s - s0.cpu_s;
    let extra_cpu = x1.cpu_s - x0.cpu_s;
    let own_cpu = own1 - own0;
    let nodes: Vec<Value> = nodes0
        .iter()
        .zip(&nodes1)
        .zip(&env.common.server_pids)
        .map(|((a, b), pid)| {
            json!({
                "pid": pid,
                "cpu_s": b.cpu_s - a.cpu_s,
                "rss_kib_end": b.rss_kib,
            })
        })
        .collect();
    let unsent = outcome.events_scheduled.saturating_sub(outcome.events_sent);
    let lag = outcome.lag.unwrap_or_else(crate::clients::histogram);
    let pass = p99 <= c.p99_limit_ms
        && lost == 0
        && duplicates == 0
        && reordered == 0
        && misrouted == 0
        && closed == 0
        && bad_ids == 0
        && unreadable == 0
        && outcome.request_errors == 0
        && unsent == 0
        && snap.drained;
    let per_million = |cpu: f64| {
        if deliveries == 0 {
            Value::Null
        } else {
            json!(cpu / deliveries as f64 * 1e6)
        }
    };
    // Built apart from `result`: one `json!` of both would pass the macro recursion limit.
    let other_cpu = (machine1.busy_s - machine0.busy_s) - own_cpu - server_cpu - extra_cpu;
    let server = json!({
        "cpu_s": server_cpu,
        "cpu_util": server_cpu / wall,
        "cpu_s_per_million_deliveries": per_million(server_cpu),
        "sys_cpu_s": s1.sys_s - s0.sys_s,
        "minor_faults": s1.minflt.saturating_sub(s0.minflt),
        "rss_kib_start": s0.rss_kib,
        "rss_kib_end": s1.rss_kib,
        "rss_kib_max": max_rss,
        "cpu_s_per_million_deliveries_with_extra": per_million(server_cpu + extra_cpu),
        "nodes": nodes,
        "metrics_before": before_metrics,
        "metrics_after": after_metrics,
    });
    let result = json!({
        "name": name,
        "offered_deliveries_per_s": offered_deliveries_per_s,
        "offered_events_per_s": events_per_s,
        "events_scheduled": outcome.events_scheduled,
        "events_sent": outcome.events_sent,
        "events_unsent": unsent,
        "events_accepted": outcome.events_accepted,
        "requests": outcome.requests,
        "request_errors": outcome.request_errors,
        "first_error": outcome.first_error,
        "publish_s": publish_s,
        "wall_s": wall,
        "deliveries": deliveries,
        "deliveries_healthy": snap.received,
        "deliveries_to_slow": snap.received_slow,
        "deliveries_per_s": deliveries as f64 / publish_s,
        "latency": latency_json(&hist),
        "publish_lag": latency_json(&lag),
        "lost": lost,
        "duplicates": duplicates,
        "reordered": reordered,
        "misrouted": misrouted,
        "closed_unexpected": closed,
        "bad_sse_ids": bad_ids,
        "unreadable_frames": unreadable,
        "closes": snap.closes,
        "received_healthy": snap.healthy,
        "slow_readers": {
            "connections": snap.slow,
            "read_bytes_per_s": clients.spec.slow_read_bytes_per_s,
            "events_published": slow_events,
            "deltas_published": slow_deltas,
            "received": snap.slow_tally,
            "closes": snap.closes_slow,
        },
        "drained": snap.drained,
        "open_connections": snap.open,
        "server": server,
        "extra": {
            "pids": env.common.extra_pids,
            "cpu_s": extra_cpu,
            "cpu_s_per_million_deliveries": per_million(extra_cpu),
            "rss_kib_end": x1.rss_kib,
        },
        "redis": redis,
        "loadgen": {
            "cpu_s": own_cpu,
            "cpu_util": own_cpu / wall,
            "cpu_s_per_million_deliveries": per_million(own_cpu),
            "saturated": own_cpu / wall > 0.9,
        },
        "machine": {
            "loadavg_1m_start": load0,
            "loadavg_1m_end": loadavg(),
            "busy_cpu_s": machine1.busy_s - machine0.busy_s,
            "steal_s": machine1.steal_s - machine0.steal_s,
            // What neither the server nor the generator used: other processes, and the
            // kernel's work not charged to either (e.g. softirqs run on idle cores).
            "other_cpu_s": other_cpu,
        },
        "pass": pass,
    });
    let mut extra_note = String::new();
    if !env.extra.0.is_empty() && deliveries > 0 {
        let _ = write!(
            extra_note,
            ", with extra pids {:.1} CPU-s/M",
            (server_cpu + extra_cpu) / deliveries as f64 * 1e6
        );
    }
    if let Some(per_event) = result["redis"]["commands_per_event"].as_f64() {
        let _ = write!(extra_note, ", Redis {per_event:.2} commands/event");
    }
    eprintln!(
        "  [{name}] {:.0} deliveries/s offered → {:.0}/s received; p50 {:.2} ms p99 {:.2} ms max {:.1} ms; \
         lost {lost} dup {duplicates} reord {reordered} misrouted {misrouted} unreadable {unreadable} closed {closed} errors {}; \
         server {:.1} CPU-s/M ({:.0}% busy){extra_note}, loadgen {:.0}% busy, others {:.0}% → {}",
        offered_deliveries_per_s,
        deliveries as f64 / publish_s,
        pct(&hist, 0.5),
        p99,
        hist.max() as f64 / 1_000.0,
        outcome.request_errors,
        if deliveries > 0 {
            server_cpu / deliveries as f64 * 1e6
        } else {
            0.0
        },
        server_cpu / wall * 100.0,
        own_cpu / wall * 100.0,
        other_cpu / wall * 100.0,
        if pass { "PASS" } else { "FAIL" },
    );
    Ok(result)
}

fn finish(
    env: &Env,
    scenario: &str,
    ready: &Ready,
    mut extra: serde_json::Map<String, Value>,
) -> Value {
    let mut m = env.header(scenario);
    m.insert(
        "ready".into(),
        serde_json::to_value(ready).unwrap_or(Value::Null),
    );
    m.append(&mut extra);
    Value::Object(m)
}

/// A fixed rate.
#[derive(Debug, Clone, Args)]
pub(crate) struct RateArgs {
    #[command(flatten)]
    pub(crate) common: Common,
    /// Offered deliveries per second.
    #[arg(long, default_value_t = 40_000.0)]
    rate: f64,
}

pub(crate) async fn steady(env: &Env, a: RateArgs) -> anyhow::Result<Value> {
    let c = &env.common;
    let mut cl = Clients::open(
        env,
        "steady",
        c.users,
        SlowReaders::default(),
        c.run_shape(),
    )
    .await?;
    let step = period(env, &mut cl, a.rate, 1, "steady", c.duration).await?;
    cl.pool.close().await?;
    let mut m = serde_json::Map::new();
    m.insert("steps".into(), json!([step]));
    Ok(finish(env, "steady", &cl.ready, m))
}

/// A sweep of rates.
#[derive(Debug, Clone, Args)]
pub(crate) struct SweepArgs {
    #[command(flatten)]
    pub(crate) common: Common,
    /// Offered deliveries per second of each step, in order (the sweep stops at the first
    /// failing step).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "10000,20000,30000,40000,50000,60000,70000,80000,90000,100000"
    )]
    rates: Vec<f64>,
    /// Keep stepping after a failing step.
    #[arg(long)]
    keep_going: bool,
    /// Bursty runs (each run `--burst` events to one user) instead of the steady workload.
    #[arg(long)]
    burst: Option<u32>,
}

pub(crate) async fn sweep(env: &Env, a: SweepArgs) -> anyhow::Result<Value> {
    let c = &env.common;
    let (shape, unit) = match a.burst {
        Some(b) => (RunShape::with_tools(b as usize), b),
        None => (c.run_shape(), 1),
    };
    let mut cl = Clients::open(env, "sweep", c.users, SlowReaders::default(), shape).await?;
    let mut steps = Vec::new();
    let mut best: Option<f64> = None;
    let mut first_fail: Option<f64> = None;
    for &rate in &a.rates {
        let step = period(
            env,
            &mut cl,
            rate,
            unit,
            &format!("{rate:.0}/s"),
            c.duration,
        )
        .await?;
        let pass = step["pass"].as_bool().unwrap_or(false);
        steps.push(step);
        if pass && first_fail.is_none() {
            best = Some(rate);
        } else if !pass {
            first_fail.get_or_insert(rate);
            if !a.keep_going {
                break;
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    cl.pool.close().await?;
    let mut m = serde_json::Map::new();
    m.insert("burst".into(), json!(a.burst));
    m.insert("max_passing_deliveries_per_s".into(), json!(best));
    m.insert("first_failing_deliveries_per_s".into(), json!(first_fail));
    m.insert("steps".into(), Value::Array(steps));
    Ok(finish(env, "sweep", &cl.ready, m))
}

/// Bursty runs.
#[derive(Debug, Clone, Args)]
pub(crate) struct BurstyArgs {
    #[command(flatten)]
    pub(crate) common: Common,
    /// Offered deliveries per second.
    #[arg(long, default_value_t = 40_000.0)]
    rate: f64,
    /// Events per run, all to one user in one request.
    #[arg(long, default_value_t = 20)]
    burst: u32,
}

pub(crate) async fn bursty(env: &Env, a: BurstyArgs) -> anyhow::Result<Value> {
    let c = &env.common;
    let mut cl = Clients::open(
        env,
        "bursty",
        c.users,
        SlowReaders::default(),
        RunShape::with_tools(a.burst as usize),
    )
    .await?;
    let step = period(env, &mut cl, a.rate, a.burst, "bursty", c.duration).await?;
    cl.pool.close().await?;
    let mut m = serde_json::Map::new();
    m.insert("burst".into(), json!(a.burst));
    m.insert("steps".into(), json!([step]));
    Ok(finish(env, "bursty", &cl.ready, m))
}

/// One period on fresh users (a user's runs, once finished, stay finished), the `slow`
/// connections not reading or reading slowly, and — given `(flooders, core)` — a frame flood
/// under way from a second before it to its end; then a pause, so that periods compared
/// with each other start alike. Returns the period's result, the clients' readiness and
/// what the flood did.
async fn fresh_period(
    env: &Env,
    tag: &str,
    slow: SlowReaders,
    flood: Option<(u32, Option<usize>)>,
    rate: f64,
    name: &str,
) -> anyhow::Result<(Value, Ready, Option<Value>)> {
    let c = &env.common;
    let mut clients = Clients::open(env, tag, c.users, slow, c.run_shape()).await?;
    let flood = match flood {
        Some((flooders, core)) => {
            let f = crate::flood::Flood::start(
                &env.addrs,
                &env.secret,
                &format!("{}{tag}-", env.run_id),
                flooders,
                core,
            )?;
            // Let the flood reach full pressure first.
            tokio::time::sleep(Duration::from_secs(1)).await;
            Some(f)
        }
        None => None,
    };
    let step = period(env, &mut clients, rate, 1, name, c.duration).await;
    let flood = flood.map(crate::flood::Flood::stop);
    let step = step?;
    clients.pool.close().await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok((step, clients.ready, flood))
}

/// The median of the steps' p99 latencies, in milliseconds.
fn median_p99(steps: &[Value]) -> f64 {
    let mut v: Vec<f64> = steps
        .iter()
        .map(|s| s["latency"]["p99_ms"].as_f64().unwrap_or(0.0))
        .collect();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// `with` over `without` (0 when there is nothing to compare with).
fn p99_ratio(without: f64, with: f64) -> f64 {
    if without > 0.0 { with / without } else { 0.0 }
}

/// The steps of alternating rounds, in the order they ran.
fn interleave(without: Vec<Value>, with: Vec<Value>) -> Vec<Value> {
    without
        .into_iter()
        .zip(with)
        .flat_map(|(a, b)| [a, b])
        .collect()
}

/// Slow consumers.
#[derive(Debug, Clone, Args)]
pub(crate) struct SlowArgs {
    #[command(flatten)]
    pub(crate) common: Common,
    /// Offered deliveries per second (to all connections, slow ones included).
    #[arg(long, default_value_t = 40_000.0)]
    rate: f64,
    /// Every N-th connection stops reading (100: 1 %).
    #[arg(long, default_value_t = 100)]
    slow_every: u32,
    /// The slow connections read at most this many bytes a second instead of stopping
    /// (0: they stop reading). With `--streamed`, what waits in a slow reader's queue is
    /// mostly deltas, which the server merges: the result's `slow_readers` says how many
    /// frames and bytes carried how many events, and whether the readers were cut (1013).
    #[arg(long, default_value_t = 0)]
    slow_read_rate: u64,
    /// The server's per-connection queue bound in bytes (--queue-max-bytes), to state the
    /// memory bound.
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    queue_max_bytes: u64,
    /// Rounds of (without, with) periods; the p99s compared are the medians.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
}

pub(crate) async fn slow(env: &Env, a: SlowArgs) -> anyhow::Result<Value> {
    let c = &env.common;
    // Periods alternate, without and with slow consumers, so a drift of the machine
    // weighs on both alike; the ratio compares the medians of the healthy clients' p99.
    let mut base_steps = Vec::new();
    let mut mixed_steps = Vec::new();
    let mut last_ready = None;
    for round in 0..a.rounds.max(1) {
        let (step, _, _) = fresh_period(
            env,
            &format!("base{round}"),
            SlowReaders::default(),
            None,
            a.rate,
            &format!("without slow #{}", round + 1),
        )
        .await?;
        base_steps.push(step);
        let (step, ready, _) = fresh_period(
            env,
            &format!("slow{round}"),
            SlowReaders {
                every: a.slow_every,
                read_bytes_per_s: a.slow_read_rate,
            },
            None,
            a.rate,
            &format!("with slow #{}", round + 1),
        )
        .await?;
        mixed_steps.push(step);
        last_ready = Some(ready);
    }
    let (base_p99, mixed_p99) = (median_p99(&base_steps), median_p99(&mixed_steps));
    let ratio = p99_ratio(base_p99, mixed_p99);
    let slow_conns = u64::from(c.users * c.conns_per_user) / u64::from(a.slow_every.max(1));
    // Server memory the slow consumers added: the peak RSS of each period with them over
    // the one before it without, less what the history grew meanwhile (history is
    // bounded on its own, by --history-max-bytes).
    let rss = |s: &Value| s["server"]["rss_kib_max"].as_u64().unwrap_or(0);
    let history = |s: &Value| {
        s["server"]["metrics_after"]["history_bytes"]
            .as_f64()
            .unwrap_or(0.0)
    };
    let growth_kib = base_steps
        .iter()
        .zip(&mixed_steps)
        .map(|(b, m)| {
            let rss_growth = rss(m).saturating_sub(rss(b)) as f64;
            let history_growth = (history(m) - history(b)) / 1024.0;
            (rss_growth - history_growth).max(0.0) as u64
        })
        .max()
        .unwrap_or(0);
    let bound_kib = slow_conns * a.queue_max_bytes / 1024;
    let closed_slow: u64 = mixed_steps
        .iter()
        .map(|s| {
            s["server"]["metrics_after"]["slow_consumer_closes"]
                .as_f64()
                .unwrap_or(0.0) as u64
        })
        .max()
        .unwrap_or(0);
    // What waited in the server's queues when each period with slow consumers ended.
    let queued_kib = mixed_steps
        .iter()
        .map(|s| {
            s["server"]["metrics_after"]["queued_bytes"]
                .as_f64()
                .unwrap_or(0.0) as u64
                / 1024
        })
        .max()
        .unwrap_or(0);
    eprintln!(
        "  healthy p99 (median of {} rounds) with slow consumers {mixed_p99:.2} ms / without \
         {base_p99:.2} ms = {ratio:.2}; queued in the server {queued_kib} KiB, RSS added \
         {growth_kib} KiB (bound by queues: {bound_kib} KiB for {slow_conns} slow \
         connections); slow-consumer closes {closed_slow}",
        a.rounds.max(1)
    );
    let slow_readers: Vec<Value> = mixed_steps
        .iter()
        .map(|s| s["slow_readers"].clone())
        .collect();
    for (r, step) in slow_readers.iter().zip(&mixed_steps) {
        let got = &r["received"];
        let server = |n: &str| {
            step["server"]["metrics_after"][n].as_f64().unwrap_or(0.0)
                - step["server"]["metrics_before"][n].as_f64().unwrap_or(0.0)
        };
        eprintln!(
            "  slow readers ({} B/s): {} frames ({} merged) for {} events of {} published \
             ({} deltas); {} bytes; closes seen {}; the server merged {:.0} deltas, cut \
             {:.0} slow consumers and dropped {:.0} connections at the write timeout",
            a.slow_read_rate,
            got["frames"],
            got["merged_frames"],
            got["events_covered"],
            r["events_published"],
            r["deltas_published"],
            got["bytes"],
            r["closes"],
            server("deltas_merged"),
            server("slow_consumer_closes"),
            server("write_timeouts"),
        );
    }
    let mut m = serde_json::Map::new();
    m.insert("slow_every".into(), json!(a.slow_every));
    m.insert("slow_read_bytes_per_s".into(), json!(a.slow_read_rate));
    m.insert("slow_readers".into(), json!(slow_readers));
    m.insert("slow_connections".into(), json!(slow_conns));
    m.insert("healthy_p99_ms_without".into(), json!(base_p99));
    m.insert("healthy_p99_ms_with".into(), json!(mixed_p99));
    m.insert("p99_ratio".into(), json!(ratio));
    m.insert("rss_growth_less_history_kib".into(), json!(growth_kib));
    m.insert("queue_bound_kib".into(), json!(bound_kib));
    m.insert("queued_kib_end".into(), json!(queued_kib));
    m.insert("slow_consumer_closes".into(), json!(closed_slow));
    m.insert("steps".into(), json!(interleave(base_steps, mixed_steps)));
    let ready = last_ready.expect("at least one round ran");
    Ok(finish(env, "slow", &ready, m))
}

/// A frame flood beside a steady workload.
#[derive(Debug, Clone, Args)]
pub(crate) struct FloodArgs {
    #[command(flatten)]
    pub(crate) common: Common,
    /// Offered deliveries per second to the measured clients.
    #[arg(long, default_value_t = 40_000.0)]
    rate: f64,
    /// Clients sending `ack` frames as fast as they can, each a user of its own.
    #[arg(long, default_value_t = 8)]
    flooders: u32,
    /// Pin the flooders' thread to this core.
    #[arg(long)]
    flood_core: Option<usize>,
    /// Rounds of (without, with) periods; the p99s compared are the medians.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
}

/// Issue 14: one client sending frames in a loop held a core. The same rate without,
/// then with, flooders; the measured (other) users' p99 is compared, as medians over the
/// rounds: within 2× is the bound. Flooders are closed with 1008 by the server's
/// per-connection frame limit and come straight back.
pub(crate) async fn flood(env: &Env, a: FloodArgs) -> anyhow::Result<Value> {
    let mut base_steps = Vec::new();
    let mut flood_steps = Vec::new();
    let mut floods = Vec::new();
    let mut last_ready = None;
    for round in 0..a.rounds.max(1) {
        let (step, _, _) = fresh_period(
            env,
            &format!("fbase{round}"),
            SlowReaders::default(),
            None,
            a.rate,
            &format!("without flood #{}", round + 1),
        )
        .await?;
        base_steps.push(step);
        let (step, ready, flood) = fresh_period(
            env,
            &format!("flood{round}"),
            SlowReaders::default(),
            Some((a.flooders, a.flood_core)),
            a.rate,
            &format!("with flood #{}", round + 1),
        )
        .await?;
        flood_steps.push(step);
        floods.extend(flood);
        last_ready = Some(ready);
    }
    let (base_p99, flood_p99) = (median_p99(&base_steps), median_p99(&flood_steps));
    let ratio = p99_ratio(base_p99, flood_p99);
    let closes = flood_steps
        .iter()
        .map(|s| {
            s["server"]["metrics_after"]["client_rate_limit_closes"]
                .as_f64()
                .unwrap_or(0.0) as u64
        })
        .max()
        .unwrap_or(0);
    eprintln!(
        "  other users' p99 (median of {} rounds) with a flood of {} clients {flood_p99:.2} ms / \
         without {base_p99:.2} ms = {ratio:.2} (bound: 2); flooders closed with 1008 by the \
         server: {closes}",
        a.rounds.max(1),
        a.flooders
    );
    let mut m = serde_json::Map::new();
    m.insert("flooders".into(), json!(a.flooders));
    m.insert("others_p99_ms_without".into(), json!(base_p99));
    m.insert("others_p99_ms_with".into(), json!(flood_p99));
    m.insert("p99_ratio".into(), json!(ratio));
    m.insert("within_2x".into(), json!(ratio > 0.0 && ratio <= 2.0));
    m.insert("rate_limit_closes".into(), json!(closes));
    m.insert("floods".into(), Value::Array(floods));
    m.insert("steps".into(), json!(interleave(base_steps, flood_steps)));
    let ready = last_ready.expect("at least one round ran");
    Ok(finish(env, "flood", &ready, m))
}

/// Idle connections.
#[derive(Debug, Clone, Args)]
pub(crate) struct IdleArgs {
    #[command(flatten)]
    pub(crate) common: Common,
    /// Connections to hold (users = connections ÷ --conns-per-user).
    #[arg(long, default_value_t = 15_000)]
    connections: u32,
    /// How long to hold them.
    #[arg(long, default_value = "600s", value_parser = humantime::parse_duration)]
    hold: Duration,
    /// Wait before reading memory, after connecting and after the burst.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    settle: Duration,
    /// After the hold, events published to every user (a burst of traffic), before memory
    /// is read again. 0: no burst.
    #[arg(long, default_value_t = 20)]
    burst_events: u32,
    /// Offered deliveries per second of that burst.
    #[arg(long, default_value_t = 30_000.0)]
    burst_rate: f64,
}

pub(crate) async fn idle(env: &Env, a: IdleArgs) -> anyhow::Result<Value> {
    let c = &env.common;
    let cpu = c.conns_per_user.max(1);
    let users = a.connections / cpu;
    let n = u64::from(users * cpu);
    let base_metrics = env.gauges().await;
    let s0 = env.sample();
    let mut cl = Clients::open(
        env,
        "idle",
        users,
        SlowReaders::default(),
        RunShape::with_tools(a.burst_events.max(2) as usize),
    )
    .await?;
    tokio::time::sleep(a.settle).await;
    let s1 = env.sample();
    let fresh_metrics = env.gauges().await;
    let per_conn = |kib: u64| kib as f64 * 1024.0 / n as f64;
    let fresh = per_conn(s1.rss_kib.saturating_sub(s0.rss_kib));
    eprintln!(
        "  {n} connections: server RSS {} → {} KiB: {fresh:.0} bytes per connection; holding {:?}",
        s0.rss_kib, s1.rss_kib, a.hold
    );
    let t0 = Instant::now();
    let mut min_open = u64::MAX;
    while t0.elapsed() < a.hold {
        let left = a.hold.saturating_sub(t0.elapsed());
        tokio::time::sleep(left.min(Duration::from_secs(30))).await;
        let s = cl.pool.snapshot(None, Duration::ZERO).await?;
        min_open = min_open.min(s.open);
        let g = env.gauges().await;
        eprintln!(
            "  held {:>4.0}s: {} open here, server counts {}, {} closed",
            t0.elapsed().as_secs_f64(),
            s.open,
            g["connections"],
            s.closed_unexpected
        );
    }
    let held = cl.pool.snapshot(None, Duration::ZERO).await?;
    let s2 = env.sample();
    let mut m = serde_json::Map::new();
    m.insert("connections".into(), json!(n));
    m.insert("hold_s".into(), json!(a.hold.as_secs_f64()));
    m.insert("open_after_hold".into(), json!(held.open));
    m.insert(
        "min_open_during_hold".into(),
        json!(min_open.min(held.open)),
    );
    m.insert("closed_during_hold".into(), json!(held.closed_unexpected));
    m.insert("closes".into(), json!(held.closes));
    m.insert("server_rss_kib_baseline".into(), json!(s0.rss_kib));
    m.insert("server_rss_kib_connected".into(), json!(s1.rss_kib));
    m.insert("server_rss_kib_after_hold".into(), json!(s2.rss_kib));
    m.insert("bytes_per_connection_fresh".into(), json!(fresh));
    m.insert(
        "bytes_per_connection_after_hold".into(),
        json!(per_conn(s2.rss_kib.saturating_sub(s0.rss_kib))),
    );
    m.insert("metrics_baseline".into(), base_metrics);
    m.insert("metrics_connected".into(), fresh_metrics);
    if a.burst_events > 0 {
        // Every user gets one run of `burst_events` events, spread over the burst.
        let events = u64::from(users) * u64::from(a.burst_events);
        let deliveries = events * u64::from(cpu);
        let secs = (deliveries as f64 / a.burst_rate).max(1.0);
        let d = Duration::from_secs_f64(secs);
        let step = period(env, &mut cl, a.burst_rate, a.burst_events, "burst", d).await?;
        tokio::time::sleep(a.settle).await;
        let s3 = env.sample();
        let g = env.gauges().await;
        let history = g["history_bytes"].as_f64().unwrap_or(0.0);
        let after = per_conn(s3.rss_kib.saturating_sub(s0.rss_kib));
        let after_less_history =
            (s3.rss_kib.saturating_sub(s0.rss_kib) as f64 * 1024.0 - history).max(0.0) / n as f64;
        eprintln!(
            "  after the burst: server RSS {} KiB: {after:.0} bytes per connection \
             ({after_less_history:.0} without the {history:.0} bytes of history held)",
            s3.rss_kib
        );
        m.insert("burst".into(), step);
        m.insert("server_rss_kib_after_burst".into(), json!(s3.rss_kib));
        m.insert("bytes_per_connection_after_burst".into(), json!(after));
        m.insert(
            "bytes_per_connection_after_burst_less_history".into(),
            json!(after_less_history),
        );
        m.insert("metrics_after_burst".into(), g);
    }
    let ready = cl.ready.clone();
    cl.pool.close().await?;
    tokio::time::sleep(a.settle).await;
    m.insert(
        "server_rss_kib_after_close".into(),
        json!(env.sample().rss_kib),
    );
    m.insert("metrics_after_close".into(), env.gauges().await);
    Ok(finish(env, "idle", &ready, m))
}

/// Connection churn.
#[derive(Debug, Clone, Args)]
pub(crate) struct ChurnArgs {
    #[command(flatten)]
    pub(crate) common: Common,
    /// Cycles of connect → publish → leave.
    #[arg(long, default_value_t = 10)]
    cycles: u32,
    /// Offered deliveries per second while connected.
    #[arg(long, default_value_t = 20_000.0)]
    rate: f64,
    /// After the last cycle, how long to wait for gauges to return to baseline (history
    /// expires after the server's --history-max-age plus a sweep).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    settle: Duration,
    /// Also read the server's RSS this long after the last cycle ended, whether or not the
    /// gauges are back by then (docs/performance.md compares it with the pre-traffic
    /// baseline). 0: not read.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    rss_at: Duration,
}

pub(crate) async fn churn(env: &Env, a: ChurnArgs) -> anyhow::Result<Value> {
    let c = &env.common;
    let base_metrics = env.gauges().await;
    let s0 = env.sample();
    let mut cycles = Vec::new();
    let mut ready = Ready::default();
    for i in 0..a.cycles {
        let mut cl = Clients::open(
            env,
            &format!("churn{i}"),
            c.users,
            SlowReaders::default(),
            c.run_shape(),
        )
        .await?;
        let step = period(env, &mut cl, a.rate, 1, &format!("cycle {i}"), c.duration).await?;
        ready.connected += cl.ready.connected;
        ready.failed += cl.ready.failed;
        cl.pool.close().await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let g = env.gauges().await;
        let s = env.sample();
        eprintln!(
            "  after cycle {i}: server RSS {} KiB, connections {}, users {}, history users {} events {}",
            s.rss_kib, g["connections"], g["users"], g["history_users"], g["history_events"]
        );
        cycles.push(json!({ "step": step, "rss_kib_after": s.rss_kib, "metrics_after": g }));
    }
    let t0 = Instant::now();
    let base_users = base_metrics["history_users"].as_f64().unwrap_or(0.0);
    let base_events = base_metrics["history_events"].as_f64().unwrap_or(0.0);
    let mut last = env.gauges().await;
    while t0.elapsed() < a.settle {
        let back = last["connections"].as_f64() == Some(0.0)
            && last["users"].as_f64() == Some(0.0)
            && last["history_users"].as_f64().unwrap_or(f64::MAX) <= base_users
            && last["history_events"].as_f64().unwrap_or(f64::MAX) <= base_events;
        if back {
            break;
        }
        let left = a.settle.saturating_sub(t0.elapsed());
        tokio::time::sleep(left.min(Duration::from_secs(2))).await;
        last = env.gauges().await;
    }
    let s1 = env.sample();
    let back_after = t0.elapsed().as_secs_f64();
    eprintln!(
        "  settled after {back_after:.0} s: server RSS {} → {} KiB (peak {} KiB); gauges {}",
        s0.rss_kib, s1.rss_kib, s1.hwm_kib, last
    );
    let mut at = Value::Null;
    if !a.rss_at.is_zero() {
        tokio::time::sleep(a.rss_at.saturating_sub(t0.elapsed())).await;
        let s = env.sample();
        let after_s = t0.elapsed().as_secs_f64();
        let ratio = s.rss_kib as f64 / s0.rss_kib.max(1) as f64;
        eprintln!(
            "  {after_s:.0} s after the soak: server RSS {} KiB, {ratio:.2} × the baseline",
            s.rss_kib
        );
        at = json!({ "after_s": after_s, "rss_kib": s.rss_kib, "over_baseline": ratio });
    }
    let mut m = serde_json::Map::new();
    m.insert("cycles".into(), json!(a.cycles));
    m.insert("server_rss_kib_baseline".into(), json!(s0.rss_kib));
    m.insert("server_rss_kib_end".into(), json!(s1.rss_kib));
    m.insert("server_rss_kib_peak".into(), json!(s1.hwm_kib));
    m.insert("metrics_baseline".into(), base_metrics);
    m.insert("metrics_end".into(), last);
    m.insert("settle_s".into(), json!(back_after));
    m.insert("server_rss_after_soak".into(), at);
    m.insert(
        "steps".into(),
        Value::Array(cycles.iter().map(|c| c["step"].clone()).collect()),
    );
    m.insert("per_cycle".into(), Value::Array(cycles));
    Ok(finish(env, "churn", &ready, m))
}

/// The server's development credentials file (written by `agentwire-server` in
/// development mode): the secret and the API key.
#[derive(serde::Deserialize)]
struct DevCredentials {
    jwt_secret: String,
    api_key: String,
}
