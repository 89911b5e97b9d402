//! Clients that send anything at all: commands with every parameter the
//! server knows and many it does not, pipelined in one write, mutated
//! (bytes flipped, lines cut, NULs, bare LFs, 8-bit text, over-long
//! lines), DATA and BDAT bodies with wrong sizes or no end, and plain
//! noise. Whatever arrives, the server must
//!
//! * answer only with well-formed replies: `NNN` with `-` or a space, an
//!   enhanced status code of the same class when there is one, lines of at
//!   most 512 octets (RFC 5321 §4.5.3.1.5) ending in CRLF;
//! * close the connection once the client has sent everything and shut
//!   its side (no session left hanging), and keep serving new clients;
//! * never panic (nothing in its log says so);
//! * hold exactly the messages it told a client were queued: every id of a
//!   `250 ... queued as ID` is in the queue, and the queue holds nothing
//!   else.
//!
//! The sessions come from a fixed seed, so a failure names the seed of the
//! session that shows it and reruns the same way;
//! `FERRYMAIL_HOSTILE_SESSIONS=N` runs more of them and
//! `FERRYMAIL_HOSTILE_FIRST_SEED=S` others.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

const ADDRESSES: &[&str] = &[
    "a@remote.test",
    "user@local.test",
    "",
    "postmaster",
    "\"quoted > local\"@remote.test",
    "@hop1.test,@hop2.test:routed@remote.test",
    "d\u{e9}j\u{e0}@remote.test",
    "x@[127.0.0.1]",
    "x@[IPv6:::1]",
    "no-domain@",
    "@",
    "a@b@c",
    "white space@remote.test",
    "a@remote.test.",
];

const MAIL_PARAMS: &[&str] = &[
    " SIZE=100",
    " SIZE=99999999999999999999999",
    " SIZE=",
    " BODY=8BITMIME",
    " BODY=7BIT",
    " BODY=BINARYMIME",
    " SMTPUTF8",
    " RET=HDRS",
    " RET=FULL",
    " RET=FULL RET=HDRS",
    " ENVID=abc+2Bdef",
    " ENVID=+ZZ",
    " AUTH=<>",
    " MT-PRIORITY=3",
    " MT-PRIORITY=-99",
    " REQUIRETLS",
    " XUNKNOWN=1",
    " size=10",
];

const RCPT_PARAMS: &[&str] = &[
    " NOTIFY=SUCCESS,FAILURE,DELAY",
    " NOTIFY=NEVER",
    " NOTIFY=NEVER,DELAY",
    " NOTIFY=",
    " ORCPT=rfc822;a+40b.test",
    " ORCPT=utf-8;\\x{E9}t\\x{E9}@x.test",
    " ORCPT=utf-8;\u{e9}@x.test",
    " ORCPT=rfc822;+4",
    " ORCPT=x",
    " ORCPT=rfc822;a@b ORCPT=rfc822;c@d",
    " XRCPT=1",
];

const OTHER: &[&str] = &[
    "RSET",
    "NOOP",
    "NOOP hello",
    "VRFY user@local.test",
    "EXPN list",
    "HELP",
    "HELP MAIL",
    "ETRN remote.test",
    "ETRN @remote.test",
    "ETRN #queue",
    "ETRN",
    "AUTH PLAIN dGVzdAB0ZXN0AHRlc3Q=",
    "AUTH PLAIN AGFsaWNlAGFsaWNlLXB3",
    "AUTH PLAIN",
    "AGFsaWNlAGFsaWNlLXB3",
    "AUTH LOGIN YWxpY2U=",
    "YWxpY2UtcHc=",
    "AUTH PLAIN =",
    "AUTH LOGIN",
    "AUTH CRAM-MD5",
    "*",
    "DATA",
    "BDAT",
    "BDAT x",
    "BDAT 99999999999999999999 LAST",
    "MAIL",
    "RCPT",
    "MAIL FROM:",
    "RCPT TO:<>",
    "TURN",
    "XCLIENT ADDR=1.2.3.4",
    "QUIT extra",
    "",
];

