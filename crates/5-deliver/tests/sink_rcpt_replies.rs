//! smtp-sink's fault injection on RCPT (`-r`/`-f`) and an aiosmtpd peer that
//! refuses one recipient of three: a RCPT reply applies to its recipient
//! only, is transient for 4xx and permanent for 5xx, and is kept whole.

mod common;

use common::*;
use ferrymail_deliver::SmtpTransport;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rcpt_4xx_is_transient_with_the_reply() {
    let sink = Sink::start(&["-r", "RCPT"]);
    let proxy = Proxy::start(sink.port).await;
    let t = SmtpTransport::new(&relay_config(proxy.port, "smtp", "")).unwrap();
    let out = deliver(
        &t,
        job(
            envelope("s@c.test", &["a@hop.test", "b@hop.test"]),
            &message("r4"),
            "hop",
            "hop.test",
        ),
    )
    .await;
    for o in &out {
        assert_eq!(kind(o), "transient", "{o:?}");
        assert_eq!(
            reply_text(o).as_deref(),
            Some("450 4.3.0 Error: command failed")
        );
        assert_eq!(o.outcome.status(), "4.3.0");
        assert!(reason(o).contains("(in reply to RCPT TO)"), "{}", reason(o));
    }
    // No recipient accepted: DATA is never sent, nothing delivered.
    assert!(!proxy.client_bytes(0).contains("DATA\r\n"));
    assert!(sink.dumped().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rcpt_5xx_is_permanent_with_the_reply() {
    let sink = Sink::start(&["-f", "RCPT"]);
    let t = SmtpTransport::new(&relay_config(sink.port, "smtp", "")).unwrap();
    let out = deliver(
        &t,
        job(
            envelope("s@c.test", &["a@hop.test"]),
            &message("r5"),
            "hop",
            "hop.test",
        ),
    )
    .await;
    assert_eq!(kind(&out[0]), "permanent", "{out:?}");
    assert_eq!(
        reply_text(&out[0]).as_deref(),
        Some("500 5.3.0 Error: command failed")
    );
    assert_eq!(out[0].outcome.status(), "5.3.0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_refused_recipient_among_three() {
    let peer = PyPeer::start(json!({
        "reject_rcpt": {
            "bad@hop.test": "550 5.1.1 <bad@hop.test>: no such user",
            "later@hop.test": "452 4.2.2 mailbox full",
        }
    }));
    let t = SmtpTransport::new(&relay_config(peer.port, "smtp", "")).unwrap();
    let env = envelope(
        "s@c.test",
        &[
            "ok1@hop.test",
            "bad@hop.test",
            "later@hop.test",
            "ok2@hop.test",
        ],
    );
    let contents = message("mixed");
    let out = deliver(&t, job(env, &contents, "hop", "hop.test")).await;
    let kinds: Vec<&str> = out.iter().map(kind).collect();
    assert_eq!(kinds, ["delivered", "permanent", "transient", "delivered"]);
    assert_eq!(
        reply_text(&out[1]).as_deref(),
        Some("550 5.1.1 <bad@hop.test>: no such user")
    );
    assert_eq!(
        reply_text(&out[2]).as_deref(),
        Some("452 4.2.2 mailbox full")
    );
    // The accepted ones got the message, once, with only them as recipients.
    let tx = peer.transactions();
    assert_eq!(tx.len(), 1);
    assert_eq!(tx[0]["rcpt_tos"], json!(["ok1@hop.test", "ok2@hop.test"]));
    assert_eq!(recorded_data(&tx[0]), contents);
}
