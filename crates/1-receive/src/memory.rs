//! How much message contents all sessions hold in memory while they
//! receive (`session.data.max-memory`). Each session keeps the message it
//! is receiving in memory until it is made durable; without a bound,
//! clients sending slowly to many sessions (each within the data timeout)
//! could make the server run out of memory. A message that would go
//! beyond the bound is refused with 452 4.3.1 ("insufficient system
//! storage", RFC 5321 §4.2.2, RFC 3463 X.3.1), which a client retries.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The bytes held by all sessions. Shared by every receiver a reload
/// builds, so what sessions in progress hold is not forgotten.
#[derive(Debug, Default)]
pub struct MessageMemory {
    held: AtomicU64,
}

impl MessageMemory {
    /// Bytes held now (for `/metrics`).
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }

    /// A hold of nothing yet, on `memory`.
    pub fn hold(memory: &Arc<MessageMemory>) -> Hold {
        Hold {
            memory: memory.clone(),
            bytes: 0,
        }
    }
}

/// One message's share of [`MessageMemory`]; given back when dropped.
#[derive(Debug)]
pub struct Hold {
    memory: Arc<MessageMemory>,
    bytes: u64,
}

impl Hold {
    /// Grows this hold to `total` bytes if all holds together stay within
    /// `limit`; false (and nothing taken) if they would not.
    pub fn grow_to(&mut self, total: u64, limit: u64) -> bool {
        let Some(more) = total.checked_sub(self.bytes).filter(|&m| m > 0) else {
            return true;
        };
        let taken = self
            .memory
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(more).filter(|&n| n <= limit)
            })
            .is_ok();
        if taken {
            self.bytes = total;
        }
        taken
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.memory.held.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_share_the_limit_and_give_it_back() {
        let m = Arc::new(MessageMemory::default());
        let mut a = MessageMemory::hold(&m);
        let mut b = MessageMemory::hold(&m);
        assert!(a.grow_to(600, 1000));
        assert!(a.grow_to(500, 1000), "shrinking takes nothing");
        assert!(!b.grow_to(500, 1000), "600 + 500 > 1000");
        assert_eq!(m.held(), 600);
        assert!(b.grow_to(400, 1000));
        assert_eq!(m.held(), 1000);
        drop(a);
        assert_eq!(m.held(), 400);
        assert!(b.grow_to(1000, 1000));
        drop(b);
        assert_eq!(m.held(), 0);
    }
}
