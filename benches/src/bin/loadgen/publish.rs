//! The publisher: a fixed, open-loop schedule of batches, sent through `POST /v1/events`
//! or emitted in-process through the manager.
//!
//! Open loop: batch `b` of a lane is due at `start + offset + b × interval`, computed from
//! the start and never from when the previous batch finished, and every event carries its
//! batch's *scheduled* time. A server that answers late makes later batches go out late,
//! and their latency (measured from the schedule) shows it; it cannot slow the schedule
//! down or hide the wait (no coordinated omission).
//!
//! Users are split over lanes (user `u` → lane `u % lanes`); each lane sends its batches
//! in order, one request in flight, on a keep-alive connection per node, so one user's
//! events are published in order and its runs keep the lifecycle the server checks. With
//! several nodes, each batch goes to the node the placement picks for it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use agentwire_manager::UnifiedWebSocketManager;
use agentwire_protocol::UserId;
use hdrhistogram::Histogram;
use tokio::time::Instant;

use crate::clients::{histogram, now_us};
use crate::events::{EventMaker, user_id};
use crate::http::HttpConn;
use crate::placement::Placement;

/// Where events go.
#[derive(Debug, Clone)]
pub(crate) enum Sink {
    /// `POST /v1/events` on the nodes at these addresses, with this API key; each batch
    /// on the node `placement` picks.
    Http {
        addrs: Vec<SocketAddr>,
        api_key: String,
        placement: Placement,
        seed: u64,
    },
    /// Straight into the in-process server's manager, from tasks on the server's runtime
    /// (an embedding service emits on its own threads, and pays for it).
    Manager {
        manager: UnifiedWebSocketManager,
        runtime: tokio::runtime::Handle,
    },
}

/// One period of publishing.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) users: u32,
    pub(crate) events_per_s: f64,
    pub(crate) duration: Duration,
    /// Events of one user in a row: 1 (round-robin over users) or a whole run (bursty).
    pub(crate) unit: u32,
    /// Most events per request (units are never split).
    pub(crate) batch: u32,
    pub(crate) lanes: u32,
    /// How long past the schedule's end unsent batches may still go out.
    pub(crate) grace: Duration,
}

/// What a period of publishing did.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub(crate) events_scheduled: u64,
    pub(crate) events_sent: u64,
    pub(crate) events_accepted: u64,
    pub(crate) requests: u64,
    pub(crate) request_errors: u64,
    pub(crate) first_error: Option<String>,
    /// How late batches went out (µs), actual send time minus scheduled time.
    pub(crate) lag: Option<Histogram<u64>>,
}

/// Per-user counters that persist across periods: events published (`k`) and accepted.
#[derive(Debug)]
pub(crate) struct Streams {
    pub(crate) published: Vec<AtomicU64>,
    pub(crate) accepted: Vec<AtomicU64>,
}

impl Streams {
    pub(crate) fn new(users: u32) -> Arc<Self> {
        Arc::new(Streams {
            published: (0..users).map(|_| AtomicU64::new(0)).collect(),
            accepted: (0..users).map(|_| AtomicU64::new(0)).collect(),
        })
    }

    /// What each user's connections should have received by now.
    pub(crate) fn expected(&self) -> Vec<u64> {
        self.accepted
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .collect()
    }
}

/// Progress counter of the running period (events sent so far).
pub(crate) type Progress = Arc<AtomicU64>;

/// Runs `plan` to its end (or the end of its grace) and reports.
pub(crate) async fn run(
    sink: &Sink,
    maker: &Arc<EventMaker>,
    streams: &Arc<Streams>,
    plan: &Plan,
    progress: Progress,
) -> Outcome {
    let lanes = match sink {
        Sink::Http {
            addrs, placement, ..
        } => placement.lanes(plan.lanes.clamp(1, plan.users.max(1)), addrs.len()),
        Sink::Manager { .. } => plan.lanes.clamp(1, plan.users.max(1)),
    };
    let unit = plan.unit.max(1);
    let units_per_batch = (plan.batch / unit).max(1);
    let events_per_batch = units_per_batch * unit;
    let lane_eps = plan.events_per_s / f64::from(lanes);
    let interval = f64::from(events_per_batch) / lane_eps.max(1e-9);
    let batches = ((plan.duration.as_secs_f64() / interval).round() as u64).max(1);
    let start = Instant::now() + Duration::from_millis(20);
    let wall_start = now_us() + 20_000;
    let give_up = start + plan.duration + plan.grace;
    let spawner = match sink {
        Sink::Manager { runtime, .. } => runtime.clone(),
        Sink::Http { .. } => tokio::runtime::Handle::current(),
    };
    let mut tasks = Vec::new();
    let mut ticks = Vec::new();
    for lane in 0..lanes {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        ticks.push(tx);
        let lane_plan = LanePlan {
            lane,
            users: (lane..plan.users).step_by(lanes as usize).collect(),
            unit,
            units_per_batch,
            scheduled: batches * u64::from(events_per_batch),
            give_up,
            wall_start,
        };
        let sink = sink.clone();
        let maker = maker.clone();
        let streams = streams.clone();
        let progress = progress.clone();
        tasks.push(
            spawner.spawn(
                async move { run_lane(sink, maker, streams, lane_plan, rx, progress).await },
            ),
        );
    }
    // The schedule is kept by a thread of its own: a tokio timer fires up to a millisecond
    // late (its wheel ticks in milliseconds), which would add a millisecond of the
    // generator's own to every latency; a thread sleep is good to tens of microseconds.
    let ticker = std::thread::Builder::new()
        .name("lg-ticker".into())
        .spawn(move || {
            for b in 0..batches {
                for (lane, tx) in ticks.iter().enumerate() {
                    let due_s = (b as f64 + lane as f64 / f64::from(lanes)) * interval;
                    let due = start + Duration::from_secs_f64(due_s);
                    let now = Instant::now();
                    if now > give_up {
                        return;
                    }
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                    let _ = tx.send(Tick { due, due_s });
                }
            }
        });
    if let Err(e) = ticker {
        tracing_free_warn(&format!("cannot start the ticker thread: {e}"));
    }
    let mut out = Outcome {
        lag: Some(histogram()),
        ..Outcome::default()
    };
    for t in tasks {
        let Ok(o) = t.await else { continue };
        out.events_scheduled += o.events_scheduled;
        out.events_sent += o.events_sent;
        out.events_accepted += o.events_accepted;
        out.requests += o.requests;
        out.request_errors += o.request_errors;
        if out.first_error.is_none() {
            out.first_error = o.first_error;
        }
        if let (Some(a), Some(b)) = (out.lag.as_mut(), o.lag.as_ref()) {
            let _ = a.add(b);
        }
    }
    out
}

