//! Inbound rate limits (`[queue.limiter.inbound.<id>]`, Stalwart's
//! names): how many recipients one client, sender or destination may hand
//! in per period. Each limiter keys its counts by the values of the
//! variables it names (`remote_ip`, `sender_domain` and `rcpt`, ...), so
//! one noisy client or one compromised account is slowed down while the
//! rest go on.
//!
//! The counting is the generic cell rate algorithm (GCRA, the leaky bucket
//! as a meter): a key holds one number, its theoretical arrival time. A rate
//! of `count/period` lets `count` recipients through at once, then one per
//! `period / count`. No I/O here: the session asks, with the time, and
//! gets an answer.
//!
//! Times are counted in nanoseconds: in milliseconds the interval of any
//! rate above 1,000 per second rounded to 1 ms (so `5000/1s` let only
//! 1,000 a second through), and rates below that drifted by the rounding
//! (`700/1s` let 1,000 through, `3/1s` a little more than 3).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use ferrymail_config::Rate;

/// One request to [`RateLimiter::take`]: which limiter, which key, at what
/// rate.
#[derive(Clone, Debug)]
pub struct Take {
    /// The limiter's id (`queue.limiter.inbound.<id>`).
    pub limiter: String,
    /// The values of the limiter's key variables, joined.
    pub key: String,
    /// The limiter's rate.
    pub rate: Rate,
}

/// The counts of every limiter of a node, kept across configuration
/// reloads (a reload does not let a limited client start afresh).
#[derive(Debug)]
pub struct RateLimiter {
    state: Mutex<State>,
    /// Time zero of [`RateLimiter::take_now`].
    epoch: Instant,
}

