//! SMTP AUTH (RFC 4954): the SASL mechanisms PLAIN (RFC 4616) and LOGIN,
//! and checking a name and password against a `[directory.<id>]`.
//!
//! Everything here is free of I/O: the session sends the challenges and
//! reads the responses; this module decodes them and says what they mean.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
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
/// response's timing does not tell which names exist.
pub fn verify(directory: &Directory, c: &Credentials) -> Option<String> {
    let found = directory.principals.iter().find(|p| p.name == c.name);
    let ok = match found {
        Some(p) => secret_matches(p, &c.password),
        None => {
            let _ = secret_matches(&DUMMY, &c.password);
            false
        }
    };
    ok.then(|| c.name.clone())
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
/// passes; a success clears its count. IPv6 addresses count per /64, the
/// block one host usually has.
#[derive(Debug)]
pub struct FailureLedger {
    limit: u32,
    window: Duration,
    seen: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

/// Entries kept before expired ones are swept out.
const LEDGER_SWEEP_AT: usize = 100_000;

impl FailureLedger {
    /// A ledger that blocks after `limit` failures within `window`.
    pub fn new(limit: u32, window: Duration) -> FailureLedger {
        FailureLedger {
            limit,
            window,
            seen: Mutex::new(HashMap::new()),
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
        seen.get(&Self::key(ip))
            .is_some_and(|&(n, since)| n >= self.limit && now.duration_since(since) < self.window)
    }

    /// Records a failure of `ip` at `now`.
    pub fn failed(&self, ip: IpAddr, now: Instant) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= LEDGER_SWEEP_AT {
            let window = self.window;
            seen.retain(|_, &mut (_, since)| now.duration_since(since) < window);
        }
        let e = seen.entry(Self::key(ip)).or_insert((0, now));
        if now.duration_since(e.1) >= self.window {
            *e = (0, now);
        }
        e.0 = e.0.saturating_add(1);
    }

    /// Forgets `ip`'s failures (it logged in).
    pub fn succeeded(&self, ip: IpAddr) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.remove(&Self::key(ip));
    }
}

/// A principal no name matches, checked when the name is unknown.
static DUMMY: Principal = Principal {
    name: String::new(),
    secret: String::new(),
    emails: Vec::new(),
};

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
        !s.is_empty() && constant_time_eq(s.as_bytes(), password.as_bytes())
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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
        l.failed(a, t0);
        assert!(!l.blocked(a, t0), "one failure of two");
        l.failed(a, t0 + Duration::from_secs(1));
        assert!(l.blocked(a, t0 + Duration::from_secs(2)));
        assert!(!l.blocked(b, t0 + Duration::from_secs(2)), "per address");
        assert!(
            !l.blocked(a, t0 + Duration::from_secs(61)),
            "the window passed"
        );
        // After the window a failure starts a new count.
        l.failed(a, t0 + Duration::from_secs(62));
        assert!(!l.blocked(a, t0 + Duration::from_secs(63)));
        l.failed(a, t0 + Duration::from_secs(63));
        assert!(l.blocked(a, t0 + Duration::from_secs(64)));
        l.succeeded(a);
        assert!(
            !l.blocked(a, t0 + Duration::from_secs(64)),
            "a login clears it"
        );
        // IPv6 counts per /64; IPv4-mapped addresses as IPv4.
        let v6a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let v6b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let v6c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        l.failed(v6a, t0);
        l.failed(v6b, t0);
        assert!(l.blocked(v6a, t0) && l.blocked(v6b, t0));
        assert!(!l.blocked(v6c, t0), "another /64");
        let mapped: IpAddr = "::ffff:192.0.2.8".parse().unwrap();
        l.failed(mapped, t0);
        l.failed(b, t0);
        assert!(l.blocked(b, t0));
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
