//! Schedules: what happens to a recipient after an attempt. Pure: the caller
//! passes the time, the jitter draw and the outcome; nothing here reads a
//! clock, touches the store or sleeps, so the retry, notify and expire
//! sequences are unit-tested with a virtual clock.
//!
//! # The sequences
//!
//! * **Retry.** After the n-th failed attempt the next one is due
//!   `retry[n-1]` later (the list's last interval repeats), with jitter
//!   ([`JITTER`]).
//! * **Notify.** Each age in `notify` yields one [`EventKind::Delayed`] when
//!   an attempt at or after that age fails; the notify count is stored with
//!   the deferral, in the same write, so a restart never repeats a notice.
//!   The next attempt is never scheduled later than the next notify age, so
//!   the notice goes out at that age and reports a fresh failure (RFC 3464's
//!   Last-Attempt-Date means something). When several ages were passed at
//!   once (say, after an outage) only the latest is notified.
//! * **Expire.** An attempt that fails at or after `arrival + expire`, or
//!   that is the `max-attempts`-th, ends the recipient with
//!   [`EventKind::Expired`] (status 4.4.7). The next attempt is never
//!   scheduled later than the expiry, so the last attempt happens at expiry.
//!
//! Every schedule field is an expression evaluated per recipient with
//! [`ScheduleVars`]: `rcpt`, `rcpt_domain`, `sender`, `sender_domain`,
//! `queue`, `source`, `priority`, `size`, `retry_num` (attempts made,
//! this one included), `notify_num` (delay notices sent so far),
//! `expires_in` (time left; not available to `expire` itself), `last_error`
//! and `mx` (the host of the failed attempt).

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use ferrymail_config::{
    DEFAULT_SCHEDULE, Schedule, Value, Var, Variables,
    expr::{Expr, ExprError},
};
use ferrymail_deliver::{Outcome, Remote};
use ferrymail_spool::{Deferral, Envelope, QueueEntry, UnixMillis};

use crate::event::EventKind;

/// Retry jitter: each interval is stretched or shrunk by a uniform factor in
/// `[-10%, +10%]`, so recipients that failed together (one outage, one
/// restart) do not all come back in the same millisecond.
pub const JITTER: f64 = 0.10;

/// Expiry used when a schedule's `expire` expression gives no duration and no
/// `max-attempts` is set: the default schedule's five days, so a recipient
/// can never stay queued for ever because of an expression mistake.
pub const FALLBACK_EXPIRE: Duration = Duration::from_secs(5 * 86_400);

/// Retry intervals used when a `retry` expression gives no usable duration:
/// the default schedule's.
pub const FALLBACK_RETRY: [Duration; 7] = [
    Duration::from_secs(2 * 60),
    Duration::from_secs(5 * 60),
    Duration::from_secs(10 * 60),
    Duration::from_secs(15 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(3600),
    Duration::from_secs(2 * 3600),
];

/// The shortest retry interval applied, whatever an expression says: a zero
/// interval (the loader refuses constant ones, but an expression can still
/// compute one) would make a failing recipient spin.
pub const MIN_RETRY: Duration = Duration::from_millis(10);

/// The variables schedule expressions see for one recipient at one attempt.
pub struct ScheduleVars<'a> {
    /// The message.
    pub envelope: &'a Envelope,
    /// The recipient's queue entry, as claimed.
    pub entry: &'a QueueEntry,
    /// The virtual queue the recipient is scheduled in.
    pub queue: &'a str,
    /// `retry_num`: attempts made so far, the one just finished included.
    pub retry_num: u32,
    /// `notify_num`: delay notices sent so far.
    pub notify_num: u32,
    /// `expires_in`: time left until expiry, once known.
    pub expires_in: Option<Duration>,
    /// `last_error`: the error of the attempt just made.
    pub last_error: Option<&'a str>,
    /// `mx`: the host the attempt reached.
    pub mx: Option<&'a str>,
}