/// A message body as a client might send it (contents, not yet stuffed).
fn body(rng: &mut Rng) -> Vec<u8> {
    let mut b = b"From: a@remote.test\r\nTo: user@local.test\r\nSubject: s\r\n".to_vec();
    if rng.chance(30) {
        b.extend_from_slice(b"Received: from x by y; Mon, 1 Jan 2024 00:00:00 +0000\r\n");
    }
    if rng.chance(20) {
        b.extend_from_slice(b"Authentication-Results: mx.ferry.test; spf=pass\r\n");
    }
    b.extend_from_slice(b"\r\n");
    for _ in 0..rng.below(6) {
        match rng.below(8) {
            0 => b.extend_from_slice(b".leading dot\r\n"),
            1 => b.extend_from_slice(b"bare\nLF\n"),
            2 => b.extend_from_slice("8-bit caf\u{e9}\r\n".as_bytes()),
            3 => b.extend_from_slice(b"nul\0byte\r\n"),
            4 => b.extend(std::iter::repeat_n(b'x', 2000 + rng.below(2000))),
            5 => b.extend_from_slice(b"\r\n.\n"),
            6 => {
                let n = rng.below(200);
                b.extend_from_slice(&rng.bytes(n));
            }
            _ => b.extend_from_slice(b"plain line\r\n"),
        }
    }
    b
}

/// The DATA form of `contents` (a client's dot-stuffing, or a sloppy one).
fn data_block(rng: &mut Rng, contents: &[u8]) -> Vec<u8> {
    let mut out = b"DATA\r\n".to_vec();
    let stuffed = if rng.chance(80) {
        dot_stuff(contents)
    } else {
        contents.to_vec()
    };
    out.extend_from_slice(&stuffed);
    if !stuffed.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    match rng.below(10) {
        0 => {}                                       // never ended
        1 => out.extend_from_slice(b"\n.\n"),         // the smuggling ending
        2 => out.extend_from_slice(b".\r\nDATA\r\n"), // a second DATA at once
        _ => out.extend_from_slice(b".\r\n"),
    }
    out
}

/// BDAT chunks for `contents`, with a size that is wrong now and then.
fn bdat_blocks(rng: &mut Rng, contents: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let cut = rng.below(contents.len() + 1);
    let parts = [&contents[..cut], &contents[cut..]];
    for (i, part) in parts.iter().enumerate() {
        let last = i == 1;
        let declared = match rng.below(12) {
            0 => part.len() + 1 + rng.below(50),
            1 => part.len().saturating_sub(1 + rng.below(5)),
            _ => part.len(),
        };
        let suffix = if last && rng.chance(90) { " LAST" } else { "" };
        out.extend_from_slice(format!("BDAT {declared}{suffix}\r\n").as_bytes());
        out.extend_from_slice(part);
    }
    out
}

/// Addresses a client means: most transactions use these.
const GOOD_ADDRESSES: &[&str] = &["a@remote.test", "user@local.test", "b@remote.test", ""];

/// One command line, usually well formed, now and then mutated.
fn line(rng: &mut Rng, text: String) -> Vec<u8> {
    let mut bytes = text.into_bytes();
    if rng.chance(8) && !bytes.is_empty() {
        let i = rng.below(bytes.len());
        bytes[i] = rng.next() as u8;
    }
    if rng.chance(3) {
        bytes.make_ascii_lowercase();
    }
    if rng.chance(3) {
        let cut = rng.below(bytes.len() + 1);
        bytes.truncate(cut);
    }
    let end: &[u8] = match rng.below(30) {
        0 => b"\n",
        1 => b"\r",
        2 => b"",
        _ => b"\r\n",
    };
    bytes.extend_from_slice(end);
    bytes
}

fn address(rng: &mut Rng) -> &'static str {
    if rng.chance(80) {
        rng.pick(GOOD_ADDRESSES)
    } else {
        rng.pick(ADDRESSES)
    }
}

