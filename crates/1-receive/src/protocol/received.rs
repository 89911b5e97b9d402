//! The Received: trace header every SMTP server prepends (RFC 5321 §4.4), and the
//! RFC 5322 §3.3 date it ends with.

use std::fmt::Write;
use std::net::IpAddr;

use crate::protocol::dialect::Dialect;

/// What the Received header records about one transaction.
pub struct Trace<'a> {
    /// EHLO/HELO argument.
    pub helo: &'a str,
    /// Client address.
    pub remote_ip: IpAddr,
    /// Our host name.
    pub hostname: &'a str,
    /// RFC 3848 protocol type: SMTP, ESMTP, ESMTPS, ESMTPA, ESMTPSA, UTF8SMTP...
    pub with: &'a str,
    /// TLS version and cipher, when TLS was in use (RFC 8314 §4.3 suggests it).
    pub tls: Option<&'a str>,
    /// Our queue id.
    pub id: &'a str,
    /// The recipient, named only when there is exactly one (privacy, RFC 5321 §7.2).
    pub single_rcpt: Option<&'a str>,
    /// Unix seconds.
    pub time: u64,
}

/// Formats the header, folded, ending with CRLF.
pub fn received_header(t: &Trace<'_>) -> String {
    let mut h = String::with_capacity(200);
    let ip = match t.remote_ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("IPv6:{v6}"),
    };
    let helo: String = t
        .helo
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect();
    let _ = write!(
        h,
        "Received: from {helo} ([{ip}])\r\n\tby {} (Ferrymail)",
        t.hostname
    );
    if let Some(tls) = t.tls {
        let _ = write!(h, "\r\n\t({tls})");
    }
    let _ = write!(h, " with {} id {}", t.with, t.id);
    if let Some(rcpt) = t.single_rcpt {
        let _ = write!(h, "\r\n\tfor <{rcpt}>");
    }
    let _ = write!(h, ";\r\n\t{}\r\n", rfc5322_date(t.time));
    h
}

/// The RFC 3848 protocol type of the `with` clause: what the client spoke,
/// and whether it used STARTTLS (S) and AUTH (A). SMTPUTF8 mail has the
/// UTF8 types of RFC 6531 §3.7.3 (registered in its IANA table for LMTP
/// too). `extended` is false only after HELO; LHLO is always extended.
pub fn with_type(
    dialect: Dialect,
    smtputf8: bool,
    extended: bool,
    tls: bool,
    authenticated: bool,
) -> &'static str {
    match (dialect, smtputf8, extended, tls, authenticated) {
        (Dialect::Smtp, true, _, false, false) => "UTF8SMTP",
        (Dialect::Smtp, true, _, false, true) => "UTF8SMTPA",
        (Dialect::Smtp, true, _, true, false) => "UTF8SMTPS",
        (Dialect::Smtp, true, _, true, true) => "UTF8SMTPSA",
        (Dialect::Smtp, false, true, false, false) => "ESMTP",
        (Dialect::Smtp, false, true, false, true) => "ESMTPA",
        (Dialect::Smtp, false, true, true, false) => "ESMTPS",
        (Dialect::Smtp, false, true, true, true) => "ESMTPSA",
        (Dialect::Smtp, false, false, _, _) => "SMTP",
        (Dialect::Lmtp, true, _, false, false) => "UTF8LMTP",
        (Dialect::Lmtp, true, _, false, true) => "UTF8LMTPA",
        (Dialect::Lmtp, true, _, true, false) => "UTF8LMTPS",
        (Dialect::Lmtp, true, _, true, true) => "UTF8LMTPSA",
        (Dialect::Lmtp, false, _, false, false) => "LMTP",
        (Dialect::Lmtp, false, _, false, true) => "LMTPA",
        (Dialect::Lmtp, false, _, true, false) => "LMTPS",
        (Dialect::Lmtp, false, _, true, true) => "LMTPSA",
    }
}

