//! `RunContext`: whose run an emitter speaks for — user, thread, run and an optional
//! request id.
//!
//! What it is not: an authorization token. The user id is trusted as given; the code that
//! builds a context is responsible for having authenticated that user.

use std::fmt;
use std::sync::Arc;

use agentwire_protocol::{RunId, ThreadId, UserId};

/// The identity of one agent run, which every event of an emitter carries.
///
/// The user id routes the event (only that user's connections receive it); thread and run
/// id go on the wire; the request id is for logs and traces only and never reaches a
/// client. Two contexts that differ only in their request id name the same run: the pool
/// keys emitters by [`RunContext::key`], which leaves the request id out.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RunContext {
    user_id: UserId,
    thread_id: ThreadId,
    run_id: RunId,
    request_id: Option<Arc<str>>,
}

/// What identifies a run's emitter in a pool: user, thread and run id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RunKey {
    /// The user.
    pub user_id: UserId,
    /// The thread.
    pub thread_id: ThreadId,
    /// The run.
    pub run_id: RunId,
}

impl RunContext {
    /// The context of run `run_id` in thread `thread_id`, for user `user_id`.
    pub fn new(user_id: UserId, thread_id: ThreadId, run_id: RunId) -> Self {
        RunContext {
            user_id,
            thread_id,
            run_id,
            request_id: None,
        }
    }

    /// The same context with a request id, which tags logs and traces of every emit.
    #[must_use]
    pub fn with_request_id(mut self, request_id: impl AsRef<str>) -> Self {
        self.request_id = Some(Arc::from(request_id.as_ref()));
        self
    }

    /// The user whose connections receive the run's events.
    pub fn user_id(&self) -> &UserId {
        &self.user_id
    }

    /// The conversation thread.
    pub fn thread_id(&self) -> &ThreadId {
        &self.thread_id
    }

    /// The run.
    pub fn run_id(&self) -> &RunId {
        &self.run_id
    }

    /// The request id, if one was given.
    pub fn request_id(&self) -> Option<&str> {
        self.request_id.as_deref()
    }

    /// The run's identity without the request id.
    pub fn key(&self) -> RunKey {
        RunKey {
            user_id: self.user_id.clone(),
            thread_id: self.thread_id.clone(),
            run_id: self.run_id.clone(),
        }
    }
}

impl fmt::Debug for RunContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("RunContext");
        d.field("user_id", &self.user_id.as_str())
            .field("thread_id", &self.thread_id.as_str())
            .field("run_id", &self.run_id.as_str());
        if let Some(r) = &self.request_id {
            d.field("request_id", &&**r);
        }
        d.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(run: &str) -> RunContext {
        RunContext::new(
            "u1".parse().expect("id"),
            "t1".parse().expect("id"),
            run.parse().expect("id"),
        )
    }

    #[test]
    fn key_ignores_the_request_id() {
        let a = ctx("r1").with_request_id("req-1");
        let b = ctx("r1").with_request_id("req-2");
        assert_ne!(a, b);
        assert_eq!(a.key(), b.key());
        assert_ne!(a.key(), ctx("r2").key());
        assert_eq!(a.request_id(), Some("req-1"));
        assert_eq!(ctx("r1").request_id(), None);
    }
}