/// Something other than the transaction's own commands: another
/// command, a greeting, noise or an over-long line.
fn interjection(rng: &mut Rng) -> Vec<u8> {
    match rng.below(4) {
        0 => {
            let g = rng.pick(&[
                "EHLO client.test",
                "HELO client.test",
                "LHLO x",
                "EHLO",
                "EHLO [127.0.0.1]",
            ]);
            line(rng, g.to_string())
        }
        1 => {
            let n = if rng.chance(30) {
                1000 + rng.below(6000)
            } else {
                rng.below(100)
            };
            let mut junk = rng.bytes(n);
            junk.extend_from_slice(b"\r\n");
            junk
        }
        _ => {
            let o = rng.pick(OTHER);
            line(rng, o.to_string())
        }
    }
}

/// A transaction: MAIL, some RCPTs and the contents, with parameters
/// drawn from everything the server knows, interjections here and there.
fn transaction(rng: &mut Rng) -> Vec<u8> {
    let mut out = Vec::new();
    let mut mail = format!("MAIL FROM:<{}>", address(rng));
    for _ in 0..rng.below(3) {
        mail.push_str(rng.pick(MAIL_PARAMS));
    }
    out.extend(line(rng, mail));
    for _ in 0..1 + rng.below(3) {
        if rng.chance(10) {
            out.extend(interjection(rng));
        }
        let mut rcpt = format!("RCPT TO:<{}>", address(rng));
        for _ in 0..rng.below(3) {
            rcpt.push_str(rng.pick(RCPT_PARAMS));
        }
        out.extend(line(rng, rcpt));
    }
    if rng.chance(10) {
        out.extend(interjection(rng));
    }
    let contents = body(rng);
    if rng.chance(60) {
        out.extend(data_block(rng, &contents));
    } else {
        out.extend(bdat_blocks(rng, &contents));
    }
    out
}

/// Everything one session sends.
fn script(rng: &mut Rng, greeting: &str) -> Vec<u8> {
    let mut input = Vec::new();
    if rng.chance(90) {
        input.extend_from_slice(format!("{greeting} client.test\r\n").as_bytes());
    }
    for _ in 0..1 + rng.below(4) {
        if rng.chance(20) {
            input.extend(interjection(rng));
        }
        input.extend(transaction(rng));
    }
    if rng.chance(50) {
        input.extend_from_slice(b"QUIT\r\n");
    }
    input
}

/// What one session sent and got back.
struct Exchange {
    seed: u64,
    replies: Vec<u8>,
}

/// Sends a whole session's bytes (pipelined, in a few writes), shuts the
/// write side, and reads replies until the server closes.
fn session(addr: SocketAddr, seed: u64, greeting: &str) -> Exchange {
    let mut rng = Rng::new(seed);
    let input = script(&mut rng, greeting);
    let stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut reader = stream.try_clone().unwrap();
    let read = std::thread::spawn(move || {
        let mut replies = Vec::new();
        let started = Instant::now();
        let mut buf = [0u8; 8192];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => replies.extend_from_slice(&buf[..n]),
                // A reset after the server closed on a client that went on
                // writing is a close too.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!(
                    "seed {seed}: no close after {:?}: {e}; replies so far: {}",
                    started.elapsed(),
                    String::from_utf8_lossy(&replies)
                ),
            }
        }
        replies
    });
    let mut writer = stream;
    let mut at = 0;
    while at < input.len() {
        let n = (1 + rng.below(input.len())).min(input.len() - at);
        // The server may close first (421, QUIT); what is left is moot.
        if writer.write_all(&input[at..at + n]).is_err() {
            break;
        }
        at += n;
    }
    let _ = writer.shutdown(Shutdown::Write);
    let replies = read.join().expect("reader thread");
    Exchange { seed, replies }
}

/// A TLS client that takes any certificate: the server's is self-signed,
/// generated at its first start, and what is tested is the session.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn tls_config() -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    Arc::new(config)
}

