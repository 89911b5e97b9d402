//! What the sender-verification scenarios (SPF, DKIM, DMARC) share: a
//! DKIM key made by openssl, messages signed with it by dkimpy (an
//! implementation nobody on the project wrote), the TXT records that
//! publish SPF policies, DKIM keys and DMARC policies in the in-test DNS
//! server, and one SMTP transaction from the test's client (127.0.0.1).
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::common::*;

/// An SPF policy that authorizes the tests' client, 127.0.0.1.
pub const SPF_LOOPBACK: &str = "v=spf1 ip4:127.0.0.1 -all";
/// An SPF policy that authorizes nobody.
pub const SPF_NOBODY: &str = "v=spf1 -all";

/// An RSA key (openssl), and its DKIM key record (RFC 6376 §3.6.1).
pub struct DkimKey {
    pem: PathBuf,
    /// `v=DKIM1; k=rsa; p=...`, for `<selector>._domainkey.<domain>`.
    pub record: String,
    _dir: tempfile::TempDir,
}

impl DkimKey {
    /// A fresh 2048-bit key.
    pub fn generate() -> DkimKey {
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("dkim.pem");
        let path = pem.to_str().unwrap().to_string();
        rsa_key_file(&pem);
        // The SubjectPublicKeyInfo, base64: the PEM body without its
        // armour lines.
        let public = String::from_utf8(openssl(&["pkey", "-in", &path, "-pubout"])).unwrap();
        let p: String = public.lines().filter(|l| !l.starts_with("-----")).collect();
        DkimKey {
            pem,
            record: format!("v=DKIM1; k=rsa; p={p}"),
            _dir: dir,
        }
    }

    /// `message` with a DKIM-Signature of `domain`, selector `selector`,
    /// in front, made by dkimpy.
    pub fn sign(&self, domain: &str, selector: &str, message: &[u8]) -> Vec<u8> {
        require("python3");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("m.eml");
        std::fs::write(&file, message).unwrap();
        let script =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/dkim_sign.py");
        let out = run_bounded(
            Command::new("python3")
                .arg(script)
                .arg(&self.pem)
                .arg(domain)
                .arg(selector)
                .arg(&file),
            Duration::from_secs(60),
        );
        assert!(
            out.status.success(),
            "dkimpy could not sign: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.stdout.starts_with(b"DKIM-Signature: "));
        out.stdout
    }
}

/// The first 8 characters of the `b=` tag of the message's first
/// DKIM-Signature field (RFC 6008's `header.b`), white space removed.
pub fn signature_b(signed: &[u8]) -> String {
    let text = String::from_utf8_lossy(signed);
    let field_end = text.find("\r\n\r\n").unwrap();
    let header = &text[..field_end];
    let at = header.find(" b=").expect("a b= tag") + 3;
    header[at..]
        .chars()
        .filter(|c| !c.is_whitespace())
        .take(8)
        .collect()
}

/// A short message whose author is `from` (CRLF line ends).
pub fn message(from: &str, subject: &str) -> Vec<u8> {
    format!(
        "From: Sender <{from}>\r\nTo: user@local.test\r\nSubject: {subject}\r\n\
         Date: Wed, 2 Dec 2026 00:00:00 +0000\r\nMessage-ID: <{subject}@ferry.test>\r\n\
         \r\nHello,\r\nthis is {subject}.\r\n"
    )
    .into_bytes()
}

/// How a transaction ended.
#[derive(Debug)]
pub enum Outcome {
    /// MAIL FROM was refused with this reply.
    SenderRefused(Reply),
    /// The message was sent; this is the reply to its end.
    Answered(Reply),
}

impl Outcome {
    /// The reply to the end of the message; panics if MAIL was refused.
    pub fn answer(self) -> Reply {
        match self {
            Outcome::Answered(r) => r,
            Outcome::SenderRefused(r) => panic!("MAIL FROM was refused: {r:?}"),
        }
    }

    /// The refusal of MAIL FROM; panics if it was accepted.
    pub fn refusal(self) -> Reply {
        match self {
            Outcome::SenderRefused(r) => r,
            Outcome::Answered(r) => panic!("MAIL FROM was accepted; the message got {r:?}"),
        }
    }
}

/// One connection: EHLO `helo`, MAIL FROM `sender`, RCPT TO
/// user@local.test, DATA `body`, QUIT.
pub fn transaction(s: &Server, helo: &str, sender: &str, body: &[u8]) -> Outcome {
    let mut c = s.client();
    let r = c.cmd(&format!("EHLO {helo}"));
    assert_eq!(r.code, 250, "{r:?}");
    let outcome = in_session(&mut c, sender, body);
    c.cmd("QUIT");
    outcome
}

/// MAIL FROM `sender`, RCPT TO user@local.test and DATA `body` on an open
/// session; the session stays usable.
pub fn in_session(c: &mut Smtp, sender: &str, body: &[u8]) -> Outcome {
    let r = c.cmd(&format!("MAIL FROM:<{sender}>"));
    if r.code != 250 {
        return Outcome::SenderRefused(r);
    }
    let r = c.cmd("RCPT TO:<user@local.test>");
    assert_eq!(r.code, 250, "{r:?}");
    let r = c.cmd("DATA");
    assert_eq!(r.code, 354, "{r:?}");
    c.send_raw(&dot_stuff(body));
    c.send_raw(b".\r\n");
    Outcome::Answered(c.read())
}

/// The stored message after our Received field, as text.
pub fn after_received(s: &Server, reply: &Reply) -> String {
    let stored = s.contents(&queued_id(reply));
    String::from_utf8(strip_received(&stored).to_vec()).unwrap()
}

/// Our Authentication-Results field (the one right after our Received
/// field), as stored, or `None` when the message has none there.
pub fn our_results(after_received: &str) -> Option<String> {
    if !after_received.starts_with("Authentication-Results: mx.ferry.test;") {
        return None;
    }
    let mut end = after_received.find("\r\n").unwrap() + 2;
    while after_received[end..].starts_with('\t') || after_received[end..].starts_with(' ') {
        end += after_received[end..].find("\r\n").unwrap() + 2;
    }
    Some(after_received[..end].to_string())
}

/// A `[resolver]` section whose server is not there (nothing listens on
/// its port): every lookup fails.
pub fn resolver_down() -> String {
    format!(
        "[resolver]\ntype = \"custom\"\ncustom = [\"udp://127.0.0.1:{}\"]\n",
        free_port()
    )
}