fn domain_of(address: &str) -> String {
    ferrymail_spool::domain_of(address).unwrap_or_default()
}

impl Variables for ScheduleVars<'_> {
    fn var(&self, v: Var) -> Value {
        let env = self.envelope;
        let rcpt = env
            .recipients
            .get(self.entry.key.rcpt as usize)
            .map(|r| r.address.as_str())
            .unwrap_or("");
        match v {
            Var::Sender => ferrymail_spool::address_for_expressions(&env.sender).into(),
            Var::SenderDomain => domain_of(&env.sender).into(),
            Var::Rcpt => ferrymail_spool::address_for_expressions(rcpt).into(),
            Var::RcptDomain => domain_of(rcpt).into(),
            Var::RemoteIp => env.remote_ip.into(),
            Var::AuthenticatedAs => env.authenticated_as.clone().into(),
            Var::HeloDomain => env.helo.clone().into(),
            Var::Priority => Value::Int(i64::from(env.mt_priority)),
            Var::Size => env.size.into(),
            Var::Queue => self.queue.into(),
            Var::Source => env.source.as_str().into(),
            Var::RetryNum => self.retry_num.into(),
            Var::NotifyNum => self.notify_num.into(),
            Var::ExpiresIn => self.expires_in.into(),
            Var::LastError => self.last_error.map(str::to_string).into(),
            Var::Mx => self.mx.map(str::to_string).into(),
            _ => Value::Null,
        }
    }
}

/// One finished attempt, as the policy needs to judge it.
pub struct Attempt<'a> {
    /// The message.
    pub envelope: &'a Envelope,
    /// The recipient's entry as claimed for this attempt (attempts and
    /// notify count before it).
    pub entry: &'a QueueEntry,
    /// The virtual queue the recipient was scheduled in.
    pub queue: &'a str,
    /// Where the attempt went, if a connection was made.
    pub remote: Option<&'a Remote>,
    /// Whether a delivery was attempted at all. A deferral without one (the
    /// destination is suspended as dead) neither counts towards
    /// `max-attempts` nor moves along the retry list: an outage of the
    /// destination must not use up the attempts its mail is allowed.
    pub attempted: bool,
}

/// What to do with a recipient after an attempt.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Remove the entry for good and emit the event (delivered, relayed,
    /// failed or expired).
    Complete(EventKind),
    /// Keep it in the deferred lane until `due`; emit `delayed` when a notify
    /// age was reached.
    Defer {
        /// When to try again.
        due: UnixMillis,
        /// The error to store (`queue show`, delay notices, `last_error`).
        last_error: String,
        /// Delay notices sent, this one included.
        notify_count: u32,
        /// A delay notice due now.
        delayed: Option<EventKind>,
        /// Whether a delivery was attempted ([`Attempt::attempted`]).
        attempted: bool,
    },
}

impl Decision {
    /// What [`ferrymail_spool::DataStore::defer`] records for a deferral.
    pub fn deferral(&self) -> Option<Deferral> {
        match self {
            Decision::Defer {
                due,
                last_error,
                notify_count,
                attempted,
                ..
            } => Some(Deferral {
                due: *due,
                last_error: last_error.clone(),
                notify_count: *notify_count,
                // The manager adds the delay notice owed, if any.
                notice: None,
                attempted: *attempted,
            }),
            Decision::Complete(_) => None,
        }
    }
}

/// The schedules of a configuration and the rules choosing one per
/// recipient.
#[derive(Debug)]
pub struct Policy {
    /// `[queue.schedule]` and `[queue.schedule.<id>]`.
    schedules: BTreeMap<String, Schedule>,
    /// `schedule` of each configured `[queue.virtual.<name>]` that sets one.
    queue_schedule: BTreeMap<String, String>,
    /// Schedule ids already warned about, so the log says it once.
    warned: Mutex<HashSet<String>>,
    /// The configured routes (`mx` among them).
    routes: HashSet<String>,
}

