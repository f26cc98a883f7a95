//! The key set in use, its refreshes — at start, on a schedule, and for an unknown `kid`
//! at most once per `min_refresh_interval`, one fetch shared by every caller — and their
//! metrics.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, DecodingKey};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::JwksSettings;
use super::fetch::{Fetcher, KeySet};
use crate::auth::{AuthConfigError, AuthError};

/// Longest `kid` an error message repeats, in characters (it came from outside).
const KID_SHOWN_CHARS: usize = 64;

/// Why a fetch is made: the `trigger` label of `agentwire_jwks_refreshes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trigger {
    /// The server is starting.
    Start,
    /// `refresh_interval` has passed (or `min_refresh_interval`, after a failure).
    Schedule,
    /// A token named a `kid` the set does not hold.
    UnknownKey,
}

impl Trigger {
    fn label(self) -> &'static str {
        match self {
            Trigger::Start => "start",
            Trigger::Schedule => "schedule",
            Trigger::UnknownKey => "unknown_key",
        }
    }
}

type RefreshLabels = [(&'static str, &'static str); 2];

#[derive(Debug, Clone, Default)]
struct JwksMetrics {
    refreshes: Family<RefreshLabels, Counter>,
    suppressed: Counter,
    keys: Gauge,
    last_success: Gauge,
}

