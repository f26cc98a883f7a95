//! The application's state: one piece per concern (the WebSocket endpoint's, the event
//! stream's, the API's, the demo's), built from the configuration, and the `FromRef` links that let each
//! concern's handlers take only their own piece.

use std::sync::Arc;
use std::time::Duration;

use agentwire_manager::UnifiedWebSocketManager;
use axum::extract::FromRef;
use prometheus_client::registry::Registry;

use super::broker::ServerBroker;
use super::config::{RunLifecycle, ServerConfig};
use super::metrics::{Access, Metrics};
use crate::api::{ApiState, PublishApi, PublishLimits, PublishMetrics, ReceiptWaits};
use crate::auth::Auth;
use crate::demo::DemoState;
use crate::http::door::{DoorMetrics, FrontDoor};
use crate::http::{AllowedOrigins, Draining};
use crate::sse::{SseMetrics, SseState};
use crate::webhook::ReceiptWebhook;
use crate::ws::{Cooldowns, WsMetrics, WsSettings, WsState};

/// The state the router holds.
/// Cheap to clone: every piece is shared.
#[derive(Debug, Clone)]
pub(crate) struct AppState {
    pub(crate) manager: UnifiedWebSocketManager,
    pub(crate) ws: Arc<WsState>,
    pub(crate) sse: Arc<SseState>,
    pub(crate) api: Arc<ApiState>,
    pub(crate) demo: Arc<DemoState>,
    pub(crate) metrics: Arc<Metrics>,
    /// Every open TCP connection of `Server::serve` (unused by a mounted router).
    pub(crate) door: Arc<FrontDoor>,
    draining: Draining,
}

impl AppState {
    /// The state over `manager`; `broker`, when the server built it, adds its own metrics;
    /// `webhook`, when configured, observes the manager's run ends from now on.
    pub(crate) fn new(
        manager: UnifiedWebSocketManager,
        auth: Auth,
        config: &ServerConfig,
        broker: Option<&ServerBroker>,
        webhook: Option<ReceiptWebhook>,
    ) -> Self {
        let auth = Arc::new(auth);
        // The JWKS key set, when one is configured, is kept fresh from here on.
        auth.start_key_refresh();
        let draining = Draining::default();
        let mut registry = Registry::default();
        auth.register_metrics(&mut registry);
        let ws_metrics = WsMetrics::register(&mut registry);
        let sse_metrics = SseMetrics::register(&mut registry);
        let publish_metrics = PublishMetrics::register(&mut registry);
        if let Some(webhook) = webhook {
            webhook.attach(&manager, &mut registry);
        }
        let door = FrontDoor::new(config.door_limits(), DoorMetrics::register(&mut registry));
        let demo_on = config.demo.is_enabled(config);
        let ws = Arc::new(WsState {
            manager: manager.clone(),
            auth: auth.clone(),
            ws: ws_settings(config),
            metrics: ws_metrics,
            draining: draining.clone(),
            cooldowns: Cooldowns::new(config.client_frame_cooldown),
        });
        let demo = Arc::new(DemoState::new(
            manager.clone(),
            auth.clone(),
            demo_on,
            config.dev_mode,
            AllowedOrigins::new(&config.allowed_origins),
        ));
        let demo_bridge = demo.bridge().cloned();
        AppState {
            demo,
            sse: Arc::new(SseState {
                conn: ws.clone(),
                metrics: sse_metrics,
            }),
            ws,
            api: Arc::new(ApiState {
                manager: manager.clone(),
                auth: auth.clone(),
                publish: publish_api(config, broker, publish_metrics),
                receipts: ReceiptWaits::new(
                    config.receipt_max_wait,
                    config.receipt_max_waiters,
                    &mut registry,
                ),
                draining: draining.clone(),
            }),
            metrics: Arc::new(Metrics::new(
                registry,
                manager.clone(),
                broker,
                demo_bridge,
                match config.metrics_listen {
                    Some(_) => Access::Elsewhere,
                    None => Access::FullKey(auth.clone()),
                },
            )),
            door,
            manager,
            draining,
        }
    }

    /// `/readyz` answers 503 from now on; everything else is served as before.
    pub(crate) fn begin_drain(&self) {
        self.draining.set();
    }

    /// `/ws` refuses from now on.
    pub(crate) fn begin_shutdown(&self) {
        self.draining.set_closing();
    }
}

impl FromRef<AppState> for Arc<WsState> {
    fn from_ref(app: &AppState) -> Self {
        app.ws.clone()
    }
}

impl FromRef<AppState> for Arc<SseState> {
    fn from_ref(app: &AppState) -> Self {
        app.sse.clone()
    }
}

impl FromRef<AppState> for Arc<ApiState> {
    fn from_ref(app: &AppState) -> Self {
        app.api.clone()
    }
}

impl FromRef<AppState> for Arc<Metrics> {
    fn from_ref(app: &AppState) -> Self {
        app.metrics.clone()
    }
}

impl FromRef<AppState> for Arc<DemoState> {
    fn from_ref(app: &AppState) -> Self {
        app.demo.clone()
    }
}

fn ws_settings(c: &ServerConfig) -> WsSettings {
    WsSettings {
        write_timeout: c.write_timeout.max(Duration::from_millis(1)),
        close_timeout: c.close_timeout,
        write_batch_frames: c.write_batch_frames.max(1),
        read_buffer_size: c.read_buffer_size.max(256),
        max_message_size: c.max_message_size.max(64),
        max_frame_size: c.max_frame_size.max(64),
        max_bad_frames: c.max_bad_frames,
        client_frame_rate: c.client_frame_rate,
        client_frame_burst: c.client_frame_burst,
        client_frame_cooldown: c.client_frame_cooldown,
        resume_wait: c.resume_wait,
        allowed_origins: AllowedOrigins::new(&c.allowed_origins),
    }
}

/// The publish API; its rate limiter is the broker's (the cluster's on Redis), or this
/// node's when the server was handed a manager of its own.
fn publish_api(
    c: &ServerConfig,
    broker: Option<&ServerBroker>,
    metrics: PublishMetrics,
) -> PublishApi {
    let limits = PublishLimits {
        max_batch: c.max_batch,
        max_request_bytes: c.max_request_bytes,
        history_read_max: c.history_read_max,
        publish_rate: c.publish_rate,
        publish_burst: c.publish_burst,
    };
    PublishApi::new(
        limits,
        c.run_lifecycle == RunLifecycle::Enforce,
        broker.map_or_else(
            || Arc::new(agentwire_manager::InMemoryRates::default()) as _,
            ServerBroker::rates,
        ),
        metrics,
    )
}