impl Policy {
    /// The policy of a loaded configuration.
    pub fn from_config(q: &ferrymail_config::Queue) -> Policy {
        let mut schedules = q.schedules.clone();
        schedules.entry(DEFAULT_SCHEDULE.to_string()).or_default();
        Policy {
            schedules,
            queue_schedule: q
                .virtual_queues
                .iter()
                .filter_map(|(name, v)| v.schedule.clone().map(|s| (name.clone(), s)))
                .collect(),
            warned: Mutex::new(HashSet::new()),
            routes: q.routes.keys().cloned().collect(),
        }
    }

    /// Whether route `id` is configured. An entry whose route is not (a
    /// reload removed it, or a computed name has a typo) is not attempted:
    /// its destination is not to be judged dead, nor its attempts used up,
    /// for what only the operator can mend (`queue requeue`).
    pub fn has_route(&self, id: &str) -> bool {
        self.routes.contains(id)
    }

    /// The schedule for a recipient in virtual queue `queue` whose entry names
    /// schedule `id`: the queue's own `schedule` if configured, else `id`, else
    /// (an unknown id, e.g. removed from the configuration while mail was
    /// queued) the default schedule, with a warning logged once per id.
    /// Returns the id used and whether it fell back.
    pub fn resolve(&self, queue: &str, id: &str) -> (&str, bool) {
        let wanted = self
            .queue_schedule
            .get(queue)
            .map(String::as_str)
            .unwrap_or(id);
        if let Some((k, _)) = self.schedules.get_key_value(wanted) {
            return (k, false);
        }
        let first = self
            .warned
            .lock()
            .map(|mut w| w.len() < 1024 && w.insert(wanted.to_string()))
            .unwrap_or(false);
        if first {
            tracing::warn!(
                schedule = wanted,
                queue,
                "unknown schedule: using the default schedule for its recipients"
            );
        }
        (DEFAULT_SCHEDULE, true)
    }

    fn schedule(&self, queue: &str, id: &str) -> &Schedule {
        let (id, _) = self.resolve(queue, id);
        &self.schedules[id]
    }

    /// Judges one recipient's outcome at `now`.
    ///
    /// `jitter` is the factor drawn for this job (within ±[`JITTER`]); every
    /// recipient of one job gets the same draw, so recipients that failed
    /// together are retried together, in one transaction. `not_before` delays
    /// the retry, e.g. until a suspended destination may be probed again.
    pub fn decide(
        &self,
        a: &Attempt<'_>,
        outcome: &Outcome,
        now: UnixMillis,
        jitter: f64,
        not_before: Option<UnixMillis>,
    ) -> Decision {
        let lmtp = a.remote.is_some_and(|r| r.lmtp);
        let dsn = a.remote.is_some_and(|r| r.dsn);
        let (reason, reply) = match outcome {
            Outcome::Delivered { reply } => {
                return Decision::Complete(if lmtp || dsn {
                    EventKind::Delivered {
                        reply: reply.clone(),
                        lmtp,
                    }
                } else {
                    EventKind::Relayed {
                        reply: reply.clone(),
                    }
                });
            }
            Outcome::Permanent { reason, reply } => {
                return Decision::Complete(EventKind::Failed {
                    reason: reason.clone(),
                    reply: reply.clone(),
                });
            }
            Outcome::Transient { reason, reply } => (reason, reply),
        };
        self.transient(a, reason, reply.clone(), now, jitter, not_before)
    }

