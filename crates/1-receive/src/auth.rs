//! SMTP AUTH (RFC 4954): the SASL mechanisms PLAIN (RFC 4616) and LOGIN,
//! and checking a name and password against a `[directory.<id>]`.
//!
//! Everything here is free of I/O: the session sends the challenges and
//! reads the responses; this module decodes them and says what they mean.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ferrymail_config::{Directory, Principal};

/// The mechanisms Ferrymail offers; the configuration's type.
pub use ferrymail_config::AuthMechanism as Mechanism;

/// smtp-proto's mechanism bit as one Ferrymail offers.
pub fn mechanism_from_proto(bit: u64) -> Option<Mechanism> {
    match bit {
        smtp_proto::AUTH_PLAIN => Some(Mechanism::Plain),
        smtp_proto::AUTH_LOGIN => Some(Mechanism::Login),
        _ => None,
    }
}

/// What a client's SASL response line was.
#[derive(Debug, PartialEq, Eq)]
pub enum Response {
    /// `*`: the client gives up (RFC 4954 §4: 501).
    Cancelled,
    /// Not base64 (RFC 4954 §4: 501 5.5.2).
    Malformed,
    /// The decoded bytes (empty for `=`, an empty initial response).
    Data(Vec<u8>),
}

/// Decodes one response line (or an initial response), CRLF removed.
pub fn decode(line: &str) -> Response {
    let line = line.trim_end_matches(['\r', '\n']);
    match line {
        "*" => Response::Cancelled,
        "=" | "" => Response::Data(Vec::new()),
        _ => match STANDARD.decode(line.trim()) {
            Ok(v) => Response::Data(v),
            Err(_) => Response::Malformed,
        },
    }
}

/// A challenge line's text: the base64 of `text` (LOGIN's prompts).
pub fn challenge(text: &str) -> String {
    STANDARD.encode(text)
}

/// The credentials a mechanism yields.
#[derive(Debug, PartialEq, Eq)]
pub struct Credentials {
    /// Who logs in (PLAIN's authcid, LOGIN's user name).
    pub name: String,
    /// The password.
    pub password: String,
}

/// Why a PLAIN message is refused before any password is checked.
#[derive(Debug, PartialEq, Eq)]
pub enum PlainError {
    /// Not three NUL-separated UTF-8 fields.
    Malformed,
    /// An authorization identity other than the authentication identity:
    /// acting as someone else is not offered (RFC 4616 §2).
    ProxyRefused,
}

/// RFC 4616 §2: `[authzid] NUL authcid NUL passwd`, all UTF-8.
pub fn plain(message: &[u8]) -> Result<Credentials, PlainError> {
    let mut parts = message.split(|&b| b == 0);
    let (Some(authz), Some(authc), Some(pass), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(PlainError::Malformed);
    };
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| PlainError::Malformed);
    let (authz, name, password) = (text(authz)?, text(authc)?, text(pass)?);
    if name.is_empty() {
        return Err(PlainError::Malformed);
    }
    if !authz.is_empty() && authz != name {
        return Err(PlainError::ProxyRefused);
    }
    Ok(Credentials { name, password })
}

/// LOGIN's fields: UTF-8 text.
pub fn login_field(data: Vec<u8>) -> Option<String> {
    String::from_utf8(data).ok()
}

/// Checks `c` against `directory`: the principal's name (exact, as
/// configured) and its secret. Returns the name logged in as.
///
/// Every name costs one secret check, a known one or not, so that a
/// response's timing does not tell which names exist: an unknown name is
/// checked against the directory's first secret, whose kind and cost are
/// the directory's (an empty secret would cost nothing and tell).
pub fn verify(directory: &Directory, c: &Credentials) -> Option<String> {
    let found = directory.principals.iter().find(|p| p.name == c.name);
    let ok = match found {
        Some(p) => secret_matches(p, &c.password),
        None => {
            if let Some(stand_in) = directory.principals.first() {
                let _ = secret_matches(stand_in, &c.password);
            }
            false
        }
    };
    ok.then(|| c.name.clone())
}

/// Secret checks (argon2 is tens of MiB and milliseconds each) that run at
/// once, node-wide: as many as there are CPUs, at least two. Without a
/// bound, a few hundred sessions each sending AUTH at the same moment held
/// hundreds of argon2 buffers and every blocking thread at once.
static CHECKS: std::sync::LazyLock<tokio::sync::Semaphore> = std::sync::LazyLock::new(|| {
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    tokio::sync::Semaphore::new(cpus.max(2))
});

