//! Assembly: the shared state of one server, the router, binding the listener (backlog,
//! open-file limit) and serving until shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use agentwire_manager::{HistoryConfig, UnifiedWebSocketManager};
use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::broker::{BrokerSetupError, ServerBroker};
use super::config::{BrokerKind, ServerConfig};
use super::state::AppState;
use crate::auth::{Auth, AuthConfigError};
use crate::http::body::TimedBody;
use crate::http::door::{ConnSlot, FrontDoor};
use crate::http::io::TrackedTcp;
use crate::http::{ApiError, ErrorCode, raw_answer};
use crate::webhook::{ReceiptWebhook, WebhookConfigError};

/// File descriptors kept free for what is not a connection (listener, logs, files, the
/// handshakes in flight).
pub const FD_RESERVE: u64 = 64;

/// Why the server could not start or run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// No credentials, or keys that could not be loaded.
    #[error(transparent)]
    Auth(#[from] AuthConfigError),
    /// A process-wide manager exists (installed, or created by
    /// `UnifiedWebSocketManager::global()`) whose settings differ from the configuration's:
    /// the server would either ignore the configuration or strand every event emitted
    /// through `global()`.
    #[error("{0}")]
    GlobalManager(String),
    /// The broker could not be set up: Redis settings missing, contradictory or invalid,
    /// Redis unreachable at start, or `--broker redis` in a build without it.
    #[error(transparent)]
    Broker(#[from] BrokerSetupError),
    /// The receipt webhook's settings were refused, or it could not start.
    #[error(transparent)]
    Webhook(#[from] WebhookConfigError),
    /// A setting outside the values it may take.
    #[error("{0}")]
    Setting(String),
    /// The listener could not be bound, or serving failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
}

fn routes(state: AppState) -> Router {
    crate::demo::routes(state.demo.is_enabled())
        // The documented API: every route of `super::routes::table`.
        .merge(super::routes::api())
        .method_not_allowed_fallback(crate::http::method_not_allowed)
        .with_state(state)
        .layer(axum::middleware::map_response(crate::http::json_errors))
}

/// The agentwire routes (`/ws`, `/healthz`, `/readyz`, `/metrics`, the admin API, the
/// browser client `/client.js`; never the demo page) over `manager`, verifying client
/// tokens and API keys with `auth`, with the defaults of every other setting.
///
/// Mount it in another axum app with `Router::merge` or `nest`. Limits and heartbeat are
/// the manager's own: the router reads them from `manager.config()`.
///
/// ```
/// use agentwire_manager::UnifiedWebSocketManager;
/// use agentwire_server::Auth;
///
/// # fn demo() -> Result<(), agentwire_server::AuthConfigError> {
/// let auth = Auth::hs256(b"the secret your identity provider signs with")?
///     .with_api_keys(&["a publisher key of 16 characters or more".into()], &[])?;
/// let app = axum::Router::new().merge(agentwire_server::router(
///     UnifiedWebSocketManager::in_memory(),
///     auth,
/// ));
/// # let _ = app;
/// # Ok(())
/// # }
/// ```
pub fn router(manager: UnifiedWebSocketManager, auth: Auth) -> Router {
    // No demo page: `/` belongs to the application this is mounted in.
    let config = ServerConfig {
        demo: super::config::DemoMode::Off,
        ..ServerConfig::default()
    };
    routes(AppState::new(manager, auth, &config, None, None))
}

/// The agentwire routes over `manager`, configured by `config` (authentication, Origin
/// allow-list, socket settings). Manager settings in `config` are not applied here: the
/// manager was built already (see [`build_manager`]).
///
/// # Errors
/// [`ServerError::Auth`] without a secret or public key, or when a key cannot be loaded.
pub fn router_with(
    manager: UnifiedWebSocketManager,
    config: &ServerConfig,
) -> Result<Router, ServerError> {
    let auth = config.auth()?;
    let webhook = receipt_webhook(config)?;
    Ok(routes(AppState::new(manager, auth, config, None, webhook)))
}

/// The receipt webhook `config` asks for, built (not yet observing a manager).
fn receipt_webhook(config: &ServerConfig) -> Result<Option<ReceiptWebhook>, ServerError> {
    Ok(config
        .receipt_webhook()?
        .map(ReceiptWebhook::new)
        .transpose()?)
}

/// A manager with the configured bounds over the configured broker (see
/// [`ServerBroker::connect`]; with `--broker redis`, connected to Redis).
///
/// # Errors
/// [`ServerError::Broker`] when the broker cannot be set up.
pub async fn build_manager(config: &ServerConfig) -> Result<UnifiedWebSocketManager, ServerError> {
    Ok(ServerBroker::connect(config).await?.manager(config))
}

/// The most open TCP connections `nofile` open files allow, keeping [`FD_RESERVE`] free:
/// `requested` or less, and at least 1.
pub fn clamp_tcp_connections(requested: usize, nofile: u64) -> usize {
    let allowed = usize::try_from(nofile.saturating_sub(FD_RESERVE)).unwrap_or(usize::MAX);
    requested.min(allowed).max(1)
}

/// The most WebSocket connections a node with `max_tcp_connections` open TCP connections
/// allows: 7/8 of them, so HTTP requests (health checks, the publish API, handshakes)
/// always have room.
pub fn websocket_share(max_tcp_connections: usize) -> usize {
    (max_tcp_connections - max_tcp_connections / 8).max(1)
}

/// The most WebSocket connections `nofile` open files allow, keeping [`FD_RESERVE`] free
/// and the HTTP share of [`websocket_share`]: `requested` or less, and at least 1.
pub fn clamp_max_connections(requested: usize, nofile: u64) -> usize {
    requested
        .min(websocket_share(clamp_tcp_connections(usize::MAX, nofile)))
        .max(1)
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

/// A bound server, not yet serving: the listener, the manager and the routes' state.
///
/// ```no_run
/// # async fn demo() -> Result<(), agentwire_server::ServerError> {
/// use agentwire_server::{Server, ServerConfig};
/// let server = Server::bind(ServerConfig::default()).await?;
/// println!("listening on {}", server.local_addr());
/// server.serve(agentwire_server::shutdown_signal()).await
/// # }
/// ```
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    addr: SocketAddr,
    /// The listener of `--metrics-listen`, and its address.
    metrics: Option<(TcpListener, SocketAddr)>,
    state: AppState,
    shutdown_timeout: std::time::Duration,
    drain_delay: std::time::Duration,
}

impl Server {
    /// Clamps `max_connections` to `open_file_limit` when that is known (with a warning),
    /// takes the process's one manager, loads the credentials and binds the listener.
    ///
    /// One manager per process: when a process-wide manager exists already (installed with
    /// `install_global`, or created by a call to `UnifiedWebSocketManager::global()`), the
    /// server adopts it, so events emitted through `global()` reach its connections —
    /// provided its settings are the configuration's. Otherwise the server builds the
    /// manager and installs it as the process-wide one.
    ///
    /// # Errors
    /// [`ServerError::GlobalManager`] when the existing process-wide manager's settings
    /// differ from the configuration's; [`ServerError`] for an unsupported broker,
    /// missing credentials or unreadable keys, or a failed bind.
    pub async fn bind(config: ServerConfig) -> Result<Server, ServerError> {
        let config = Self::clamp_to_nofile(config);
        let (manager, broker) = match UnifiedWebSocketManager::installed_global() {
            Some(global) => (adopt(global, &config)?, None),
            None => {
                let broker = ServerBroker::connect(&config).await?;
                let built = broker.manager(&config);
                match UnifiedWebSocketManager::install_global(built.clone()) {
                    Ok(()) => (built, Some(broker)),
                    // Another thread installed one in between: the same rule applies.
                    Err(_) => match UnifiedWebSocketManager::installed_global() {
                        Some(global) => (adopt(global, &config)?, None),
                        None => (built, Some(broker)),
                    },
                }
            }
        };
        Self::bind_parts(config, manager, broker).await
    }

    fn clamp_to_nofile(mut config: ServerConfig) -> ServerConfig {
        if let Some(nofile) = config.open_file_limit {
            let clamped = clamp_tcp_connections(config.max_tcp_connections, nofile);
            if clamped < config.max_tcp_connections {
                tracing::warn!(
                    requested = config.max_tcp_connections,
                    allowed = clamped,
                    open_file_limit = nofile,
                    "max_tcp_connections clamped to what the open-file limit allows"
                );
                config.max_tcp_connections = clamped;
            }
        }
        let share = websocket_share(config.max_tcp_connections);
        if share < config.max_connections {
            tracing::warn!(
                requested = config.max_connections,
                allowed = share,
                max_tcp_connections = config.max_tcp_connections,
                "max_connections clamped to 7/8 of max_tcp_connections"
            );
            config.max_connections = share;
        }
        config
    }

    /// As [`Server::bind`], over a manager built elsewhere (e.g. over a broker of your own):
    /// the manager settings of `config` are not applied, the manager's own are, and the
    /// open-file limit is left as it is. The manager is installed as the process-wide one
    /// unless one exists; when a different one does, `global()` does not reach this
    /// server (a warning says so) — which is what several servers in one process (tests)
    /// want, and nothing else does. The broker's own metrics (`agentwire_redis_*`) are
    /// exported only for a broker the server built itself ([`Server::bind`]); the
    /// manager's are exported whatever its broker.
    ///
    /// # Errors
    /// [`ServerError`] for unreadable keys or a failed bind.
    pub async fn bind_with(
        config: ServerConfig,
        manager: UnifiedWebSocketManager,
    ) -> Result<Server, ServerError> {
        Self::bind_parts(config, manager, None).await
    }

    /// Binds over `manager`; `broker`, when the server built it, adds its own metrics
    /// (Redis round trips, reconnects, …) to `/metrics`.
    async fn bind_parts(
        config: ServerConfig,
        manager: UnifiedWebSocketManager,
        broker: Option<ServerBroker>,
    ) -> Result<Server, ServerError> {
        if UnifiedWebSocketManager::install_global(manager.clone()).is_err() {
            tracing::warn!(
                "another process-wide manager is installed: events emitted through \
                 UnifiedWebSocketManager::global() do not reach this server's connections"
            );
        }
        config
            .checked_socket_send_buffer()
            .map_err(ServerError::Setting)?;
        let auth = config.auth()?;
        let webhook = receipt_webhook(&config)?;
        // One fetch of the JWKS key set, bounded by its timeout; when it fails the server
        // starts all the same (`/readyz` says 503 until a key set arrives).
        auth.refresh_keys().await;
        let listener =
            listen(config.listen, config.listen_backlog).map_err(|source| ServerError::Io {
                what: format!("cannot listen on {}", config.listen),
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| ServerError::Io {
            what: "cannot read the bound address".into(),
            source,
        })?;
        let metrics = match config.metrics_listen {
            None => None,
            Some(at) => {
                let listener = listen(at, 128).map_err(|source| ServerError::Io {
                    what: format!("cannot listen on {at} (--metrics-listen)"),
                    source,
                })?;
                let addr = listener.local_addr().map_err(|source| ServerError::Io {
                    what: "cannot read the metrics listener's address".into(),
                    source,
                })?;
                Some((listener, addr))
            }
        };
        Ok(Server {
            listener,
            addr,
            metrics,
            state: AppState::new(manager, auth, &config, broker.as_ref(), webhook),
            shutdown_timeout: config.shutdown_timeout,
            drain_delay: config.drain_delay,
        })
    }

    /// The address the listener is bound to (the real port when `--listen` gave 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address `/metrics` is served on when `--metrics-listen` gave one (the real
    /// port when it gave 0).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|(_, addr)| *addr)
    }

    /// The server's manager: emit events through it.
    pub fn manager(&self) -> &UnifiedWebSocketManager {
        &self.state.manager
    }

    /// Whether the demo page is served at `/` (see `--demo`).
    pub fn demo_enabled(&self) -> bool {
        self.state.demo.is_enabled()
    }

    /// Serves until `shutdown` resolves, then shuts down gracefully: answers `/readyz` with
    /// 503 for the drain delay while serving everything else, then stops accepting, lets
    /// every HTTP connection finish the request in progress, closes every WebSocket with
    /// 1001 after flushing its queue, and returns once none is left or the shutdown
    /// timeout has passed.
    ///
    /// # Errors
    /// [`ServerError::Io`] when the accept loop fails before `shutdown`.
    pub async fn serve<F>(self, shutdown: F) -> Result<(), ServerError>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let state = self.state.clone();
        let (stop_tx, stop_rx) = watch::channel(false);
        // The metrics listener passes the same front door: its connections count against
        // the same cap, under the same timeouts.
        let metrics_serving = self.metrics.map(|(listener, addr)| {
            tracing::info!(%addr, "metrics listening");
            tokio::spawn(accept_loop(
                listener,
                super::metrics::listener_routes(state.metrics.clone()),
                state.door.clone(),
                stop_rx.clone(),
            ))
        });
        let mut serving = tokio::spawn(accept_loop(
            self.listener,
            // A path no route serves gets the JSON error too; `router()` leaves the
            // fallback to the application it is mounted in.
            routes(state.clone()).fallback(crate::http::not_found),
            state.door.clone(),
            stop_rx,
        ));
        tokio::select! {
            () = shutdown => {}
            ended = &mut serving => {
                return match ended {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(source)) => Err(ServerError::Io { what: "serving failed".into(), source }),
                    Err(e) => Err(ServerError::Io { what: "serving failed".into(), source: std::io::Error::other(e.to_string()) }),
                };
            }
        }
        // Load balancers see /readyz fail and stop sending; meanwhile everything is served.
        state.begin_drain();
        if !self.drain_delay.is_zero() {
            tracing::info!(
                drain_delay = ?self.drain_delay,
                "draining: /readyz answers 503 until the listener closes"
            );
            tokio::select! {
                () = tokio::time::sleep(self.drain_delay) => {}
                _ = &mut serving => {}
            }
        }
        let deadline = Instant::now() + self.shutdown_timeout;
        let _ = stop_tx.send(true);
        super::shutdown::drain(&state, deadline).await;
        if tokio::time::timeout_at(deadline, &mut serving)
            .await
            .is_err()
        {
            serving.abort();
        }
        if let Some(mut metrics_serving) = metrics_serving
            && tokio::time::timeout_at(deadline, &mut metrics_serving)
                .await
                .is_err()
        {
            metrics_serving.abort();
        }
        tracing::info!("shut down");
        Ok(())
    }
}

