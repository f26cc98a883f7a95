//! Assembly: the shared state of one server, the router, binding the listener (backlog,
//! open-file limit) and serving until shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use agentwire_manager::{HistoryConfig, InMemoryBroker, UnifiedWebSocketManager};
use axum::Router;
use axum::extract::ConnectInfo;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::config::{BrokerKind, ServerConfig};
use super::state::AppState;
use crate::auth::{Auth, AuthConfigError};

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
    /// A setting asks for something this build does not have.
    #[error("{0}")]
    Unsupported(String),
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
    routes(AppState::new(manager, auth, &config))
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
    Ok(routes(AppState::new(manager, auth, config)))
}

/// A manager with the configured bounds over the configured broker.
///
/// # Errors
/// [`ServerError::Unsupported`] for `--broker redis`, which is not in this build yet.
pub fn build_manager(config: &ServerConfig) -> Result<UnifiedWebSocketManager, ServerError> {
    match config.broker {
        BrokerKind::Memory => Ok(UnifiedWebSocketManager::new(
            config.manager_config(),
            Arc::new(
                InMemoryBroker::new(config.history_config()).with_run_limits(config.run_limits()),
            ),
        )),
        BrokerKind::Redis => Err(ServerError::Unsupported(
            "--broker redis is not in this build yet; use --broker memory".into(),
        )),
    }
}

/// The most connections `nofile` open files allow, keeping [`FD_RESERVE`] free: `requested`
/// or less, and at least 1.
pub fn clamp_max_connections(requested: usize, nofile: u64) -> usize {
    let allowed = usize::try_from(nofile.saturating_sub(FD_RESERVE)).unwrap_or(usize::MAX);
    requested.min(allowed).max(1)
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
    state: AppState,
    shutdown_timeout: std::time::Duration,
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
        let manager = match UnifiedWebSocketManager::installed_global() {
            Some(global) => adopt(global, &config)?,
            None => {
                let built = build_manager(&config)?;
                match UnifiedWebSocketManager::install_global(built.clone()) {
                    Ok(()) => built,
                    // Another thread installed one in between: the same rule applies.
                    Err(_) => match UnifiedWebSocketManager::installed_global() {
                        Some(global) => adopt(global, &config)?,
                        None => built,
                    },
                }
            }
        };
        Self::bind_with(config, manager).await
    }

    fn clamp_to_nofile(mut config: ServerConfig) -> ServerConfig {
        if let Some(nofile) = config.open_file_limit {
            let clamped = clamp_max_connections(config.max_connections, nofile);
            if clamped < config.max_connections {
                tracing::warn!(
                    requested = config.max_connections,
                    allowed = clamped,
                    open_file_limit = nofile,
                    "max_connections clamped to what the open-file limit allows"
                );
                config.max_connections = clamped;
            }
        }
        config
    }

    /// As [`Server::bind`], over a manager built elsewhere (e.g. over a broker of your own):
    /// the manager settings of `config` are not applied, the manager's own are, and the
    /// open-file limit is left as it is. The manager is installed as the process-wide one
    /// unless one exists; when a different one does, `global()` does not reach this
    /// server (a warning says so) — which is what several servers in one process (tests)
    /// want, and nothing else does.
    ///
    /// # Errors
    /// [`ServerError`] for unreadable keys or a failed bind.
    pub async fn bind_with(
        config: ServerConfig,
        manager: UnifiedWebSocketManager,
    ) -> Result<Server, ServerError> {
        if UnifiedWebSocketManager::install_global(manager.clone()).is_err() {
            tracing::warn!(
                "another process-wide manager is installed: events emitted through \
                 UnifiedWebSocketManager::global() do not reach this server's connections"
            );
        }
        let auth = config.auth()?;
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
        Ok(Server {
            listener,
            addr,
            state: AppState::new(manager, auth, &config),
            shutdown_timeout: config.shutdown_timeout,
        })
    }

    /// The address the listener is bound to (the real port when `--listen` gave 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server's manager: emit events through it.
    pub fn manager(&self) -> &UnifiedWebSocketManager {
        &self.state.manager
    }

    /// Whether the demo page is served at `/` (see `--demo`).
    pub fn demo_enabled(&self) -> bool {
        self.state.demo.is_enabled()
    }

    /// Serves until `shutdown` resolves, then shuts down gracefully: stops accepting,
    /// answers `/readyz` with 503, closes every connection with 1001 after flushing its
    /// queue, and returns once none is left or the shutdown timeout has passed.
    ///
    /// # Errors
    /// [`ServerError::Io`] when the accept loop fails before `shutdown`.
    pub async fn serve<F>(self, shutdown: F) -> Result<(), ServerError>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let state = self.state.clone();
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut serving = tokio::spawn(accept_loop(
            self.listener,
            // A path no route serves gets the JSON error too; `router()` leaves the
            // fallback to the application it is mounted in.
            routes(state.clone()).fallback(crate::http::not_found),
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
        let deadline = Instant::now() + self.shutdown_timeout;
        let _ = stop_tx.send(true);
        super::shutdown::drain(&state, deadline).await;
        if tokio::time::timeout_at(deadline, &mut serving)
            .await
            .is_err()
        {
            serving.abort();
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
/// into two lock-free halves (`crate::ws`'s `wire`).
async fn accept_loop(
    listener: TcpListener,
    routes: Router,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    // Every connection task holds a sender; `recv` returns `None` once all are gone.
    let (open_tx, mut open_rx) = mpsc::channel::<()>(1);
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
        // Batches are written explicitly; Nagle would only add latency.
        let _ = tcp.set_nodelay(true);
        // Handlers that care who is asking (development tokens) read the peer from the
        // request's extensions, as axum's `ConnectInfo` is.
        let routes = routes.clone();
        let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            tower_service::Service::call(&mut routes.clone(), request)
        });
        let mut stop = stop.clone();
        let open = open_tx.clone();
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = stopped(&mut stop) => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
            drop(open);
        });
    }
    drop(listener);
    drop(open_tx);
    let _ = open_rx.recv().await;
    Ok(())
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
    fn max_connections_is_clamped_to_the_file_limit() {
        assert_eq!(clamp_max_connections(10_000, 1_024), 960);
        assert_eq!(clamp_max_connections(100, 1_024), 100);
        assert_eq!(clamp_max_connections(100, 10), 1);
        assert_eq!(clamp_max_connections(5, u64::MAX), 5);
    }

    /// Issue 15: a manager that exists before `Server::bind` is adopted only when its
    /// settings are the configuration's. (The process-wide manager itself is exercised in
    /// `tests/tests/e2e_global_manager.rs`, a process of its own.)
    #[test]
    fn a_global_with_other_settings_is_refused_with_a_clear_error() {
        let config = ServerConfig::default();
        let same = build_manager(&config).expect("memory");
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

    #[test]
    fn the_redis_broker_says_it_is_not_built_in() {
        let c = ServerConfig {
            broker: BrokerKind::Redis,
            ..ServerConfig::default()
        };
        let e = build_manager(&c).expect_err("redis is not in this build");
        assert!(e.to_string().contains("not in this build yet"), "{e}");
    }
}
