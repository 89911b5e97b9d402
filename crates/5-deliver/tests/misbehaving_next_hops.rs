//! Next hops that do what RFC 5321 says they should not, or that shut a
//! connection down under the client, through aiosmtpd with the quirks of
//! `peers/aiosmtpd_peer.py` (no real server misbehaves on demand): a 250
//! to the DATA command, 421 in the middle of the recipients, 421 to
//! STARTTLS, and 421 to MAIL on a reused connection. Also two mx routes to
//! one domain, which must not share a pooled connection.

mod common;

use common::*;
use ferrymail_deliver::{RecipientOutcome, SmtpTransport};
use serde_json::json;

async fn deliver_to(t: &SmtpTransport, rcpts: &[&str], subject: &str) -> Vec<RecipientOutcome> {
    deliver(
        t,
        job(
            envelope("s@c.test", rcpts),
            &message(subject),
            "hop",
            "hop.test",
        ),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2xx_reply_to_data_is_not_a_delivery() {
    // RFC 5321 §4.3.2: DATA gets 354, or 4xx/5xx. A 250 means the replies
    // are out of step or the hop is broken: the message was never sent.
    let peer = PyPeer::start(json!({ "data_cmd_reply": "250 2.0.0 OK" }));
    let t = SmtpTransport::new(&relay_config(peer.port, "smtp", "")).unwrap();
    let out = deliver_to(&t, &["a@hop.test"], "never sent").await;
    assert_eq!(kind(&out[0]), "transient", "{out:?}");
    assert!(reason(&out[0]).starts_with("4.5.0 "), "{}", reason(&out[0]));
    assert!(reason(&out[0]).contains("unexpected reply to DATA"));
    assert!(peer.transactions().is_empty());
    // The connection is not kept for the next message.
    assert_eq!(t.idle_connections(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_421_among_the_recipients_keeps_earlier_refusals_permanent() {
    let peer = PyPeer::start(json!({
        "reject_rcpt": {
            "gone@hop.test": "550 5.1.1 no such user",
            "late@hop.test": "421 4.3.2 shutting down",
        }
    }));
    let t = SmtpTransport::new(&relay_config(peer.port, "smtp", "")).unwrap();
    let out = deliver_to(
        &t,
        &["gone@hop.test", "late@hop.test", "after@hop.test"],
        "421 midway",
    )
    .await;
    // The 550 stands: bouncing it at once, not retrying it until expiry.
    assert_eq!(kind(&out[0]), "permanent", "{out:?}");
    assert_eq!(
        reply_text(&out[0]).as_deref(),
        Some("550 5.1.1 no such user")
    );
    assert_eq!(kind(&out[1]), "transient", "{out:?}");
    assert_eq!(kind(&out[2]), "transient", "{out:?}");
    assert!(peer.transactions().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_421_to_starttls_fails_the_host_instead_of_going_on_in_plain_text() {
    // Opportunistic TLS goes on in plain text after a 454 (RFC 3207 §4);
    // a 421 closes the session (RFC 5321 §3.8), so there is nothing to go
    // on with: the host fails and the next one would be tried.
    let cert = self_signed(&["peer.ferry.test"]);
    let peer = PyPeer::start(json!({
        "tls_cert": cert.cert.display().to_string(),
        "tls_key": cert.key.display().to_string(),
        "starttls_reply": "421 4.3.2 shutting down",
    }));
    let t = SmtpTransport::new(&relay_config(peer.port, "smtp", "")).unwrap();
    let out = deliver_to(&t, &["a@hop.test"], "starttls 421").await;
    assert_eq!(kind(&out[0]), "transient", "{out:?}");
    assert!(reason(&out[0]).contains("STARTTLS"), "{}", reason(&out[0]));
    assert!(peer.transactions().is_empty(), "nothing in plain text");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_421_to_mail_on_a_reused_connection_retries_on_a_new_one() {
    // The hop takes one message per connection and then answers MAIL with
    // 421 and closes: the second message goes out on a new connection in
    // the same attempt instead of waiting for a retry.
    let peer = PyPeer::start(json!({ "mail_close_after": 1 }));
    let t = SmtpTransport::new(&relay_config(peer.port, "smtp", "")).unwrap();
    let first = deliver_to(&t, &["a@hop.test"], "first").await;
    assert_eq!(kind(&first[0]), "delivered", "{first:?}");
    assert_eq!(t.idle_connections(), 1);
    let second = deliver_to(&t, &["b@hop.test"], "second").await;
    assert_eq!(kind(&second[0]), "delivered", "{second:?}");
    assert_eq!(peer.transactions().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_mx_routes_to_one_domain_do_not_share_a_connection() {
    // `plain` and `other` both look up hop.test's MX, on different ports:
    // a connection `plain` pooled must not carry `other`'s mail (it could
    // differ in port, protocol, TLS policy or credentials).
    let port_a = free_port();
    let port_b = free_port();
    let sink_a = Sink::start_at("127.0.0.1", port_a, &[]);
    let sink_b = Sink::start_at("127.0.0.1", port_b, &[]);
    let dns = DnsServer::start(
        Zone::new()
            .mx("hop.test", 10, "mx.hop.test")
            .addr("mx.hop.test", "127.0.0.1"),
    )
    .await;
    let cfg = config(&format!(
        "[resolver]\ntype = \"custom\"\ncustom = [\"udp://{}\"]\n\n\
         [queue.route.plain]\ntype = \"mx\"\nport = {port_a}\n\n\
         [queue.route.other]\ntype = \"mx\"\nport = {port_b}\n",
        dns.addr
    ));
    let t = SmtpTransport::new(&cfg).unwrap();
    for route in ["plain", "other"] {
        let out = deliver(
            &t,
            job(
                envelope("s@c.test", &["a@hop.test"]),
                &message(route),
                route,
                "hop.test",
            ),
        )
        .await;
        assert_eq!(kind(&out[0]), "delivered", "{route}: {out:?}");
    }
    assert_eq!(sink_a.wait_dumped(1).len(), 1);
    assert_eq!(
        sink_b.wait_dumped(1).len(),
        1,
        "other's mail at other's port"
    );
}