struct LanePlan {
    lane: u32,
    users: Vec<u32>,
    unit: u32,
    units_per_batch: u32,
    scheduled: u64,
    give_up: Instant,
    wall_start: u64,
}

/// A batch is due.
struct Tick {
    due: Instant,
    due_s: f64,
}

fn tracing_free_warn(msg: &str) {
    eprintln!("warning: {msg}");
}

async fn run_lane(
    sink: Sink,
    maker: Arc<EventMaker>,
    streams: Arc<Streams>,
    plan: LanePlan,
    mut ticks: tokio::sync::mpsc::UnboundedReceiver<Tick>,
    progress: Progress,
) -> Outcome {
    let mut out = Outcome {
        lag: Some(histogram()),
        events_scheduled: plan.scheduled,
        ..Outcome::default()
    };
    if plan.users.is_empty() {
        return out;
    }
    let events_per_batch = plan.units_per_batch * plan.unit;
    // One keep-alive connection per node, opened when first used.
    let mut http: Vec<HttpConn> = match &sink {
        Sink::Http { addrs, .. } => addrs.iter().map(|a| HttpConn::new(*a)).collect(),
        Sink::Manager { .. } => Vec::new(),
    };
    let mut batch_no = 0u64;
    let mut cursor = 0usize;
    let mut body = Vec::with_capacity(events_per_batch as usize * 400);
    let mut picked: Vec<u32> = Vec::with_capacity(plan.units_per_batch as usize);
    while let Some(tick) = ticks.recv().await {
        let now = Instant::now();
        if now > plan.give_up {
            break;
        }
        let sent_at = plan.wall_start + (tick.due_s * 1e6) as u64;
        if let Some(lag) = out.lag.as_mut() {
            lag.saturating_record(now.saturating_duration_since(tick.due).as_micros().max(1) as u64);
        }
        picked.clear();
        for _ in 0..plan.units_per_batch {
            picked.push(plan.users[cursor % plan.users.len()]);
            cursor += 1;
        }
        out.requests += 1;
        let node = match &sink {
            Sink::Http {
                placement, seed, ..
            } => placement.batch_node(http.len(), *seed, plan.lane, batch_no),
            Sink::Manager { .. } => 0,
        };
        batch_no += 1;
        let result = match (&sink, http.get_mut(node)) {
            (Sink::Http { api_key, .. }, Some(conn)) => {
                body.clear();
                body.push(b'[');
                let mut first = true;
                for &u in &picked {
                    for _ in 0..plan.unit {
                        let k = streams.published[u as usize].fetch_add(1, Ordering::Relaxed) + 1;
                        if !first {
                            body.push(b',');
                        }
                        first = false;
                        maker.write_json(&mut body, u, k, sent_at);
                    }
                }
                body.push(b']');
                match conn.post_json("/v1/events", api_key, &body).await {
                    Ok(r) if r.status == 200 => Ok(()),
                    Ok(r) => Err(format!(
                        "HTTP {}: {}",
                        r.status,
                        String::from_utf8_lossy(&r.body[..r.body.len().min(300)])
                    )),
                    Err(e) => Err(format!("{e:#}")),
                }
            }
            (Sink::Manager { manager, .. }, _) => {
                emit_in_process(manager, &maker, &streams, &picked, plan.unit, sent_at).await
            }
            (Sink::Http { .. }, None) => Err("no connection".into()),
        };
        out.events_sent += u64::from(events_per_batch);
        progress.fetch_add(u64::from(events_per_batch), Ordering::Relaxed);
        match result {
            Ok(()) => {
                out.events_accepted += u64::from(events_per_batch);
                for &u in &picked {
                    streams.accepted[u as usize].fetch_add(u64::from(plan.unit), Ordering::Relaxed);
                }
            }
            Err(e) => {
                out.request_errors += 1;
                out.first_error.get_or_insert(e);
            }
        }
    }
    out
}

async fn emit_in_process(
    m: &UnifiedWebSocketManager,
    maker: &EventMaker,
    streams: &Streams,
    picked: &[u32],
    unit: u32,
    sent_at: u64,
) -> Result<(), String> {
    for &u in picked {
        let user = UserId::new(user_id(&maker.prefix, u)).map_err(|e| e.to_string())?;
        for _ in 0..unit {
            let k = streams.published[u as usize].fetch_add(1, Ordering::Relaxed) + 1;
            let event = maker.event(u, k, sent_at);
            let prepared = m
                .prepare_event(&user, &event, None)
                .map_err(|e| e.to_string())?;
            m.emit_prepared(&prepared)
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}
