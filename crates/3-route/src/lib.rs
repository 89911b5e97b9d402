//! Route: the mail queue switch. Decides, per recipient, which virtual queue an
//! entry goes to and with what priority weight.
//!
//! Routing is a pure function of the envelope, the recipient, the message
//! headers and the configuration: no I/O, no clock reads, no state. That keeps
//! it cheap on the accept path and lets it be tested with tables.

use ferrymail_config::expr::{Expr, Value, Var, Variables};
pub use ferrymail_spool::Routing;
use ferrymail_spool::{EntryKey, Envelope, QueueEntry, UnixMillis};

/// The weight one MT-PRIORITY step is worth (RFC 6710 §3: -9..=9). Large enough
/// that an operator's `queue.priority` adjustments (small integers) order mail
/// within one MT-PRIORITY level rather than across levels.
pub const MT_PRIORITY_STEP: i32 = 1000;

/// The queue switch, built once from the configuration.
#[derive(Clone, Debug)]
pub struct Router {
    /// `queue.strategy.queue`: the virtual queue name.
    pub queue: Expr,
    /// `queue.strategy.schedule`: the schedule id.
    pub schedule: Expr,
    /// `queue.strategy.route`: the route id.
    pub route: Expr,
    /// `queue.priority`: an optional weight adjustment.
    pub priority: Option<Expr>,
}

impl Router {
    /// The router of a loaded configuration.
    pub fn from_config(q: &ferrymail_config::Queue) -> Self {
        Router {
            queue: q.strategy.queue.clone(),
            schedule: q.strategy.schedule.clone(),
            route: q.strategy.route.clone(),
            priority: q.priority.clone(),
        }
    }
}

/// The variables routing expressions see for one recipient.
pub struct RouteVars<'a> {
    /// The message.
    pub envelope: &'a Envelope,
    /// Index of the recipient in the envelope.
    pub rcpt: usize,
    /// The message contents (only the header section is read).
    pub contents: &'a [u8],
    /// The port the client connected to (`local_port`), so that mail from
    /// a submission port can take its own queue or route; `None` for mail
    /// Ferrymail made itself (DSNs).
    pub local_port: Option<u16>,
    /// The virtual queue already chosen for this recipient (`queue`), so
    /// that the schedule, route and priority can be decided per queue;
    /// `None` while the queue expression itself is evaluated.
    pub queue: Option<&'a str>,
}

impl Variables for RouteVars<'_> {
    fn var(&self, v: Var) -> Value {
        let env = self.envelope;
        let rcpt = env
            .recipients
            .get(self.rcpt)
            .map(|r| r.address.as_str())
            .unwrap_or("");
        let domain = |a: &str| ferrymail_spool::domain_of(a).unwrap_or_default();
        match v {
            Var::Sender => Value::Str(ferrymail_spool::address_for_expressions(&env.sender)),
            Var::SenderDomain => Value::Str(domain(&env.sender)),
            Var::Rcpt => Value::Str(ferrymail_spool::address_for_expressions(rcpt)),
            Var::RcptDomain => Value::Str(domain(rcpt)),
            Var::RemoteIp => env
                .remote_ip
                .map(|ip| Value::Str(ip.to_string()))
                .unwrap_or(Value::Null),
            Var::AuthenticatedAs => env
                .authenticated_as
                .clone()
                .map(Value::Str)
                .unwrap_or(Value::Null),
            Var::HeloDomain => env.helo.clone().map(Value::Str).unwrap_or(Value::Null),
            Var::Priority => Value::Int(env.mt_priority as i64),
            Var::Size => Value::Int(env.size as i64),
            Var::Source => Value::Str(env.source.as_str().to_string()),
            Var::LocalPort => self
                .local_port
                .map(|p| Value::Int(i64::from(p)))
                .unwrap_or(Value::Null),
            Var::Queue => self
                .queue
                .map(|q| Value::Str(q.to_string()))
                .unwrap_or(Value::Null),
            _ => Value::Null,
        }
    }

    fn header(&self, name: &str) -> Option<String> {
        header_value(self.contents, name)
    }
}

