//! MTA-STS (RFC 8461) as pure functions: the `_mta-sts` TXT record (§3.1),
//! the policy file (§3.2), MX host patterns (§4.1) and what a cached policy
//! is worth when the record changes or cannot be read (§5.1). The lookups
//! and the HTTPS fetch are in [`crate::mta_sts`].

use std::time::Duration;

/// The longest `max_age` a policy may give (§3.2: 31557600 seconds, a
/// year); longer values are clamped.
pub const MAX_AGE_LIMIT: u64 = 31_557_600;

/// The largest policy file read (§3.3 suggests senders limit it; 64 KiB is
/// far more than any real policy needs).
pub const MAX_POLICY_BYTES: usize = 64 * 1024;

/// What a domain's policy asks of senders (§3.2 `mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Deliver only to listed MX hosts over TLS that verifies.
    Enforce = 0,
    /// Deliver as usual; failures would be reported (TLSRPT, not done).
    Testing = 1,
    /// The domain has withdrawn its policy.
    None = 2,
}

impl Mode {
    /// The policy file's spelling, for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Testing => "testing",
            Mode::None => "none",
        }
    }
}

/// A parsed policy file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// `mode`.
    pub mode: Mode,
    /// `max_age`, clamped to [`MAX_AGE_LIMIT`].
    pub max_age: Duration,
    /// `mx` patterns, lower-cased, without a trailing dot: `mx.example.com`
    /// or `*.example.com`.
    pub mx: Vec<String>,
}

/// Why a TXT record or a policy file was not usable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StsError {
    /// No `v=STSv1` record, or more than one (§3.1: then the domain has no
    /// policy available).
    #[error("{0}")]
    Record(String),
    /// The policy file breaks §3.2.
    #[error("policy: {0}")]
    Policy(String),
}

/// The policy id from the TXT records at `_mta-sts.<domain>` (§3.1).
/// Records that do not begin with `v=STSv1;` are discarded; exactly one
/// must remain, with an `id` of 1 to 32 letters and digits. Each item of
/// `records` is one record, its character-strings already concatenated.
pub fn record_id(records: &[String]) -> Result<String, StsError> {
    let sts: Vec<&String> = records
        .iter()
        .filter(|r| {
            let r = r.trim_start();
            r.strip_prefix("v=STSv1")
                .is_some_and(|rest| rest.trim_start().starts_with(';'))
        })
        .collect();
    let record = match sts.as_slice() {
        [] => return Err(StsError::Record("no v=STSv1 record".into())),
        [one] => one,
        _ => {
            return Err(StsError::Record(format!(
                "{} v=STSv1 records (exactly one is allowed)",
                sts.len()
            )));
        }
    };
    let mut id = None;
    for field in record.split(';').skip(1) {
        let field = field.trim();
        if field.is_empty() {
            continue;
        }
        let Some((k, v)) = field.split_once('=') else {
            return Err(StsError::Record(format!("malformed field '{field}'")));
        };
        if k.trim() == "id" {
            id = Some(v.trim().to_string());
        }
    }
    match id {
        Some(id)
            if (1..=32).contains(&id.len()) && id.chars().all(|c| c.is_ascii_alphanumeric()) =>
        {
            Ok(id)
        }
        Some(id) => Err(StsError::Record(format!("invalid id '{id}'"))),
        None => Err(StsError::Record("no id".into())),
    }
}

/// The most `mx` patterns a policy may list; real policies list a handful,
/// and each is copied into failure reasons and kept in the cache.
pub const MAX_MX_PATTERNS: usize = 64;