/// [`verify`] off the runtime's worker threads, waiting its turn among
/// [`CHECKS`]: a burst of logins (or guesses) neither stalls every other
/// session nor takes all the memory.
pub async fn verify_in_turn(settings: Arc<crate::AuthSettings>, c: Credentials) -> Option<String> {
    let _turn = CHECKS.acquire().await.ok()?;
    tokio::task::spawn_blocking(move || verify(&settings.directory, &c))
        .await
        .unwrap_or(None)
}

/// Whether `sender` (MAIL FROM, without brackets) is one `name` of
/// `directory` may use: the null sender, one of its `email` addresses, or
/// its name when that is an address; addresses compare case-insensitively
/// (the domain is; the local part is in practice).
pub fn may_send_as(directory: &Directory, name: &str, sender: &str) -> bool {
    if sender.is_empty() {
        return true;
    }
    directory
        .principals
        .iter()
        .find(|p| p.name == name)
        .is_some_and(|p| {
            p.emails
                .iter()
                .chain(std::iter::once(&p.name))
                .any(|a| a.eq_ignore_ascii_case(sender))
        })
}

/// Failed AUTH attempts per client address, across sessions: a password
/// guesser that reconnects after every `errors.total` is still stopped.
/// After `limit` failures within `window` of the first, the address gets
/// 454 4.7.0 without its credentials being checked, until the window
/// passes. An attempt counts as a failure when it starts ([`Self::begin`])
/// and is taken back if it succeeds ([`Self::refund`]): attempts made at
/// the same moment in many sessions are counted before any of them is
/// checked, and a success takes back only its own attempt, so logging in
/// as oneself does not wipe the count of a guesser at the same address.
/// IPv6 addresses count per /64, the block one host usually has.
#[derive(Debug)]
pub struct FailureLedger {
    limit: u32,
    window: Duration,
    seen: Mutex<Seen>,
}

/// The ledger's table, and when expired entries were last swept out.
#[derive(Debug, Default)]
struct Seen {
    by_key: HashMap<IpAddr, (u32, Instant)>,
    swept: Option<Instant>,
}

/// Entries kept before expired ones are swept out.
const LEDGER_SWEEP_AT: usize = 100_000;

impl FailureLedger {
    /// A ledger that blocks after `limit` failures within `window`.
    pub fn new(limit: u32, window: Duration) -> FailureLedger {
        FailureLedger {
            limit,
            window,
            seen: Mutex::new(Seen::default()),
        }
    }

    /// The key an address counts under: IPv6 per /64 (one customer's
    /// network), IPv4 per address. The inbound rate limits count
    /// `remote_ip` the same way.
    pub fn key(ip: IpAddr) -> IpAddr {
        match ip.to_canonical() {
            IpAddr::V6(v6) => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
            v4 => v4,
        }
    }

    /// Whether `ip` is refused AUTH at `now`.
    pub fn blocked(&self, ip: IpAddr, now: Instant) -> bool {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.by_key
            .get(&Self::key(ip))
            .is_some_and(|&(n, since)| n >= self.limit && now.duration_since(since) < self.window)
    }

    /// Starts an attempt of `ip` at `now`: `false` if the address is
    /// blocked, else the attempt is counted as a failure already, in the
    /// same step, until [`Self::refund`] takes it back.
    pub fn begin(&self, ip: IpAddr, now: Instant) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        // Expired entries are swept once the table is big, at most once a
        // window: a sweep is a pass over the whole table under the lock.
        if seen.by_key.len() >= LEDGER_SWEEP_AT
            && seen
                .swept
                .is_none_or(|t| now.duration_since(t) >= self.window)
        {
            let window = self.window;
            seen.by_key
                .retain(|_, &mut (_, since)| now.duration_since(since) < window);
            seen.swept = Some(now);
        }
        let e = seen.by_key.entry(Self::key(ip)).or_insert((0, now));
        if now.duration_since(e.1) >= self.window {
            *e = (0, now);
        }
        if e.0 >= self.limit {
            return false;
        }
        e.0 += 1;
        true
    }

    /// Takes back the attempt [`Self::begin`] counted: it succeeded.
    /// Other failures of the address stay counted.
    pub fn refund(&self, ip: IpAddr) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let key = Self::key(ip);
        if let Some(e) = seen.by_key.get_mut(&key) {
            e.0 = e.0.saturating_sub(1);
            if e.0 == 0 {
                seen.by_key.remove(&key);
            }
        }
    }
}