/// `global` as the server's manager, when its settings are those `config` asks for.
fn adopt(
    global: UnifiedWebSocketManager,
    config: &ServerConfig,
) -> Result<UnifiedWebSocketManager, ServerError> {
    let wanted = config.manager_config();
    let implicit = UnifiedWebSocketManager::global_is_implicit();
    let conflict = if *global.config() != wanted {
        Some(format!(
            "its manager settings are {:?}, the configuration's {wanted:?}",
            global.config()
        ))
    } else if implicit && config.history_config() != HistoryConfig::default() {
        Some(format!(
            "its history bounds are the defaults, the configuration's {:?}",
            config.history_config()
        ))
    } else if implicit && config.broker != BrokerKind::Memory {
        Some("it is in-memory, the configuration asks for another broker".to_owned())
    } else {
        None
    };
    let origin = if implicit {
        "UnifiedWebSocketManager::global() created an in-memory manager before Server::bind"
    } else {
        "a process-wide manager was installed before Server::bind"
    };
    match conflict {
        Some(why) => Err(ServerError::GlobalManager(format!(
            "{origin}, and {why}: the process has one manager. Bind the server (or install \
             its manager with build_manager and install_global) before anything calls \
             global(), or configure the server as that manager is"
        ))),
        None => {
            tracing::info!("{origin}; the server adopts it");
            Ok(global)
        }
    }
}