/// Parses a policy file (§3.2): `key: value` lines ending in CRLF (LF
/// accepted), `version: STSv1`, `mode`, `max_age`, and at least one `mx`
/// unless the mode is `none`. Unknown keys are ignored, as the grammar's
/// extension fields allow; of a field other than `mx` given twice, the
/// first counts (§3.2). At most [`MAX_MX_PATTERNS`] patterns.
pub fn parse_policy(text: &str) -> Result<Policy, StsError> {
    let bad = |m: String| StsError::Policy(m);
    let mut version = None;
    let mut mode = None;
    let mut max_age = None;
    let mut mx = Vec::new();
    let mut seen: Vec<&str> = Vec::new();
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() {
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            return Err(bad(format!("line without ':': '{}'", clip(line))));
        };
        let (key, value) = (key.trim(), value.trim());
        match key {
            "version" | "mode" | "max_age" if seen.contains(&key) => continue,
            _ => {}
        }
        seen.push(key);
        match key {
            "version" => version = Some(value.to_string()),
            "mode" => {
                mode = Some(match value {
                    "enforce" => Mode::Enforce,
                    "testing" => Mode::Testing,
                    "none" => Mode::None,
                    other => return Err(bad(format!("unknown mode '{}'", clip(other)))),
                })
            }
            "max_age" => {
                if value.is_empty()
                    || value.len() > 10
                    || !value.bytes().all(|b| b.is_ascii_digit())
                {
                    return Err(bad(format!("invalid max_age '{}'", clip(value))));
                }
                let secs: u64 = value.parse().map_err(|_| bad("invalid max_age".into()))?;
                max_age = Some(Duration::from_secs(secs.min(MAX_AGE_LIMIT)));
            }
            "mx" => {
                let p = value.trim_end_matches('.').to_ascii_lowercase();
                if !valid_pattern(&p) {
                    return Err(bad(format!("invalid mx pattern '{}'", clip(value))));
                }
                if mx.len() == MAX_MX_PATTERNS {
                    return Err(bad(format!("more than {MAX_MX_PATTERNS} mx patterns")));
                }
                mx.push(p);
            }
            _ => {}
        }
    }
    if version.as_deref() != Some("STSv1") {
        return Err(bad("version is not STSv1".into()));
    }
    let mode = mode.ok_or_else(|| bad("no mode".into()))?;
    let max_age = max_age.ok_or_else(|| bad("no max_age".into()))?;
    if mx.is_empty() && mode != Mode::None {
        return Err(bad("no mx".into()));
    }
    Ok(Policy { mode, max_age, mx })
}

/// A host name, or `*.` followed by one (§3.2's `mx` value).
fn valid_pattern(p: &str) -> bool {
    let host = p.strip_prefix("*.").unwrap_or(p);
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

fn clip(s: &str) -> String {
    s.chars().take(80).collect()
}

impl Policy {
    /// Whether MX host `host` is one the policy lists (§4.1): equal to a
    /// pattern, or, for `*.example.com`, `example.com` with exactly one
    /// more label on the left. Case and a trailing dot do not matter.
    pub fn matches(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.mx.iter().any(|p| match p.strip_prefix("*.") {
            Some(suffix) => host
                .split_once('.')
                .is_some_and(|(first, rest)| !first.is_empty() && rest == suffix),
            None => *p == host,
        })
    }
}

/// What to do with a domain's cached policy given what the TXT lookup said
/// (§5.1): the policy is fetched when the record names an id the cache
/// does not hold; a cached policy still within its `max_age` is used when
/// the record is the same, cannot be read, or the fetch fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Use the cached policy as it is.
    UseCached,
    /// Fetch the policy (and fall back on the cached one if that fails).
    Fetch,
    /// No policy is available.
    NoPolicy,
}