impl Default for RateLimiter {
    fn default() -> Self {
        RateLimiter {
            state: Mutex::default(),
            epoch: Instant::now(),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    /// (limiter, key) → theoretical arrival time, in ns.
    tat: HashMap<(String, String), u64>,
    /// When keys that have fully recovered were last forgotten.
    last_sweep: u64,
}

/// How often keys that have recovered are forgotten, so the map holds only
/// clients seen recently.
const SWEEP_EVERY_NS: u64 = 60_000_000_000;

impl RateLimiter {
    /// Takes one unit from every limiter in `takes` now, or from none:
    /// `Err(i)` names the first one that is exhausted, and then no count
    /// changes (a refused recipient costs nothing).
    pub fn take_now(&self, takes: &[Take]) -> Result<(), usize> {
        let now = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.take(takes, now)
    }

    /// [`RateLimiter::take_now`] at a given time (ns since any fixed
    /// point; tests).
    pub fn take(&self, takes: &[Take], now_ns: u64) -> Result<(), usize> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = Vec::with_capacity(takes.len());
        for (i, t) in takes.iter().enumerate() {
            let count = t.rate.count.max(1);
            let period_ns = u64::try_from(t.rate.period.as_nanos()).unwrap_or(u64::MAX);
            let interval = (period_ns / count).max(1);
            // Up to `count` at once: the burst tolerance is the rest of the
            // period.
            let tolerance = interval.saturating_mul(count - 1);
            let tat = state
                .tat
                .get(&(t.limiter.clone(), t.key.clone()))
                .copied()
                .unwrap_or(0)
                .max(now_ns);
            if tat - now_ns > tolerance {
                return Err(i);
            }
            next.push(tat.saturating_add(interval));
        }
        for (t, tat) in takes.iter().zip(next) {
            state.tat.insert((t.limiter.clone(), t.key.clone()), tat);
        }
        if now_ns.saturating_sub(state.last_sweep) >= SWEEP_EVERY_NS {
            state.last_sweep = now_ns;
            state.tat.retain(|_, tat| *tat > now_ns);
        }
        Ok(())
    }

    /// Keys counted now (for tests and metrics).
    pub fn keys(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .tat
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One millisecond, in the limiter's nanoseconds.
    const MS: u64 = 1_000_000;

    fn take(limiter: &str, key: &str, count: u64, period_ms: u64) -> Take {
        Take {
            limiter: limiter.into(),
            key: key.into(),
            rate: Rate {
                count,
                period: std::time::Duration::from_millis(period_ms),
            },
        }
    }

    #[test]
    fn a_burst_of_count_then_one_per_interval() {
        let l = RateLimiter::default();
        let t = [take("ip", "192.0.2.1", 5, 1000)];
        for _ in 0..5 {
            assert_eq!(l.take(&t, 10_000 * MS), Ok(()));
        }
        assert_eq!(
            l.take(&t, 10_000 * MS),
            Err(0),
            "the sixth in the same instant"
        );
        assert_eq!(l.take(&t, 10_199 * MS), Err(0));
        assert_eq!(
            l.take(&t, 10_200 * MS),
            Ok(()),
            "one more after period/count"
        );
        assert_eq!(l.take(&t, 10_200 * MS), Err(0));
        assert_eq!(l.take(&t, 20_000 * MS), Ok(()), "recovered");
    }

    #[test]
    fn keys_and_limiters_are_counted_apart() {
        let l = RateLimiter::default();
        let a = [take("ip", "192.0.2.1", 1, 1000)];
        let b = [take("ip", "192.0.2.2", 1, 1000)];
        let c = [take("sender", "192.0.2.1", 1, 1000)];
        assert_eq!(l.take(&a, 0), Ok(()));
        assert_eq!(l.take(&a, 0), Err(0));
        assert_eq!(l.take(&b, 0), Ok(()));
        assert_eq!(l.take(&c, 0), Ok(()));
    }

    #[test]
    fn a_refusal_costs_nothing_in_the_other_limiters() {
        let l = RateLimiter::default();
        let sender = take("sender", "example.org", 2, 60_000);
        let ip = take("ip", "192.0.2.1", 1, 60_000);
        assert_eq!(l.take(&[sender.clone(), ip.clone()], 0), Ok(()));
        // The IP is exhausted: refused, and the sender's count stays at 1.
        assert_eq!(l.take(&[sender.clone(), ip.clone()], 0), Err(1));
        assert_eq!(l.take(std::slice::from_ref(&sender), 0), Ok(()));
        assert_eq!(l.take(std::slice::from_ref(&sender), 0), Err(0));
    }

    #[test]
    fn recovered_keys_are_forgotten() {
        let l = RateLimiter::default();
        for i in 0..100 {
            l.take(&[take("ip", &format!("k{i}"), 10, 1000)], MS)
                .unwrap();
        }
        assert_eq!(l.keys(), 100);
        l.take(&[take("ip", "late", 10, 1000)], 2 * SWEEP_EVERY_NS)
            .unwrap();
        assert_eq!(l.keys(), 1, "only the key seen last");
    }

    #[test]
    fn rates_above_one_per_millisecond_are_not_capped() {
        // 5,000 a second: after the burst, one every 200 µs, so five in
        // the next millisecond (at 1 ms resolution it was one).
        let l = RateLimiter::default();
        let t = [take("ip", "192.0.2.1", 5000, 1000)];
        for _ in 0..5000 {
            assert_eq!(l.take(&t, 0), Ok(()));
        }
        assert_eq!(l.take(&t, 0), Err(0), "the burst is spent");
        let mut later = 0;
        while l.take(&t, MS).is_ok() {
            later += 1;
        }
        assert_eq!(later, 5, "one per 200 µs in the millisecond after");
    }

    #[test]
    fn a_rate_below_one_per_millisecond_is_not_rounded_up() {
        // 700 a second: one every 1.43 ms, so 700 (not 1,000) in the
        // second after the burst.
        let l = RateLimiter::default();
        let t = [take("ip", "192.0.2.1", 700, 1000)];
        while l.take(&t, 0).is_ok() {}
        let mut in_a_second = 0;
        for step in 1..=1000 {
            while l.take(&t, step * MS).is_ok() {
                in_a_second += 1;
            }
        }
        assert_eq!(in_a_second, 700);
    }
}
