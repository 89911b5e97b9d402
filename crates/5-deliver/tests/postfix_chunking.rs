//! A private Postfix 3.7 as the next hop, relaying to smtp-sink: Postfix
//! offers CHUNKING, so the message goes with BDAT (RFC 3030), in 1 MiB
//! chunks when large, and arrives unchanged behind Postfix's Received
//! header. Needs root (Postfix's master); skipped otherwise.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use ferrymail_deliver::SmtpTransport;
use ferrymail_spool::BodyType;

/// The Python helper running a private Postfix; stopped cleanly on drop
/// (stdin closed, so Postfix is stopped), killed if that takes too long.
struct PostfixHop {
    child: std::process::Child,
    maillog: String,
}

impl Drop for PostfixHop {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(40);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn postfix_hop(port: u16, relay_port: u16) -> Option<PostfixHop> {
    let root = std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false);
    if !root {
        eprintln!("skipped: a private Postfix needs root");
        return None;
    }
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/postfix_hop.py");
    let mut child = Command::new("python3")
        .arg(script)
        .arg(port.to_string())
        .arg(relay_port.to_string())
        .env(
            "PATH",
            format!(
                "{}:/usr/sbin:/sbin",
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut hop = PostfixHop {
        child,
        maillog: String::new(),
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(90))
        .expect("Postfix did not start");
    let maillog = line
        .strip_prefix("READY ")
        .expect("Postfix did not start")
        .trim();
    hop.maillog = maillog.to_string();
    Some(hop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bdat_through_postfix() {
    let sink = Sink::start(&[]);
    let port = free_port();
    let Some(hop) = postfix_hop(port, sink.port) else {
        return;
    };
    let proxy = Proxy::start(port).await;
    let t = SmtpTransport::new(&relay_config(proxy.port, "smtp", "")).unwrap();

    let mut small = b"Date: Mon, 1 Jun 2026 10:00:00 +0000\r\n".to_vec();
    small.extend(message("bdat"));
    small.extend("8-bit: d\u{e9}j\u{e0} vu\r\n".as_bytes());
    let mut env = envelope("s@c.test", &["a@far.test"]);
    env.body = BodyType::EightBitMime;
    let out = deliver(&t, job(env, &small, "hop", "far.test")).await;
    assert_eq!(kind(&out[0]), "delivered", "{out:?}");
    let sent = proxy.client_bytes(0);
    assert!(
        sent.contains(&format!("BDAT {} LAST\r\n", small.len())),
        "{sent}"
    );
    assert!(!sent.contains("DATA\r\n"), "{sent}");
    assert!(!sent.contains("..leading"), "BDAT is not dot-stuffed");
    assert!(sent.contains("BODY=8BITMIME"));

    // A large message: three chunks, the first two answered one by one.
    let mut big = b"Date: Mon, 1 Jun 2026 10:00:00 +0000\r\n".to_vec();
    big.extend(message("big"));
    while big.len() < (5 << 19) {
        big.extend_from_slice(
            b"0123456789012345678901234567890123456789012345678901234567890123456789\r\n",
        );
    }
    let out = deliver(
        &t,
        job(
            envelope("s@c.test", &["b@far.test"]),
            &big,
            "hop",
            "far.test",
        ),
    )
    .await;
    assert_eq!(kind(&out[0]), "delivered", "{out:?}");
    let sent = proxy.client_bytes(0);
    assert_eq!(sent.matches("BDAT 1048576\r\n").count(), 2);
    assert!(sent.contains(&format!("BDAT {} LAST\r\n", big.len() - 2 * 1048576)));
    assert_eq!(
        proxy.connections(),
        1,
        "the second message reused the connection"
    );

    // Postfix relayed both to smtp-sink; each arrived whole, after
    // Postfix's own Received header.
    let deadline = Instant::now() + Duration::from_secs(30);
    let dumped = loop {
        let d = sink.dumped();
        if d.len() >= 2 || Instant::now() > deadline {
            break d;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        dumped.len(),
        2,
        "Postfix log:\n{}",
        std::fs::read_to_string(&hop.maillog).unwrap_or_default()
    );
    let mut bodies: Vec<&Vec<u8>> = dumped.iter().map(|d| &d.body).collect();
    bodies.sort_by_key(|b| b.len());
    for (body, original) in bodies.into_iter().zip([&small, &big]) {
        assert!(
            body.starts_with(b"Received: from client.ferry.test"),
            "{}",
            String::from_utf8_lossy(&body[..200])
        );
        assert!(
            body.ends_with(&as_dumped(original)),
            "contents changed in transit"
        );
    }
    // Postfix logs its command counts at disconnect: QUIT the pooled
    // connection first.
    t.close_idle().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let log = loop {
        let log = std::fs::read_to_string(&hop.maillog).unwrap_or_default();
        if log.contains("bdat=") || Instant::now() > deadline {
            break log;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        log.contains(" bdat=4 "),
        "Postfix counted four BDAT commands:\n{log}"
    );
}
