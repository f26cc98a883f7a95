//! Frame floods (issue 14): clients that send `ack` frames as fast as their socket takes
//! them, the attack that once held a server core at 100 %. Each flooder is a user of its
//! own; when the server closes it (1008, past `--client-frame-rate`), it connects again and
//! goes on, so the pressure lasts the whole period.
//!
//! The flooders run on a thread and runtime of their own, at the lowest scheduling priority
//! (nice 19), so their busy loops take nothing from the generator's clients, whose
//! latencies are being measured. Without a third core they share the clients' core: at the
//! same priority a flooder spinning on a socket the server drains quickly would delay the
//! clients' reads by whole scheduler slices, and the figure would measure the generator
//! rather than the server. At nice 19 the clients' threads preempt the flood thread as soon
//! as they wake; the flooders keep every cycle the clients leave (about 60 % of the core at
//! the flood scenario's rate), far more than it takes to send faster than the server's
//! limit. The flood thread's own CPU time is reported (`flooders_cpu_s`) so a reader can
//! see how much of the core it took.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

/// Frames a flooder queues before each flush.
const FLUSH_EVERY: u64 = 64;

/// Pause before a closed flooder connects again (keeps a refused handshake loop from
/// becoming a handshake flood instead).
const RECONNECT_PAUSE: Duration = Duration::from_millis(20);

#[derive(Debug, Default)]
struct Stats {
    frames_sent: AtomicU64,
    connections: AtomicU64,
    closed_1008: AtomicU64,
    closed_other: AtomicU64,
    connect_failures: AtomicU64,
    /// Handshakes answered 429 (the server's cool-down after a 1008).
    refused_429: AtomicU64,
    /// The flood thread's CPU time, in milliseconds, when it ended.
    cpu_ms: AtomicU64,
}

/// Flooders at work until [`Flood::stop`].
pub(crate) struct Flood {
    stop: Arc<AtomicBool>,
    stats: Arc<Stats>,
    thread: std::thread::JoinHandle<()>,
    flooders: u32,
}

impl Flood {
    /// Starts `flooders` flooders, users `{prefix}flood-{i}`, spread over `servers`.
    pub(crate) fn start(
        servers: &[SocketAddr],
        secret: &str,
        prefix: &str,
        flooders: u32,
        core: Option<usize>,
    ) -> anyhow::Result<Flood> {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Stats::default());
        let mut plan = Vec::new();
        for i in 0..flooders {
            let user = format!("{prefix}flood-{i}");
            let token = crate::clients::mint(secret, &user, 24 * 3600)?;
            plan.push((servers[i as usize % servers.len().max(1)], token));
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (s, st) = (stop.clone(), stats.clone());
        let thread = std::thread::Builder::new()
            .name("flood".into())
            .spawn(move || {
                if let Some(core) = core {
                    crate::pin(core);
                }
                // This thread only (Linux gives each thread its own nice value).
                if let Err(e) = rustix::process::setpriority_process(None, 19) {
                    eprintln!("warning: the flood thread keeps its priority: {e}");
                }
                let cpu_stats = st.clone();
                runtime.block_on(async move {
                    let tasks: Vec<_> = plan
                        .into_iter()
                        .map(|(server, token)| {
                            tokio::spawn(flooder(server, token, s.clone(), st.clone()))
                        })
                        .collect();
                    for t in tasks {
                        let _ = t.await;
                    }
                });
                let cpu_ms = (crate::procstat::thread_cpu_s() * 1_000.0) as u64;
                cpu_stats.cpu_ms.store(cpu_ms, Ordering::Relaxed);
            })?;
        Ok(Flood {
            stop,
            stats,
            thread,
            flooders,
        })
    }

    /// Stops the flooders and sums up what they did.
    pub(crate) fn stop(self) -> Value {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        let s = &self.stats;
        json!({
            "flooders": self.flooders,
            "frames_sent": s.frames_sent.load(Ordering::Relaxed),
            "connections": s.connections.load(Ordering::Relaxed),
            "closed_1008": s.closed_1008.load(Ordering::Relaxed),
            "closed_other": s.closed_other.load(Ordering::Relaxed),
            "connect_failures": s.connect_failures.load(Ordering::Relaxed),
            "refused_429": s.refused_429.load(Ordering::Relaxed),
            "flooders_cpu_s": s.cpu_ms.load(Ordering::Relaxed) as f64 / 1_000.0,
        })
    }
}

async fn flooder(server: SocketAddr, token: String, stop: Arc<AtomicBool>, stats: Arc<Stats>) {
    let frame = r#"{"type":"ack","seq":1}"#;
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut req) = format!("ws://{server}/ws").into_client_request() else {
            return;
        };
        if let Ok(v) = HeaderValue::from_str(&format!("Bearer {token}")) {
            req.headers_mut().insert("authorization", v);
        }
        let ws = match tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::connect_async(req),
        )
        .await
        {
            Ok(Ok((ws, _))) => ws,
            // Refused during its cool-down: a flooder does not honour Retry-After.
            Ok(Err(tokio_tungstenite::tungstenite::Error::Http(resp)))
                if resp.status().as_u16() == 429 =>
            {
                stats.refused_429.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(RECONNECT_PAUSE).await;
                continue;
            }
            _ => {
                stats.connect_failures.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(RECONNECT_PAUSE).await;
                continue;
            }
        };
        stats.connections.fetch_add(1, Ordering::Relaxed);
        let (mut sink, mut stream) = ws.split();
        let closed = Arc::new(AtomicBool::new(false));
        let reader = {
            let (closed, stats) = (closed.clone(), stats.clone());
            tokio::spawn(async move {
                while let Some(msg) = stream.next().await {
                    if let Ok(Message::Close(frame)) = msg {
                        let code = frame.map(|f| u16::from(f.code));
                        let counter = if code == Some(1008) {
                            &stats.closed_1008
                        } else {
                            &stats.closed_other
                        };
                        counter.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    if msg.is_err() {
                        break;
                    }
                }
                closed.store(true, Ordering::Relaxed);
            })
        };
        let mut sent = 0u64;
        while !stop.load(Ordering::Relaxed) && !closed.load(Ordering::Relaxed) {
            if sink.feed(Message::text(frame)).await.is_err() {
                break;
            }
            sent += 1;
            if sent.is_multiple_of(FLUSH_EVERY) {
                if sink.flush().await.is_err() {
                    break;
                }
                stats.frames_sent.fetch_add(FLUSH_EVERY, Ordering::Relaxed);
                // Let the reader see the close.
                tokio::task::yield_now().await;
            }
        }
        let _ = sink.close().await;
        reader.abort();
        tokio::time::sleep(RECONNECT_PAUSE).await;
    }
}