/// Like [`session`], inside TLS: EHLO and STARTTLS in the clear (with
/// commands pipelined after STARTTLS now and then, which the server must
/// drop, RFC 3207 §4.2), the handshake, then the generated script.
fn tls_session(addr: SocketAddr, seed: u64, config: &Arc<rustls::ClientConfig>) -> Exchange {
    let mut rng = Rng::new(seed);
    // The greeting (220 asserted), EHLO and STARTTLS with the shared client.
    let mut clear = Smtp::connect(addr);
    let mut opening = b"EHLO client.test\r\nSTARTTLS\r\n".to_vec();
    if rng.chance(30) {
        opening.extend_from_slice(b"MAIL FROM:<pipelined-in-the-clear@remote.test>\r\n");
    }
    clear.send_raw(&opening);
    let ehlo = clear.read();
    assert!(
        ehlo.lines.iter().any(|l| l.ends_with("STARTTLS")),
        "seed {seed}: {ehlo:?}"
    );
    let go = clear.read();
    assert_eq!(go.code, 220, "seed {seed}: {go:?}");
    assert!(
        clear.reader.buffer().is_empty(),
        "seed {seed}: bytes after STARTTLS's 220"
    );
    let stream = clear.writer;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();

    let name = rustls::pki_types::ServerName::try_from("mx.ferry.test").unwrap();
    let conn = rustls::ClientConnection::new(config.clone(), name).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, stream);
    let input = script(&mut rng, "EHLO");
    // The server may end the session before all of it is read (421).
    let _ = tls.write_all(&input);
    tls.conn.send_close_notify();
    let _ = tls.flush();
    let _ = tls.sock.shutdown(Shutdown::Write);
    let mut replies = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match tls.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => replies.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
                ) =>
            {
                break;
            }
            Err(e) => panic!(
                "seed {seed}: {e} after replies {}",
                String::from_utf8_lossy(&replies)
            ),
        }
    }
    Exchange { seed, replies }
}

/// Checks every reply line; returns the ids of messages said to be queued.
fn check_replies(x: &Exchange) -> BTreeSet<String> {
    let text = String::from_utf8_lossy(&x.replies);
    assert!(
        x.replies.is_empty() || x.replies.ends_with(b"\r\n"),
        "seed {}: replies end mid-line: {text:?}",
        x.seed
    );
    // LMTP says it once per recipient.
    let mut ids = BTreeSet::new();
    for line in x.replies.split_inclusive(|&b| b == b'\n') {
        let shown = String::from_utf8_lossy(line);
        assert!(
            line.ends_with(b"\r\n"),
            "seed {}: bare LF in {shown:?}",
            x.seed
        );
        assert!(
            line.len() <= 512,
            "seed {}: reply line of {} octets",
            x.seed,
            line.len()
        );
        let body = &line[..line.len() - 2];
        let well_formed = body.len() >= 3
            && (b'2'..=b'5').contains(&body[0])
            && body[1].is_ascii_digit()
            && body[2].is_ascii_digit()
            && (body.len() == 3 || body[3] == b' ' || body[3] == b'-');
        assert!(well_formed, "seed {}: malformed reply {shown:?}", x.seed);
        assert!(
            !body.contains(&0) && !body.contains(&b'\r'),
            "seed {}: control octets in {shown:?}",
            x.seed
        );
        // RFC 3463 §2: the enhanced code's class is the reply's.
        let rest = String::from_utf8_lossy(body.get(4..).unwrap_or_default()).into_owned();
        let first = rest.split(' ').next().unwrap_or("");
        let parts: Vec<&str> = first.split('.').collect();
        if parts.len() == 3 && parts.iter().all(|p| p.parse::<u16>().is_ok()) {
            assert_eq!(
                parts[0].as_bytes()[0],
                body[0],
                "seed {}: enhanced code of another class in {shown:?}",
                x.seed
            );
        }
        if body.starts_with(b"250 ") && rest.contains(" queued as ") {
            ids.insert(rest.rsplit(' ').next().unwrap().to_string());
        }
    }
    ids
}

/// Settings that make the generated sessions reach the limits soon.
const LIMITS: &str = "[session.rcpt]\nlocal-domains = [\"local.test\"]\n\
    relay = \"remote_ip == '127.0.0.1'\"\nmax-recipients = 5\n\n\
    [session.data]\nmax-message-size = 20000\n\n\
    [session]\nmax-errors = 20\n";