/// Accepts connections and serves HTTP/1.1 on each, with upgrades, until `stop` turns
/// true; then stops accepting, asks every HTTP connection to finish the request in
/// progress and close, and returns once all have (upgraded WebSocket connections are the
/// manager's to close).
///
/// Connections are served by hyper directly rather than through `axum::serve`, so an
/// upgraded connection is still the plain `TcpStream` underneath and `/ws` can split it
/// into two lock-free halves (`crate::ws`'s `wire`); and so the front door
/// (`crate::http::door`) sees every connection: its cap, its timeouts, and the JSON body of
/// the answers hyper gives by itself (`crate::http::io`).
async fn accept_loop(
    listener: TcpListener,
    routes: Router,
    door: Arc<FrontDoor>,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    // Every connection task holds a sender; `recv` returns `None` once all are gone.
    let (open_tx, mut open_rx) = mpsc::channel::<()>(1);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.max_header_size(door.limits.max_header_bytes);
    let lingering = Arc::new(tokio::sync::Semaphore::new(MAX_LINGERING_REFUSALS));
    let mut send_buffer_read = false;
    loop {
        let (tcp, peer) = tokio::select! {
            () = stopped(&mut stop) => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) if is_per_connection_error(&e) => continue,
                Err(e) => {
                    // Out of file descriptors, say: the listener itself is fine, so wait
                    // for connections to end rather than spin.
                    tracing::error!(error = %e, "accept failed; retrying in 1 s");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    continue;
                }
            },
        };
        let Some(slot) = door.admit() else {
            refuse_full(tcp, &lingering);
            continue;
        };
        // Batches are written explicitly; Nagle would only add latency.
        let _ = tcp.set_nodelay(true);
        bound_send_buffer(&tcp, &door, &mut send_buffer_read);
        let service = front_service(routes.clone(), door.clone(), slot.clone(), peer);
        let io = TokioIo::new(TrackedTcp::new(tcp, slot.clone()));
        let conn = http.serve_connection(io, service).with_upgrades();
        tokio::spawn(serve_connection(conn, slot, stop.clone(), open_tx.clone()));
    }
    drop(listener);
    drop(open_tx);
    let _ = open_rx.recv().await;
    Ok(())
}