/// The first value of header `name` (case-insensitive) in the header section of
/// `contents`, unfolded and trimmed. Stops at the first empty line.
pub fn header_value(contents: &[u8], name: &str) -> Option<String> {
    let mut rest = contents;
    let mut found: Option<Vec<u8>> = None;
    while !rest.is_empty() {
        let end = memchr::memchr(b'\n', rest)
            .map(|i| i + 1)
            .unwrap_or(rest.len());
        let line = &rest[..end];
        rest = &rest[end..];
        let trimmed = line.strip_suffix(b"\n").unwrap_or(line);
        let trimmed = trimmed.strip_suffix(b"\r").unwrap_or(trimmed);
        if trimmed.is_empty() {
            break;
        }
        let continuation = matches!(trimmed[0], b' ' | b'\t');
        match (&mut found, continuation) {
            (Some(v), true) => v.extend_from_slice(trimmed),
            (Some(_), false) => break,
            (None, false) => {
                if let Some(colon) = memchr::memchr(b':', trimmed)
                    && trimmed[..colon].eq_ignore_ascii_case(name.as_bytes())
                {
                    found = Some(trimmed[colon + 1..].to_vec());
                }
            }
            (None, true) => {}
        }
    }
    found.map(|v| String::from_utf8_lossy(&v).trim().to_string())
}

