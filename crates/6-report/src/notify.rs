//! When a notification is due: the queue engine's policy
//! ([`ferrymail_schedule::notify`]), re-exported here where the DSN layer
//! always had it. It lives in the queue engine because a notice that is
//! owed is recorded with the outcome it reports (the "notice owed"
//! invariant), and there must be one copy of the rule.

pub use ferrymail_schedule::notify::{Kind, owes, wanted};