/// Sets the kernel send buffer of an accepted socket to `--socket-send-buffer` (unless 0),
/// so that a slow reader's backlog waits in the connection's queue, where streamed text
/// merges and a slow consumer is closed with 1013, rather than in the kernel, whose full
/// buffer would only end in the write timeout. The first time (`*read` false), the size the
/// kernel reports is exported as `agentwire_socket_send_buffer_bytes`.
fn bound_send_buffer(tcp: &TcpStream, door: &FrontDoor, read: &mut bool) {
    let sock = socket2::SockRef::from(tcp);
    let wanted = door.limits.socket_send_buffer;
    if wanted > 0
        && let Err(e) = sock.set_send_buffer_size(wanted)
    {
        tracing::debug!(error = %e, "cannot set SO_SNDBUF on an accepted socket");
    }
    if !*read && let Ok(bytes) = sock.send_buffer_size() {
        door.metrics.send_buffer_is(bytes);
        *read = true;
    }
}

/// Refusals at `--max-tcp-connections` under way at once. Each holds its socket for at most
/// [`REFUSAL_LINGER`], within the descriptors [`FD_RESERVE`] keeps free; beyond them a
/// refused socket is answered and closed at once.
const MAX_LINGERING_REFUSALS: usize = 16;

/// How long a refused connection is held so that its answer is read before the socket
/// closes (closing a socket with an unread request resets it, and the peer may lose the
/// answer).
const REFUSAL_LINGER: std::time::Duration = std::time::Duration::from_millis(500);