/// Formats Unix seconds as an RFC 5322 §3.3 date-time in UTC, e.g.
/// `Wed, 25 Nov 2026 13:00:00 +0000`.
pub fn rfc5322_date(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    let (y, m, d) = civil_from_days(days);
    // 1970-01-01 was a Thursday.
    let wd = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days.rem_euclid(7)) as usize];
    let mon = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ][(m - 1) as usize];
    format!(
        "{wd}, {d} {mon} {y} {:02}:{:02}:{:02} +0000",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Counts the `Received:` fields in the header section of `message` (up to
/// the first empty line). RFC 5321 §6.3: a message that has passed through too
/// many relays is looping and must be refused rather than relayed again.
pub fn count_received(message: &[u8]) -> usize {
    let mut n = 0;
    let mut rest = message;
    while !rest.is_empty() {
        let end = memchr::memchr(b'\n', rest).map_or(rest.len(), |i| i + 1);
        let line = &rest[..end];
        rest = &rest[end..];
        if line == b"\r\n" || line == b"\n" {
            break;
        }
        if line.len() >= 9 && line[..9].eq_ignore_ascii_case(b"received:") {
            n += 1;
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn received_fields_are_counted_in_the_header_section_only() {
        let m = b"Received: a\r\n\tcontinued\r\nRECEIVED: b\r\nSubject: x\r\nreceived:c\r\n\r\nReceived: body\r\n";
        assert_eq!(count_received(m), 3);
        assert_eq!(count_received(b""), 0);
        assert_eq!(count_received(b"\r\nReceived: x\r\n"), 0);
    }

    #[test]
    fn with_types_of_rfc_3848_and_rfc_6531() {
        use Dialect::*;
        let table = [
            (Smtp, false, false, false, false, "SMTP"),
            (Smtp, false, true, false, false, "ESMTP"),
            (Smtp, false, true, true, false, "ESMTPS"),
            (Smtp, false, true, false, true, "ESMTPA"),
            (Smtp, false, true, true, true, "ESMTPSA"),
            (Smtp, true, true, false, false, "UTF8SMTP"),
            (Smtp, true, true, true, true, "UTF8SMTPSA"),
            (Lmtp, false, true, false, false, "LMTP"),
            (Lmtp, false, true, true, false, "LMTPS"),
            (Lmtp, false, true, false, true, "LMTPA"),
            (Lmtp, false, true, true, true, "LMTPSA"),
            (Lmtp, true, true, false, false, "UTF8LMTP"),
            (Lmtp, true, true, true, false, "UTF8LMTPS"),
            (Lmtp, true, true, false, true, "UTF8LMTPA"),
            (Lmtp, true, true, true, true, "UTF8LMTPSA"),
        ];
        for (d, utf8, ext, tls, auth, want) in table {
            assert_eq!(
                with_type(d, utf8, ext, tls, auth),
                want,
                "{d:?} utf8={utf8} extended={ext} tls={tls} auth={auth}"
            );
        }
    }

    #[test]
    fn dates() {
        assert_eq!(rfc5322_date(0), "Thu, 1 Jan 1970 00:00:00 +0000");
        assert_eq!(
            rfc5322_date(1_795_611_600),
            "Wed, 25 Nov 2026 13:00:00 +0000"
        );
        assert_eq!(rfc5322_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 +0000");
    }

    #[test]
    fn header_shape() {
        let h = received_header(&Trace {
            helo: "client.example",
            remote_ip: "192.0.2.1".parse().unwrap(),
            hostname: "mx.example.org",
            with: "ESMTPS",
            tls: Some("TLSv1.3"),
            id: "0123456789abcdef",
            single_rcpt: Some("a@b.example"),
            time: 0,
        });
        assert!(
            h.starts_with("Received: from client.example ([192.0.2.1])\r\n\tby mx.example.org")
        );
        assert!(h.contains("with ESMTPS id 0123456789abcdef"));
        assert!(h.ends_with("Thu, 1 Jan 1970 00:00:00 +0000\r\n"));
        assert!(h.lines().all(|l| l.len() < 78));
    }
}