impl Router {
    /// Routes one recipient: first its virtual queue, then, with `queue`
    /// bound to that choice, its schedule, route and priority, so that each
    /// queue can have its own (`if queue == 'bulk' then 'smarthost'`).
    pub fn route(&self, vars: &RouteVars<'_>) -> Routing {
        let pick = |e: &Expr, vars: &RouteVars<'_>, fallback: &str| {
            e.eval_string(vars)
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| fallback.to_string())
        };
        let queue = pick(
            &self.queue,
            &RouteVars {
                queue: None,
                ..*vars
            },
            ferrymail_config::DEFAULT_QUEUE,
        );
        let vars = &RouteVars {
            queue: Some(&queue),
            ..*vars
        };
        let schedule = pick(&self.schedule, vars, ferrymail_config::DEFAULT_SCHEDULE);
        let route = pick(&self.route, vars, ferrymail_config::MX_ROUTE);
        let adjust = self
            .priority
            .as_ref()
            .and_then(|p| p.eval_int(vars))
            .unwrap_or(0)
            .clamp(-(MT_PRIORITY_STEP as i64 - 1), MT_PRIORITY_STEP as i64 - 1)
            as i32;
        let weight = vars.envelope.mt_priority as i32 * MT_PRIORITY_STEP + adjust;
        Routing {
            queue,
            schedule,
            route,
            weight,
        }
    }

    /// Decides a queued recipient's schedule, route and priority again,
    /// its virtual queue staying `queue` (`queue requeue`, after the
    /// configuration changed). The queue stays because it was decided at
    /// acceptance from facts of the session that are gone: `local_port`
    /// reads Null here.
    pub fn reroute(&self, vars: &RouteVars<'_>, queue: &str) -> Routing {
        let vars = RouteVars {
            queue: Some(queue),
            ..*vars
        };
        let pick = |e: &Expr, fallback: &str| {
            e.eval_string(&vars)
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| fallback.to_string())
        };
        let adjust = self
            .priority
            .as_ref()
            .and_then(|p| p.eval_int(&vars))
            .unwrap_or(0)
            .clamp(-(MT_PRIORITY_STEP as i64 - 1), MT_PRIORITY_STEP as i64 - 1)
            as i32;
        Routing {
            queue: queue.to_string(),
            schedule: pick(&self.schedule, ferrymail_config::DEFAULT_SCHEDULE),
            route: pick(&self.route, ferrymail_config::MX_ROUTE),
            weight: vars.envelope.mt_priority as i32 * MT_PRIORITY_STEP + adjust,
        }
    }

    /// Queue entries for every recipient of a newly accepted message, all in
    /// the pending lane and due at `now`. `local_port` is the listener's
    /// port for mail received over SMTP.
    pub fn entries(
        &self,
        envelope: &Envelope,
        contents: &[u8],
        local_port: Option<u16>,
        now: UnixMillis,
    ) -> Vec<QueueEntry> {
        (0..envelope.recipients.len())
            .map(|i| {
                let r = self.route(&RouteVars {
                    envelope,
                    rcpt: i,
                    contents,
                    local_port,
                    queue: None,
                });
                QueueEntry::new(
                    EntryKey {
                        message: envelope.id,
                        rcpt: i as u32,
                    },
                    r,
                    now,
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrymail_spool::conformance::sample_envelope;

    fn router(queue: &str, priority: Option<&str>) -> Router {
        Router {
            queue: Expr::parse(queue).unwrap(),
            schedule: Expr::parse("'default'").unwrap(),
            route: Expr::parse("'mx'").unwrap(),
            priority: priority.map(|p| Expr::parse(p).unwrap()),
        }
    }

    const MSG: &[u8] = b"Received: x\r\nList-Id: <news.example.org>\r\nSubject: a\r\n folded\r\n\r\nList-Id: body\r\n";

    #[test]
    fn header_lookup() {
        assert_eq!(
            header_value(MSG, "list-id").as_deref(),
            Some("<news.example.org>")
        );
        assert_eq!(header_value(MSG, "Subject").as_deref(), Some("a folded"));
        assert_eq!(header_value(MSG, "X-Missing"), None);
        assert_eq!(header_value(b"\r\nList-Id: x\r\n", "List-Id"), None);
    }

    #[test]
    fn routing_table() {
        let env = sample_envelope(1, 3); // rcpt{i}@dest{i%3}.example, MT-PRIORITY -3
        let cases: &[(&str, Option<&str>, usize, &str, i32)] = &[
            ("'default'", None, 0, "default", -3000),
            ("'dom-' + rcpt_domain", None, 1, "dom-dest1.example", -3000),
            (
                "'l' + header('List-Id')",
                None,
                0,
                "l<news.example.org>",
                -3000,
            ),
            ("''", None, 0, "default", -3000),
            ("'default'", Some("size / 100"), 0, "default", -2988),
            ("'default'", Some("99999"), 0, "default", -3000 + 999),
        ];
        for (q, p, rcpt, want_q, want_w) in cases {
            let r = router(q, *p).route(&RouteVars {
                envelope: &env,
                rcpt: *rcpt,
                contents: MSG,
                local_port: None,
                queue: None,
            });
            assert_eq!(
                (r.queue.as_str(), r.weight),
                (*want_q, *want_w),
                "{q} / {p:?}"
            );
        }
    }

    /// `rcpt` and `sender` have their domain lower-cased, their local
    /// part as given: a rule written in lower case matches however the
    /// client wrote the domain.
    #[test]
    fn addresses_match_whatever_the_case_of_their_domain() {
        let mut env = sample_envelope(1, 1);
        env.recipients[0].address = "Abuse@Example.ORG".into();
        env.sender = "Ops@Sender.Example".into();
        let route = |q: &str| {
            router(q, None)
                .route(&RouteVars {
                    envelope: &env,
                    rcpt: 0,
                    contents: MSG,
                    local_port: None,
                    queue: None,
                })
                .queue
        };
        assert_eq!(route("'q-' + rcpt"), "q-Abuse@example.org");
        assert_eq!(route("'q-' + sender"), "q-Ops@sender.example");
    }

    #[test]
    fn route_and_schedule_see_the_chosen_queue_and_the_port() {
        // Submission mail can take its own queue (`local_port`), and each
        // queue its own schedule, route and priority (`queue`).
        let env = sample_envelope(7, 2);
        let r = Router {
            queue: Expr::parse("'port' + local_port").unwrap(),
            schedule: Expr::parse("'s-' + queue").unwrap(),
            route: Expr::parse("'r-' + queue").unwrap(),
            priority: Some(Expr::parse("local_port - 20").unwrap()),
        };
        let sub = r.entries(&env, MSG, Some(587), 1);
        let smtp = r.entries(&env, MSG, Some(25), 1);
        let dsn = r.entries(&env, MSG, None, 1);
        for (e, queue, schedule, route) in [
            (&sub[0], "port587", "s-port587", "r-port587"),
            (&smtp[1], "port25", "s-port25", "r-port25"),
            (&dsn[0], "default", "s-default", "r-default"),
        ] {
            assert_eq!(
                (e.queue.as_str(), e.schedule.as_str(), e.route.as_str()),
                (queue, schedule, route)
            );
        }
        assert_eq!(sub[0].weight - smtp[0].weight, 587 - 25);
    }

    #[test]
    fn entries_cover_every_recipient() {
        let env = sample_envelope(7, 4);
        let e = router("'q'", None).entries(&env, MSG, None, 42);
        assert_eq!(e.len(), 4);
        assert!(
            e.iter()
                .enumerate()
                .all(|(i, x)| x.key.rcpt == i as u32 && x.due == 42 && x.queue == "q")
        );
    }
}