/// Answers a connection the front door has no room for with 503, and closes it.
fn refuse_full(tcp: TcpStream, lingering: &Arc<tokio::sync::Semaphore>) {
    let answer = raw_answer(
        &ApiError::new(
            ErrorCode::Unavailable,
            "this node has --max-tcp-connections connections open and none of them idle; \
             retry, or reach another node",
        )
        .retry_after(1),
    );
    let Ok(permit) = lingering.clone().try_acquire_owned() else {
        // Best effort: a fresh socket takes a few hundred bytes at once.
        let _ = tcp.try_write(&answer);
        return;
    };
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let _permit = permit;
        let mut tcp = tcp;
        let _ = tokio::time::timeout(REFUSAL_LINGER, async {
            tcp.write_all(&answer).await?;
            tcp.shutdown().await?;
            // What the peer sent is read and dropped until it closes: then no reset.
            let mut sink = [0u8; 1024];
            while tcp.read(&mut sink).await? > 0 {}
            Ok::<(), std::io::Error>(())
        })
        .await;
    });
}

/// What hyper calls for each request of a connection: the front door's own checks (the
/// target's length, the body's deadline), then the router, with the peer's address in
/// the request's extensions, as axum's `ConnectInfo` is (handlers that care who is asking,
/// such as development tokens, read it there).
fn front_service(
    routes: Router,
    door: Arc<FrontDoor>,
    slot: ConnSlot,
    peer: SocketAddr,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response,
    Error = std::convert::Infallible,
    Future = impl Future<Output = Result<Response, std::convert::Infallible>> + Send,
> + Clone {
    hyper::service::service_fn(move |request: Request<Incoming>| {
        let busy = slot.begin_request();
        let slot = slot.clone();
        let too_long = target_too_long(&request, &door);
        let (parts, body) = request.into_parts();
        let mut request = Request::from_parts(
            parts,
            Body::new(TimedBody::new(
                body,
                door.limits.body_read_timeout,
                door.metrics.clone(),
            )),
        );
        request.extensions_mut().insert(ConnectInfo(peer));
        // An event stream holds its connection's slot, to cut a peer that stopped reading.
        request.extensions_mut().insert(slot.clone());
        let mut routes = routes.clone();
        async move {
            let response = match too_long {
                Some(refused) => refused.into_response(),
                None => tower_service::Service::call(&mut routes, request).await?,
            };
            if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                slot.upgraded();
            }
            drop(busy);
            Ok(response)
        }
    })
}

