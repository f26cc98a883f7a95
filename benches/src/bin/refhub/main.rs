//! `refhub`: the reference hub that agentwire is measured against (issue 16,
//! docs/performance.md "Side by side").
//!
//! The simplest fast design on agentwire's own stack, speaking exactly the part of the
//! protocol the load generator uses: hyper serves HTTP and the upgrade; a client's token
//! comes in `Authorization: Bearer` (HS256 JWT, `sub` is the user); its first frame is
//! `connection_established`; `POST /v1/events` takes agentwire's body (one event or an
//! array), API key and answer shape (`{"results": [{seq, event_id, ts}]}`), gives each
//! event its user's next `seq`, serializes the frame once into shared bytes, and queues it
//! on every connection of the user; each connection's writer drains its queue into one
//! vectored `sendmsg` per batch; tungstenite reads. It allocates with mimalloc as the
//! agentwire binary does, and its reader keeps agentwire's buffer settings.
//!
//! What it leaves out, deliberately (so its figures are a floor for the same work, not a
//! competitor): no history, resume, `epoch` semantics or `replay_gap`; no dedupe by
//! `event_id`; no run-lifecycle check; no typed validation of `data` (it is copied as
//! raw JSON; only well-formedness, the top-level fields and the identifier rule are
//! checked); no per-user connection limit, heartbeats, write timeouts, token expiry while
//! connected, `ack`/`resume`/`refresh_token` frames, origin check, rate limit or
//! Prometheus registry (`/metrics` is a handful of counters); a user's `seq` restarts when
//! its last connection closes, and an event for a user with no connection is answered
//! with seq 0 and dropped. Nothing in it waits or works more than that design needs.
//!
//! It uses no code of agentwire (not even where the two do the same, as in binding the
//! listener or writing frames): a change to agentwire must move one side of a ratio only.

mod http;
mod hub;
mod wire;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpSocket};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Flags named as agentwire-server's, so one helper starts either.
#[derive(Debug, Clone, Parser)]
#[command(name = "refhub", about = "the reference hub of docs/performance.md")]
struct Cli {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
    /// Pending connections the listener queues (agentwire's default).
    #[arg(long, default_value_t = 4096)]
    listen_backlog: u32,
    /// HS256 secret of client tokens.
    #[arg(long, env = "REFHUB_JWT_SECRET", hide_env_values = true)]
    jwt_secret: String,
    /// API keys for POST /v1/events (comma-separated).
    #[arg(
        long,
        env = "REFHUB_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true,
        required = true
    )]
    api_keys: Vec<String>,
    /// Most open connections; further handshakes get 503.
    #[arg(long, default_value_t = 10_000)]
    max_connections: u64,
    /// Most bytes waiting for one connection; past it the connection is closed with 1013.
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    queue_max_bytes: usize,
    /// Most events in one publish body.
    #[arg(long, default_value_t = 100)]
    max_batch: usize,
    /// Most bytes in one publish body.
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    max_request_bytes: usize,
}

fn listen(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog.max(1))
}

fn state(cli: &Cli) -> (Arc<hub::Hub>, Arc<http::Auth>) {
    let hub = Arc::new(hub::Hub::new(hub::Limits {
        max_connections: cli.max_connections,
        queue_max_bytes: cli.queue_max_bytes,
    }));
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.set_required_spec_claims(&["exp", "sub"]);
    let auth = Arc::new(http::Auth {
        jwt: jsonwebtoken::DecodingKey::from_secret(cli.jwt_secret.as_bytes()),
        validation,
        api_keys: cli.api_keys.clone(),
        max_batch: cli.max_batch,
        max_request_bytes: cli.max_request_bytes,
    });
    (hub, auth)
}