/// A secret as configured: a crypt(3)-style hash (`$argon2id$`, `$argon2i$`,
/// `$argon2d$`, `$6$` SHA-512-crypt, `$5$` SHA-256-crypt) or, failing those
/// prefixes, the password itself (compared in constant time).
fn secret_matches(p: &Principal, password: &str) -> bool {
    let s = p.secret.as_str();
    if s.starts_with("$argon2") {
        use argon2::password_hash::{PasswordHash, PasswordVerifier};
        PasswordHash::new(s).is_ok_and(|h| {
            argon2::Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
    } else if s.starts_with("$6$") {
        sha_crypt::sha512_check(password, s).is_ok()
    } else if s.starts_with("$5$") {
        sha_crypt::sha256_check(password, s).is_ok()
    } else {
        !s.is_empty() && same_text(s.as_bytes(), password.as_bytes())
    }
}

/// Whether a plain-text secret and a password are equal, in a time that
/// tells neither where they differ nor the secret's length: their SHA-256
/// digests are compared, every byte.
fn same_text(a: &[u8], b: &[u8]) -> bool {
    use ring::digest::{SHA256, digest};
    let (a, b) = (digest(&SHA256, a), digest(&SHA256, b));
    a.as_ref()
        .iter()
        .zip(b.as_ref())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(secrets: &[(&str, &str)]) -> Directory {
        Directory {
            id: "test".into(),
            principals: secrets
                .iter()
                .map(|(n, s)| Principal {
                    name: n.to_string(),
                    secret: s.to_string(),
                    emails: Vec::new(),
                })
                .collect(),
        }
    }

    fn creds(name: &str, password: &str) -> Credentials {
        Credentials {
            name: name.into(),
            password: password.into(),
        }
    }

    #[test]
    fn plain_messages_decode_per_rfc_4616() {
        assert_eq!(plain(b"\0alice\0pw"), Ok(creds("alice", "pw")));
        assert_eq!(plain(b"alice\0alice\0pw"), Ok(creds("alice", "pw")));
        assert_eq!(plain(b"bob\0alice\0pw"), Err(PlainError::ProxyRefused));
        assert_eq!(plain(b"alice\0pw"), Err(PlainError::Malformed));
        assert_eq!(plain(b"\0\0pw"), Err(PlainError::Malformed));
        assert_eq!(plain(b"\0a\0b\0c"), Err(PlainError::Malformed));
        assert_eq!(plain(b"\0al\xffice\0pw"), Err(PlainError::Malformed));
        // The password may hold anything but NUL, spaces included.
        assert_eq!(plain(b"\0alice\0p w\xc3\xbc"), Ok(creds("alice", "p wü")));
    }

    #[test]
    fn the_ledger_blocks_an_address_for_its_window() {
        let l = FailureLedger::new(2, Duration::from_secs(60));
        let t0 = Instant::now();
        let a: IpAddr = "192.0.2.7".parse().unwrap();
        let b: IpAddr = "192.0.2.8".parse().unwrap();
        assert!(l.begin(a, t0));
        assert!(!l.blocked(a, t0), "one failure of two");
        assert!(l.begin(a, t0 + Duration::from_secs(1)));
        assert!(l.blocked(a, t0 + Duration::from_secs(2)));
        assert!(!l.begin(a, t0 + Duration::from_secs(2)), "no third try");
        assert!(!l.blocked(b, t0 + Duration::from_secs(2)), "per address");
        assert!(
            !l.blocked(a, t0 + Duration::from_secs(61)),
            "the window passed"
        );
        // After the window an attempt starts a new count.
        assert!(l.begin(a, t0 + Duration::from_secs(62)));
        assert!(!l.blocked(a, t0 + Duration::from_secs(63)));
        assert!(l.begin(a, t0 + Duration::from_secs(63)));
        assert!(l.blocked(a, t0 + Duration::from_secs(64)));
        // A login takes back its own attempt, not the others'.
        l.refund(a);
        assert!(!l.blocked(a, t0 + Duration::from_secs(64)));
        assert!(l.begin(a, t0 + Duration::from_secs(64)));
        assert!(l.blocked(a, t0 + Duration::from_secs(64)));
        // IPv6 counts per /64; IPv4-mapped addresses as IPv4.
        let v6a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let v6b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let v6c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert!(l.begin(v6a, t0) && l.begin(v6b, t0));
        assert!(l.blocked(v6a, t0) && l.blocked(v6b, t0));
        assert!(!l.blocked(v6c, t0), "another /64");
        let mapped: IpAddr = "::ffff:192.0.2.8".parse().unwrap();
        assert!(l.begin(mapped, t0) && l.begin(b, t0));
        assert!(l.blocked(b, t0));
    }

    /// Attempts that start together (many sessions, one address) are each
    /// counted when they start: no more than the limit get checked.
    #[test]
    fn simultaneous_attempts_are_counted_before_any_is_checked() {
        let l = FailureLedger::new(10, Duration::from_secs(60));
        let t0 = Instant::now();
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        let started = (0..256).filter(|_| l.begin(ip, t0)).count();
        assert_eq!(started, 10);
    }

    /// An unknown name costs a check of the directory's kind too: with an
    /// argon2 directory it takes about as long as a known name's wrong
    /// password, never the no-time-at-all of an empty secret.
    #[test]
    fn an_unknown_name_costs_a_real_check() {
        use argon2::password_hash::{PasswordHasher, SaltString};
        let salt = SaltString::encode_b64(b"saltsaltsaltsalt").unwrap();
        let hash = argon2::Argon2::default()
            .hash_password(b"secret", &salt)
            .unwrap()
            .to_string();
        let d = dir(&[("alice", &hash)]);
        let time = |name: &str| {
            let t = Instant::now();
            assert_eq!(verify(&d, &creds(name, "wrong")), None);
            t.elapsed()
        };
        // Interleaved, so that a busy machine slows both alike.
        let (mut known, mut unknown) = (Duration::ZERO, Duration::ZERO);
        for _ in 0..6 {
            known += time("alice");
            unknown += time("nobody");
        }
        assert!(
            unknown * 3 > known,
            "unknown {unknown:?} against known {known:?}"
        );
    }

    #[test]
    fn responses_decode() {
        assert_eq!(decode("*\r\n"), Response::Cancelled);
        assert_eq!(decode("=\r\n"), Response::Data(Vec::new()));
        assert_eq!(
            decode("AGFsaWNlAHB3\r\n"),
            Response::Data(b"\0alice\0pw".to_vec())
        );
        assert_eq!(decode("not base64!\r\n"), Response::Malformed);
        assert_eq!(challenge("Username:"), "VXNlcm5hbWU6");
        assert_eq!(challenge("Password:"), "UGFzc3dvcmQ6");
    }

    #[test]
    fn secrets_verify_in_every_supported_form() {
        // Made by glibc's crypt(3) (Python's `crypt.crypt("secret",
        // "$6$saltsalt$")` and `"$5$saltsalt$"`), and the argon2 crate's
        // defaults.
        let sha512 = "$6$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1";
        let sha256 = "$5$saltsalt$0IyaXrmV7.sGNS6tirgqHLqX/G.FBvgkYA.lpPdS5sA";
        let argon = {
            use argon2::password_hash::{PasswordHasher, SaltString};
            let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
            argon2::Argon2::default()
                .hash_password(b"secret", &salt)
                .unwrap()
                .to_string()
        };
        assert!(argon.starts_with("$argon2id$"));
        let d = dir(&[
            ("plain", "secret"),
            ("sha512", sha512),
            ("sha256", sha256),
            ("argon", &argon),
            ("empty", ""),
        ]);
        for name in ["plain", "sha512", "sha256", "argon"] {
            assert_eq!(
                verify(&d, &creds(name, "secret")),
                Some(name.to_string()),
                "{name}"
            );
            assert_eq!(verify(&d, &creds(name, "Secret")), None, "{name}");
            assert_eq!(verify(&d, &creds(name, "")), None, "{name}");
        }
        assert_eq!(verify(&d, &creds("nobody", "secret")), None);
        assert_eq!(verify(&d, &creds("empty", "")), None, "no empty secret");
        assert_eq!(
            verify(&d, &creds("Plain", "secret")),
            None,
            "names are exact"
        );
    }
}