/// The 414 for a request target longer than `--max-uri-bytes`.
fn target_too_long(request: &Request<Incoming>, door: &FrontDoor) -> Option<ApiError> {
    let uri = request.uri();
    let len = uri.path_and_query().map_or(0, |pq| pq.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len());
    let limit = door.limits.max_uri_bytes;
    (len > limit).then(|| {
        door.metrics.malformed(414);
        ApiError::new(
            ErrorCode::UriTooLong,
            format!("the request target is {len} bytes; the limit is {limit} (--max-uri-bytes)"),
        )
    })
}

/// Serves one connection until it ends, is closed by a front-door timeout or evicted to
/// make room, or — once `stop` is true — has finished the request in progress.
async fn serve_connection<C>(
    conn: C,
    slot: ConnSlot,
    mut stop: watch::Receiver<bool>,
    open: mpsc::Sender<()>,
) where
    C: Future + GracefulShutdown,
{
    let limits = slot.door().limits;
    // While a request is served no timeout runs; look again after this long.
    let recheck = limits.header_read_timeout.min(limits.idle_timeout);
    tokio::pin!(conn);
    let timer = tokio::time::sleep(recheck);
    tokio::pin!(timer);
    let mut stopping = false;
    loop {
        let wake = slot
            .deadline()
            .map_or_else(|| Instant::now() + recheck, |(at, _)| at);
        timer.as_mut().reset(wake);
        tokio::select! {
            biased;
            _ = conn.as_mut() => break,
            () = stopped(&mut stop), if !stopping => {
                conn.as_mut().graceful_shutdown();
                stopping = true;
            }
            () = slot.evicted() => break,
            () = &mut timer => {
                if let Some((at, why)) = slot.deadline()
                    && Instant::now() >= at
                {
                    slot.door().metrics.timed_out(why);
                    break;
                }
            }
        }
    }
    drop(open);
}

