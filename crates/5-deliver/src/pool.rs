//! Idle connections kept for reuse, per destination (the scheduler's
//! [`crate::destination_key`]). A connection is in the pool only while
//! nobody uses it, so concurrent jobs for one destination never share one:
//! each takes its own, or opens a new one.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::session::Session;

/// The idle sessions by destination key.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<HashMap<String, Vec<Session>>>,
}

impl Pool {
    /// The most recently used idle session for `key` that has been idle for
    /// less than `max_idle`, and every session found too old (the caller
    /// closes them).
    pub fn take(&self, key: &str, max_idle: Duration) -> (Option<Session>, Vec<Session>) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let Some(list) = idle.get_mut(key) else {
            return (None, Vec::new());
        };
        let now = Instant::now();
        let (fresh, stale): (Vec<Session>, Vec<Session>) = list
            .drain(..)
            .partition(|s| now.duration_since(s.last_used) < max_idle);
        *list = fresh;
        let found = list.pop();
        if list.is_empty() {
            idle.remove(key);
        }
        (found, stale)
    }

    /// Returns a session to the pool.
    pub fn put(&self, key: &str, session: Session) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.entry(key.to_string()).or_default().push(session);
    }

    /// Removes and returns every session idle for `max_idle` or longer.
    pub fn expired(&self, max_idle: Duration) -> Vec<Session> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let mut out = Vec::new();
        idle.retain(|_, list| {
            let (fresh, stale): (Vec<Session>, Vec<Session>) = list
                .drain(..)
                .partition(|s| now.duration_since(s.last_used) < max_idle);
            *list = fresh;
            out.extend(stale);
            !list.is_empty()
        });
        out
    }

    /// Removes and returns every idle session (shutdown).
    pub fn drain(&self) -> Vec<Session> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.drain().flat_map(|(_, list)| list).collect()
    }

    /// How many sessions are idle now.
    pub fn len(&self) -> usize {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.values().map(Vec::len).sum()
    }
}