/// The keys of a JWKS URL, fetched and kept fresh.
pub(crate) struct Jwks {
    settings: JwksSettings,
    fetcher: Fetcher,
    keys: RwLock<Option<Arc<KeySet>>>,
    last_error: Mutex<Option<String>>,
    /// When the latest fetch started.
    last_fetch: Mutex<Option<Instant>>,
    /// One fetch at a time; callers that waited for one use its result.
    fetching: tokio::sync::Mutex<()>,
    /// Fetches finished, successful or not.
    fetches: AtomicU64,
    background_pending: AtomicBool,
    scheduled: AtomicBool,
    metrics: JwksMetrics,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwks")
            .field("settings", &self.settings)
            .field("keys", &self.current().map(|k| k.len()))
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Jwks {
    /// A cache of `settings.url`'s keys, empty until the first fetch.
    pub(crate) fn new(mut settings: JwksSettings) -> Result<Jwks, AuthConfigError> {
        settings.min_refresh_interval = settings
            .min_refresh_interval
            .max(Duration::from_millis(100));
        settings.refresh_interval = settings.refresh_interval.max(settings.min_refresh_interval);
        settings.timeout = settings.timeout.max(Duration::from_millis(1));
        settings.max_keys = settings.max_keys.max(1);
        Ok(Jwks {
            fetcher: Fetcher::new(&settings)?,
            settings,
            keys: RwLock::new(None),
            last_error: Mutex::new(None),
            last_fetch: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
            fetches: AtomicU64::new(0),
            background_pending: AtomicBool::new(false),
            scheduled: AtomicBool::new(false),
            metrics: JwksMetrics::default(),
        })
    }

    fn current(&self) -> Option<Arc<KeySet>> {
        self.keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The key for a token of algorithm `alg` naming `kid`; without a `kid`, the one key of
    /// that algorithm, if the set holds exactly one.
    pub(crate) fn key(
        &self,
        alg: Algorithm,
        kid: Option<&str>,
    ) -> Result<Arc<DecodingKey>, AuthError> {
        let set = self.current().ok_or(AuthError::KeysUnavailable)?;
        if let Some(kid) = kid {
            return match set.named.get(kid) {
                Some((key_alg, key)) if *key_alg == alg => Ok(key.clone()),
                Some((key_alg, _)) => Err(AuthError::Algorithm(format!(
                    "{alg:?} does not match key {}, a {key_alg:?} key",
                    shown(kid)
                ))),
                None => Err(AuthError::UnknownKey(shown(kid))),
            };
        }
        let mut of_alg = set
            .named
            .values()
            .chain(&set.unnamed)
            .filter(|(key_alg, _)| *key_alg == alg);
        match (of_alg.next(), of_alg.next()) {
            (Some((_, key)), None) => Ok(key.clone()),
            (None, _) => Err(AuthError::NoKeyId(format!("no {alg:?} key"))),
            (Some(_), Some(_)) => Err(AuthError::NoKeyId(format!("several {alg:?} keys"))),
        }
    }

    fn too_soon(&self) -> bool {
        lock(&self.last_fetch).is_some_and(|t| t.elapsed() < self.settings.min_refresh_interval)
    }

    /// Fetches the key set (for `trigger`), unless a fetch for an unknown key comes less
    /// than `min_refresh_interval` after the last one. Callers that arrive while a fetch
    /// is under way wait for it and use its result.
    pub(crate) async fn refresh(&self, trigger: Trigger) {
        let seen = self.fetches.load(Ordering::Acquire);
        if trigger == Trigger::UnknownKey && self.too_soon() {
            self.metrics.suppressed.inc();
            return;
        }
        let _one = self.fetching.lock().await;
        if self.fetches.load(Ordering::Acquire) != seen {
            return;
        }
        if trigger == Trigger::UnknownKey && self.too_soon() {
            self.metrics.suppressed.inc();
            return;
        }
        *lock(&self.last_fetch) = Some(Instant::now());
        let outcome = match self.fetcher.fetch(&self.settings).await {
            Ok(set) => {
                let count = set.len();
                *self.keys.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(set));
                *lock(&self.last_error) = None;
                self.metrics
                    .keys
                    .set(i64::try_from(count).unwrap_or(i64::MAX));
                let now = jsonwebtoken::get_current_timestamp();
                self.metrics
                    .last_success
                    .set(i64::try_from(now).unwrap_or(i64::MAX));
                tracing::debug!(url = %self.settings.display_url(), keys = count, trigger = trigger.label(), "JWKS key set fetched");
                "ok"
            }
            Err(e) => {
                let kept = self.current().is_some();
                tracing::warn!(
                    url = %self.settings.display_url(),
                    error = %e,
                    trigger = trigger.label(),
                    retry_in = ?self.settings.min_refresh_interval,
                    "JWKS fetch failed; {}",
                    if kept { "serving with the last key set fetched" } else { "no key set yet: tokens signed with its keys are refused with 503" }
                );
                *lock(&self.last_error) = Some(e.to_string());
                e.reason()
            }
        };
        self.metrics
            .refreshes
            .get_or_create(&[("trigger", trigger.label()), ("outcome", outcome)])
            .inc();
        self.fetches.fetch_add(1, Ordering::Release);
    }

    /// [`Jwks::refresh`] for an unknown key, awaited.
    pub(crate) async fn refresh_for_unknown_key(&self) {
        self.refresh(Trigger::UnknownKey).await;
    }

    /// [`Jwks::refresh`] for an unknown key, in a task of its own (for callers that cannot
    /// wait); nothing when one is pending already, it is too soon, or there is no runtime.
    pub(crate) fn refresh_in_background(self: &Arc<Self>) {
        if self.too_soon() {
            self.metrics.suppressed.inc();
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.background_pending.swap(true, Ordering::AcqRel) {
            return;
        }
        let jwks = self.clone();
        runtime.spawn(async move {
            jwks.refresh(Trigger::UnknownKey).await;
            jwks.background_pending.store(false, Ordering::Release);
        });
    }

    /// Starts the scheduled refreshes (once; later calls do nothing): a task that fetches
    /// every `refresh_interval` — `min_refresh_interval` after a failed fetch, or at once
    /// when none was made — and ends when the cache is dropped. Needs a Tokio runtime;
    /// without one nothing starts (and a later call starts it).
    pub(crate) fn start(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.scheduled.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(self);
        runtime.spawn(async move {
            loop {
                let Some(wait) = weak.upgrade().map(|j| j.next_refresh_in()) else {
                    return;
                };
                tokio::time::sleep(wait).await;
                let Some(jwks) = weak.upgrade() else { return };
                let trigger = if jwks.fetches.load(Ordering::Acquire) == 0 {
                    Trigger::Start
                } else {
                    Trigger::Schedule
                };
                jwks.refresh(trigger).await;
            }
        });
    }

    fn next_refresh_in(&self) -> Duration {
        let Some(last) = *lock(&self.last_fetch) else {
            return Duration::ZERO;
        };
        let healthy = lock(&self.last_error).is_none() && self.current().is_some();
        let every = if healthy {
            self.settings.refresh_interval
        } else {
            self.settings.min_refresh_interval
        };
        every.saturating_sub(last.elapsed())
    }

    /// Why tokens cannot be checked yet: no key set has been fetched.
    pub(crate) fn not_ready(&self) -> Option<String> {
        if self.current().is_some() {
            return None;
        }
        let why = lock(&self.last_error)
            .clone()
            .unwrap_or_else(|| "the first fetch is under way".into());
        Some(format!(
            "no JWKS key set fetched yet from {}: {why}",
            self.settings.display_url()
        ))
    }

    /// Registers the cache's metrics in `registry`.
    pub(crate) fn register(&self, registry: &mut Registry) {
        let m = &self.metrics;
        registry.register(
            "agentwire_jwks_refreshes",
            "Fetches of the --jwt-jwks-url key set, by trigger (start, schedule, unknown_key) \
             and outcome (ok, or why it failed)",
            m.refreshes.clone(),
        );
        registry.register(
            "agentwire_jwks_refreshes_suppressed",
            "Fetches for an unknown `kid` not made: the last fetch was less than \
             --jwt-jwks-min-refresh-interval ago",
            m.suppressed.clone(),
        );
        registry.register(
            "agentwire_jwks_keys",
            "Keys in the JWKS key set in use",
            m.keys.clone(),
        );
        registry.register(
            "agentwire_jwks_last_success_timestamp_seconds",
            "When the JWKS key set was last fetched successfully (Unix time; 0: never)",
            m.last_success.clone(),
        );
    }
}

/// A `kid` as messages show it: quoted and escaped, at most [`KID_SHOWN_CHARS`].
fn shown(kid: &str) -> String {
    let mut cut: String = kid.chars().take(KID_SHOWN_CHARS).collect();
    if cut.len() < kid.len() {
        cut.push('…');
    }
    format!("{cut:?}")
}