/// Runs the generated sessions against `addr` (greeting with `greeting`)
/// and checks the server afterwards.
/// With `tls`, every session goes through STARTTLS first.
fn run_hostile(server: &Server, addr: SocketAddr, greeting: &'static str, tls: bool) {
    let config = tls_config();
    let sessions: u64 = std::env::var("FERRYMAIL_HOSTILE_SESSIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let workers: Vec<_> = (0..4u64)
        .map(|w| {
            let config = config.clone();
            std::thread::spawn(move || {
                let mut ids = Vec::new();
                let first: u64 = std::env::var("FERRYMAIL_HOSTILE_FIRST_SEED")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let mut seed = first + w;
                while seed < first + sessions {
                    let x = if tls {
                        tls_session(addr, seed, &config)
                    } else {
                        session(addr, seed, greeting)
                    };
                    ids.extend(check_replies(&x));
                    seed += 4;
                }
                ids
            })
        })
        .collect();
    let mut said_queued = BTreeSet::new();
    for w in workers {
        for id in w.join().expect("a session failed its checks") {
            assert!(said_queued.insert(id.clone()), "id {id} given twice");
        }
    }
    eprintln!("{sessions} sessions, {} messages queued", said_queued.len());
    assert!(
        said_queued.len() >= sessions as usize / 20,
        "only {} of {sessions} sessions queued a message: the generator \
         hardly reaches the end of a transaction",
        said_queued.len()
    );

    // Still serving, start to end.
    let mut c = server.client();
    c.ehlo();
    let r = c.send_message(
        "a@remote.test",
        &["user@local.test"],
        b"Subject: after\r\n\r\nok\r\n",
    );
    assert_eq!(r.code, 250, "{r:?}");
    said_queued.insert(queued_id(&r));
    c.cmd("QUIT");

    let log = server.log_text();
    assert!(!log.contains("panicked"), "the server panicked:\n{log}");
    let queued: BTreeSet<String> = queue_ids(&server.queue_json()).into_iter().collect();
    let missing: Vec<_> = said_queued.difference(&queued).collect();
    let unannounced: Vec<_> = queued.difference(&said_queued).collect();
    assert!(missing.is_empty(), "queued, then lost: {missing:?}");
    for id in &unannounced {
        // What the message is tells which session sent it.
        let out = server.cli(&["queue", "show", id]);
        eprintln!("{}", String::from_utf8_lossy(&out.stdout));
    }
    assert!(
        unannounced.is_empty(),
        "in the queue without a 250 to any client: {unannounced:?}"
    );
}

#[test]
fn hostile_clients_get_wellformed_replies_and_lose_no_mail() {
    let server = Server::start(LIMITS);
    run_hostile(&server, server.smtp, "EHLO", false);
}

/// The same inside STARTTLS (RFC 3207), whose session ends with TLS's own
/// close, and with commands pipelined after STARTTLS in the clear.
#[test]
fn hostile_clients_over_starttls_get_wellformed_replies_and_lose_no_mail() {
    let server = Server::start(LIMITS);
    run_hostile(&server, server.smtp, "EHLO", true);
}

/// The same with AUTH offered without TLS, so that the generated PLAIN and
/// LOGIN exchanges (a known user among them, and their continuation lines
/// arriving as commands) reach the SASL code.
#[test]
fn hostile_clients_meet_auth_and_lose_no_mail() {
    let server = Server::start(&format!(
        "{LIMITS}\n[session.auth]\ndirectory = \"'users'\"\n\
         mechanisms = [\"plain\", \"login\"]\nallow-plain-text = true\n\n\
         [session.auth.errors]\ntotal = 5\nwait = \"1ms\"\n\n\
         [directory.users]\ntype = \"memory\"\n\n\
         [[directory.users.principals]]\nname = \"alice\"\nsecret = \"alice-pw\"\n\
         email = [\"a@remote.test\"]\n"
    ));
    run_hostile(&server, server.smtp, "EHLO", false);
}

/// The same on an LMTP listener (RFC 2033: LHLO, a reply per recipient
/// after the data).
#[test]
fn hostile_lmtp_clients_get_wellformed_replies_and_lose_no_mail() {
    let port = free_port();
    let server = Server::start(&format!(
        "[server.listener.lmtp]\nbind = [\"127.0.0.1:{port}\"]\nprotocol = \"lmtp\"\n\n{LIMITS}"
    ));
    run_hostile(
        &server,
        SocketAddr::from(([127, 0, 0, 1], port)),
        "LHLO",
        false,
    );
}