/// The decision of §5.1, from the TXT lookup's result (the id, or `None`
/// when there is no usable record or the lookup failed) and the cached
/// policy's id (`None` when nothing unexpired is cached).
pub fn next_step(record: Option<&str>, cached: Option<&str>) -> Step {
    match (record, cached) {
        (Some(r), Some(c)) if r == c => Step::UseCached,
        (Some(_), _) => Step::Fetch,
        (None, Some(_)) => Step::UseCached,
        (None, None) => Step::NoPolicy,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recs(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn record_ids() {
        assert_eq!(
            record_id(&recs(&["v=STSv1; id=20160831085700Z;"])).unwrap(),
            "20160831085700Z"
        );
        assert_eq!(record_id(&recs(&["v=STSv1;id=abc"])).unwrap(), "abc");
        // Other records are discarded (§3.1), e.g. SPF at the same name.
        assert_eq!(
            record_id(&recs(&["v=spf1 -all", "v=STSv1; id=x1; ext=y"])).unwrap(),
            "x1"
        );
        for bad in [
            &["v=spf1 -all"][..],
            &["v=STSv1; id=a;", "v=STSv1; id=b;"],
            &["v=STSv1; id=;"],
            &["v=STSv1; id=has-dash;"],
            &["v=STSv1; id=123456789012345678901234567890123;"],
            &["v=STSv1;"],
            &["v=STSv10; id=a;"],
            &["v=STSv1; junk"],
        ] {
            assert!(record_id(&recs(bad)).is_err(), "{bad:?}");
        }
    }

    const RFC_EXAMPLE: &str = "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\nmx: backupmx.example.com\r\nmax_age: 604800\r\n";

    #[test]
    fn the_rfc_example_policy() {
        let p = parse_policy(RFC_EXAMPLE).unwrap();
        assert_eq!(p.mode, Mode::Enforce);
        assert_eq!(p.max_age, Duration::from_secs(604_800));
        assert_eq!(
            p.mx,
            ["mail.example.com", "*.example.net", "backupmx.example.com"]
        );
        // LF line ends and unknown keys are accepted.
        let p2 = parse_policy(
            &RFC_EXAMPLE
                .replace("\r\n", "\n")
                .replace("max_age", "ext: 1\nmax_age"),
        )
        .unwrap();
        assert_eq!(p, p2);
    }

    #[test]
    fn policies_that_break_the_grammar() {
        for (text, why) in [
            ("mode: enforce\nmx: a.b\nmax_age: 1\n", "version"),
            (
                "version: STSv2\nmode: enforce\nmx: a.b\nmax_age: 1\n",
                "version",
            ),
            ("version: STSv1\nmx: a.b\nmax_age: 1\n", "no mode"),
            (
                "version: STSv1\nmode: strict\nmx: a.b\nmax_age: 1\n",
                "mode",
            ),
            ("version: STSv1\nmode: enforce\nmax_age: 1\n", "no mx"),
            ("version: STSv1\nmode: enforce\nmx: a.b\n", "no max_age"),
            (
                "version: STSv1\nmode: enforce\nmx: a.b\nmax_age: -1\n",
                "max_age",
            ),
            (
                "version: STSv1\nmode: enforce\nmx: a..b\nmax_age: 1\n",
                "pattern",
            ),
            (
                "version: STSv1\nmode: enforce\nmx: a.*.b\nmax_age: 1\n",
                "pattern",
            ),
            ("<html>not a policy</html>\n", "':'"),
        ] {
            let e = parse_policy(text).unwrap_err().to_string();
            assert!(e.contains(why), "{text:?}: {e}");
        }
        // Of a field given twice, the first counts (§3.2); mx adds up.
        let p = parse_policy("version: STSv1\nmode: enforce\nmode: testing\nmax_age: 5\nmax_age: x\nmx: a.b\nmx: c.d\n")
            .unwrap();
        assert_eq!(
            (p.mode, p.max_age.as_secs(), p.mx.len()),
            (Mode::Enforce, 5, 2)
        );
        let many: String = (0..=MAX_MX_PATTERNS)
            .map(|i| format!("mx: m{i}.test\n"))
            .collect();
        let e = parse_policy(&format!(
            "version: STSv1\nmode: enforce\nmax_age: 1\n{many}"
        ))
        .unwrap_err();
        assert!(e.to_string().contains("more than 64"), "{e}");
        // mode none needs no mx: it is how a domain withdraws its policy.
        let p = parse_policy("version: STSv1\nmode: none\nmax_age: 86400\n").unwrap();
        assert_eq!(p.mode, Mode::None);
        // max_age beyond a year is clamped.
        let p = parse_policy("version: STSv1\nmode: testing\nmx: a.b\nmax_age: 99999999999\n");
        assert!(p.is_err(), "over 10 digits is refused");
        let p =
            parse_policy("version: STSv1\nmode: testing\nmx: a.b\nmax_age: 9999999999\n").unwrap();
        assert_eq!(p.max_age, Duration::from_secs(MAX_AGE_LIMIT));
    }

    #[test]
    fn mx_patterns() {
        let p = parse_policy(RFC_EXAMPLE).unwrap();
        assert!(p.matches("mail.example.com"));
        assert!(p.matches("MAIL.Example.COM."));
        assert!(p.matches("mx1.example.net"));
        // The wildcard stands for exactly one label (§4.1).
        assert!(!p.matches("example.net"));
        assert!(!p.matches("a.mx1.example.net"));
        assert!(!p.matches("evil-example.com"));
        assert!(!p.matches("mail.example.com.evil.test"));
        assert!(!p.matches("xmail.example.com"));
    }

    #[test]
    fn cache_steps() {
        assert_eq!(next_step(Some("a"), Some("a")), Step::UseCached);
        assert_eq!(next_step(Some("b"), Some("a")), Step::Fetch);
        assert_eq!(next_step(Some("a"), None), Step::Fetch);
        // The record is gone or unreadable: an unexpired policy still
        // holds, so an attacker who blocks the DNS cannot turn it off.
        assert_eq!(next_step(None, Some("a")), Step::UseCached);
        assert_eq!(next_step(None, None), Step::NoPolicy);
    }
}