    fn transient(
        &self,
        a: &Attempt<'_>,
        reason: &str,
        reply: Option<ferrymail_deliver::RemoteReply>,
        now: UnixMillis,
        jitter: f64,
        not_before: Option<UnixMillis>,
    ) -> Decision {
        let sched = self.schedule(a.queue, &a.entry.schedule);
        // Without an attempt the count stays, so neither `max-attempts`
        // nor the retry list moves (expiry by age still applies).
        let attempts = a.entry.attempts.saturating_add(u32::from(a.attempted));
        let last_error = match &reply {
            Some(r) => format!("{r}"),
            None => reason.to_string(),
        };
        let mut vars = ScheduleVars {
            envelope: a.envelope,
            entry: a.entry,
            queue: a.queue,
            retry_num: attempts,
            notify_num: a.entry.notify_count,
            expires_in: None,
            last_error: Some(&last_error),
            mx: a.remote.map(|r| r.host.as_str()),
        };
        let arrival = a.envelope.arrived;
        let age = now.saturating_sub(arrival);

        // Expiry: by age, or by attempts.
        let max_attempts = sched.max_attempts.as_ref().and_then(|e| e.eval_int(&vars));
        let expires_at = match (&sched.expire, max_attempts) {
            (Some(e), _) => Some(
                arrival.saturating_add(millis(e.eval_duration(&vars).unwrap_or(FALLBACK_EXPIRE))),
            ),
            (None, Some(_)) => None,
            (None, None) => Some(arrival.saturating_add(millis(FALLBACK_EXPIRE))),
        };
        let expired = expires_at.is_some_and(|t| now >= t)
            || (a.attempted && max_attempts.is_some_and(|m| i64::from(attempts) >= m));
        if expired {
            return Decision::Complete(EventKind::Expired {
                reason: last_error,
                reply,
            });
        }
        vars.expires_in = expires_at.map(|t| Duration::from_millis(t - now));

        // Notify ages reached by now.
        let mut ages = sched.notify.eval_durations(&vars);
        ages.sort();
        let reached = ages.iter().filter(|d| millis(**d) <= age).count() as u32;
        let mut notify_count = a.entry.notify_count;
        let delayed = if reached > notify_count {
            notify_count = reached;
            Some(EventKind::Delayed {
                notify_num: reached,
                will_retry_until: expires_at,
                reason: last_error.clone(),
                reply: reply.clone(),
            })
        } else {
            None
        };
        vars.notify_num = notify_count;

        // The next attempt.
        let retry = usable_retry(&sched.retry, &vars);
        let idx = (attempts.max(1) as usize - 1).min(retry.len() - 1);
        let interval = millis(retry[idx]) as f64;
        let jitter = jitter.clamp(-JITTER, JITTER);
        let mut due = now.saturating_add((interval * (1.0 + jitter)).round().max(1.0) as u64);
        if let Some(t) = not_before {
            due = due.max(t);
        }
        if let Some(next_age) = ages.get(notify_count as usize) {
            due = due.min(arrival.saturating_add(millis(*next_age)));
        }
        if let Some(t) = expires_at {
            due = due.min(t);
        }
        Decision::Defer {
            due: due.max(now.saturating_add(1)),
            last_error,
            notify_count,
            delayed,
            attempted: a.attempted,
        }
    }
}

/// The retry list, never empty, with intervals of at least [`MIN_RETRY`].
fn usable_retry(e: &Expr, vars: &dyn Variables) -> Vec<Duration> {
    let list: Vec<Duration> = e
        .eval_durations(vars)
        .into_iter()
        .map(|d| d.max(MIN_RETRY))
        .collect();
    if list.is_empty() {
        FALLBACK_RETRY.to_vec()
    } else {
        list
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Builds a [`Schedule`] from expression texts, for tests and tools:
/// `retry`, `notify`, and `expire` or `max-attempts`.
pub fn schedule_from_exprs(
    retry: &str,
    notify: &str,
    expire: Option<&str>,
    max_attempts: Option<&str>,
) -> Result<Schedule, ExprError> {
    Ok(Schedule {
        retry: Expr::parse(retry)?,
        notify: Expr::parse(notify)?,
        expire: expire.map(Expr::parse).transpose()?,
        max_attempts: max_attempts.map(Expr::parse).transpose()?,
    })
}

#[cfg(test)]
mod tests;