/// hyper's connection futures, which can be asked to finish the request in progress and
/// close.
trait GracefulShutdown {
    fn graceful_shutdown(self: std::pin::Pin<&mut Self>);
}

impl<I, S> GracefulShutdown for hyper::server::conn::http1::UpgradeableConnection<I, S>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming>,
    S::ResBody: hyper::body::Body + Send + 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn graceful_shutdown(self: std::pin::Pin<&mut Self>) {
        hyper::server::conn::http1::UpgradeableConnection::graceful_shutdown(self);
    }
}

/// Resolves once `stop` is true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is dropped at once: this future stays `Send`.
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Accept errors that concern one connection (it was reset before it was accepted), not
/// the listener.
fn is_per_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}

/// Binds with `config` and serves until SIGTERM or Ctrl-C, then shuts down gracefully.
/// The bound address is logged.
///
/// # Errors
/// [`ServerError`] from [`Server::bind`] or [`Server::serve`].
pub async fn run(config: ServerConfig) -> Result<(), ServerError> {
    let stop = super::shutdown::signal();
    let server = Server::bind(config).await?;
    tracing::info!(addr = %server.local_addr(), "listening");
    server.serve(stop).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_clamped_to_the_file_limit() {
        assert_eq!(clamp_tcp_connections(12_000, 1_024), 960);
        assert_eq!(clamp_tcp_connections(100, 1_024), 100);
        assert_eq!(clamp_tcp_connections(100, 10), 1);
        assert_eq!(clamp_max_connections(10_000, 1_024), 840);
        assert_eq!(clamp_max_connections(100, 1_024), 100);
        assert_eq!(clamp_max_connections(100, 10), 1);
        assert_eq!(clamp_max_connections(5, u64::MAX), 5);
        // The defaults fit each other: 10,000 WebSockets in 12,000 connections.
        let d = ServerConfig::default();
        assert!(websocket_share(d.max_tcp_connections) >= d.max_connections);
        let c = Server::clamp_to_nofile(ServerConfig {
            open_file_limit: Some(300),
            ..ServerConfig::default()
        });
        assert_eq!((c.max_tcp_connections, c.max_connections), (236, 207));
    }

    /// Issue 15: a manager that exists before `Server::bind` is adopted only when its
    /// settings are the configuration's. (The process-wide manager itself is exercised in
    /// `tests/tests/e2e_global_manager.rs`, a process of its own.)
    #[tokio::test]
    async fn a_global_with_other_settings_is_refused_with_a_clear_error() {
        let config = ServerConfig::default();
        let same = build_manager(&config).await.expect("memory");
        assert!(adopt(same.clone(), &config).is_ok_and(|m| m.same_as(&same)));
        let other = ServerConfig {
            max_connections: 5,
            ..ServerConfig::default()
        };
        let e = adopt(same, &other).expect_err("other settings");
        assert!(matches!(e, ServerError::GlobalManager(_)), "{e}");
        assert!(e.to_string().contains("before Server::bind"), "{e}");
        assert!(e.to_string().contains("max_connections: 5"), "{e}");
    }
}
