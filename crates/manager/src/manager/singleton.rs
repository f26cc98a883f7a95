//! The process-wide manager: `global()`, `install_global()` and how to tell the two apart.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use super::UnifiedWebSocketManager;

static GLOBAL: OnceLock<UnifiedWebSocketManager> = OnceLock::new();

/// Whether [`GLOBAL`] was created by `global()` rather than installed.
static GLOBAL_IMPLICIT: AtomicBool = AtomicBool::new(false);
impl UnifiedWebSocketManager {
    /// The process-wide manager: the one a server installed with
    /// [`Self::install_global`], or else an in-memory one with the default configuration,
    /// created on first use (with a warning, once: a server bound later adopts it, and its
    /// settings must then be the defaults). Initialisation is thread-safe and needs no
    /// runtime.
    pub fn global() -> Self {
        GLOBAL
            .get_or_init(|| {
                GLOBAL_IMPLICIT.store(true, Ordering::Release);
                tracing::warn!(
                    "UnifiedWebSocketManager::global() created an in-memory manager with the \
                     default configuration, because none was installed; install the \
                     server's manager (or bind the server) before anything calls global()"
                );
                Self::in_memory()
            })
            .clone()
    }

    /// The process-wide manager, if one was installed or created by [`Self::global`];
    /// unlike `global()`, never creates one.
    pub fn installed_global() -> Option<Self> {
        GLOBAL.get().cloned()
    }

    /// Whether the process-wide manager is the in-memory one [`Self::global`] created
    /// because none was installed (its configuration is then the default, over an
    /// `InMemoryBroker::default()`).
    pub fn global_is_implicit() -> bool {
        GLOBAL.get().is_some() && GLOBAL_IMPLICIT.load(Ordering::Acquire)
    }

    /// Makes `manager` the process-wide instance, so code written against the singleton
    /// reaches the server's connections.
    ///
    /// # Errors
    /// Hands `manager` back when a global instance already exists.
    pub fn install_global(manager: Self) -> Result<(), Self> {
        let mut candidate = Some(manager);
        let installed = GLOBAL.get_or_init(|| candidate.take().unwrap_or_else(Self::in_memory));
        match candidate {
            None => Ok(()),
            Some(m) if Arc::ptr_eq(&m.inner, &installed.inner) => Ok(()),
            Some(m) => Err(m),
        }
    }
}