/// Accepts connections until the process ends.
async fn serve(listener: TcpListener, hub: Arc<hub::Hub>, auth: Arc<http::Auth>) {
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                // Out of file descriptors, say: wait for connections to end.
                eprintln!("refhub: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let (hub, auth) = (hub.clone(), auth.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req| http::route(hub.clone(), auth.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .with_upgrades()
                .await;
        });
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let cli = Cli::parse();
    let listener = listen(cli.listen, cli.listen_backlog)?;
    let (hub, auth) = state(&cli);
    eprintln!("refhub listening on {}", listener.local_addr()?);
    serve(listener, hub, auth).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    const SECRET: &str = "test-secret";
    const KEY: &str = "test-key";
    const WAIT: Duration = Duration::from_secs(10);

    async fn start() -> SocketAddr {
        let cli = Cli::parse_from([
            "refhub",
            "--listen",
            "127.0.0.1:0",
            "--jwt-secret",
            SECRET,
            "--api-keys",
            KEY,
        ]);
        let listener = listen(cli.listen, 16).expect("binds");
        let addr = listener.local_addr().expect("address");
        let (hub, auth) = state(&cli);
        tokio::spawn(serve(listener, hub, auth));
        addr
    }

    fn token(sub: &str) -> String {
        #[derive(serde::Serialize)]
        struct Claims<'a> {
            sub: &'a str,
            exp: u64,
        }
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs()
            + 600;
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &Claims { sub, exp },
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .expect("token")
    }

    type Client = tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >;

    async fn next_json(ws: &mut Client) -> serde_json::Value {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame in time")
            .expect("open")
            .expect("a frame");
        match msg {
            Message::Text(t) => serde_json::from_str(t.as_str()).expect("JSON"),
            other => panic!("not text: {other:?}"),
        }
    }

    async fn client(addr: SocketAddr, sub: &str) -> Client {
        let mut req = format!("ws://{addr}/ws")
            .into_client_request()
            .expect("request");
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {}", token(sub)).parse().expect("header"),
        );
        let (mut ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
            .await
            .expect("handshake in time")
            .expect("handshake");
        let first = next_json(&mut ws).await;
        assert_eq!(first["type"], "connection_established");
        assert_eq!(first["user_id"], sub);
        ws
    }

    /// One HTTP/1.1 request on a fresh connection; the status and the body.
    async fn post(addr: SocketAddr, key: &str, body: &str) -> (u16, serde_json::Value) {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let req = format!(
            "POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        tcp.write_all(req.as_bytes()).await.expect("write");
        let mut out = Vec::new();
        tokio::time::timeout(WAIT, tcp.read_to_end(&mut out))
            .await
            .expect("answer in time")
            .expect("read");
        let text = String::from_utf8(out).expect("utf8");
        let status = text[9..12].parse().expect("status");
        let body = text.split_once("\r\n\r\n").expect("head").1;
        (status, serde_json::from_str(body).expect("JSON body"))
    }

    #[tokio::test]
    async fn events_reach_every_connection_of_their_user_in_seq_order_and_no_other() {
        let addr = start().await;
        let mut a1 = client(addr, "alice").await;
        let mut a2 = client(addr, "alice").await;
        let mut b = client(addr, "bob").await;
        let body = r#"[
            {"user_id":"alice","type":"agent_started","thread_id":"t","run_id":"r","data":{"u":1}},
            {"user_id":"bob","type":"agent_started","run_id":"r2","data":{"u":2}},
            {"user_id":"alice","type":"agent_thinking","thread_id":"t","run_id":"r","event_id":"mine","data":{"thought":"é\"q","u":1}}
        ]"#;
        let (status, answer) = post(addr, KEY, body).await;
        assert_eq!(status, 200, "{answer}");
        let results = answer["results"].as_array().expect("results");
        let seqs: Vec<u64> = results
            .iter()
            .map(|r| r["seq"].as_u64().expect("seq"))
            .collect();
        assert_eq!(seqs, [1, 1, 2]);
        assert_eq!(results[2]["event_id"], "mine");
        assert!(results[0]["ts"].as_u64().is_some());
        for ws in [&mut a1, &mut a2] {
            let e1 = next_json(ws).await;
            assert_eq!(
                (e1["type"].as_str(), e1["seq"].as_u64()),
                (Some("agent_started"), Some(1))
            );
            assert_eq!(e1["event_id"], results[0]["event_id"]);
            assert_eq!(
                (e1["thread_id"].as_str(), e1["run_id"].as_str()),
                (Some("t"), Some("r"))
            );
            let e2 = next_json(ws).await;
            assert_eq!(e2["seq"], 2);
            assert_eq!(e2["event_id"], "mine");
            assert_eq!(e2["data"]["thought"], "é\"q");
        }
        let e = next_json(&mut b).await;
        assert_eq!(
            (e["seq"].as_u64(), e["data"]["u"].as_u64()),
            (Some(1), Some(2))
        );
        assert!(e.get("thread_id").is_none());
    }

    #[tokio::test]
    async fn refusals_use_agentwires_error_shape() {
        let addr = start().await;
        let event = r#"{"user_id":"u","type":"custom","data":{}}"#;
        let (status, body) = post(addr, "wrong", event).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (401, Some("unauthorized"))
        );
        assert!(body["message"].is_string() && body["field"].is_null());
        let (status, body) = post(addr, KEY, r#"{"user_id":"u","type":"custom","nope":1}"#).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (422, Some("invalid_event"))
        );
        let (status, _) = post(addr, KEY, event).await;
        assert_eq!(status, 200, "one object is a body too");

        let mut req = format!("ws://{addr}/ws")
            .into_client_request()
            .expect("request");
        req.headers_mut()
            .insert("authorization", "Bearer not-a-jwt".parse().expect("header"));
        let refused = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
            .await
            .expect("answer in time");
        match refused {
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
            other => panic!("not refused with 401: {other:?}"),
        }
    }
}
