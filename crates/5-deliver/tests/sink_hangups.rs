//! smtp-sink dropping the connection (`-q`: silently; `-Q`: with 421) at
//! each phase: always transient, with a reason naming the phase, never a
//! hung delivery.

mod common;

use common::*;
use ferrymail_deliver::SmtpTransport;

async fn run(args: &[&str]) -> Vec<ferrymail_deliver::RecipientOutcome> {
    let sink = if args == ["-q", "CONNECT"] {
        Sink::start_silent(args)
    } else {
        Sink::start(args)
    };
    let t = SmtpTransport::new(&relay_config(sink.port, "smtp", "")).unwrap();
    let env = envelope("s@c.test", &["a@hop.test", "b@hop.test"]);
    let out = deliver(&t, job(env, &message("hangup"), "hop", "hop.test")).await;
    assert!(sink.dumped().is_empty() || args.contains(&"."));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_hangups_are_transient() {
    for (cmd, phase) in [
        ("CONNECT", "greeting"),
        ("EHLO", "EHLO"),
        ("MAIL", "MAIL"),
        ("RCPT", "RCPT"),
        ("DATA", "DATA"),
        (".", "end of DATA"),
    ] {
        let out = run(&["-q", cmd]).await;
        for o in &out {
            assert_eq!(kind(o), "transient", "-q {cmd}: {o:?}");
            assert!(reason(o).contains(phase), "-q {cmd}: {}", reason(o));
            assert!(reason(o).starts_with("4.4."), "-q {cmd}: {}", reason(o));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reply_421_is_transient() {
    for cmd in ["MAIL", "RCPT", "DATA", "."] {
        let out = run(&["-Q", cmd]).await;
        for o in &out {
            assert_eq!(kind(o), "transient", "-Q {cmd}: {o:?}");
            assert!(reason(o).contains("421"), "-Q {cmd}: {}", reason(o));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_listening_is_transient() {
    let port = free_port();
    let t = SmtpTransport::new(&relay_config(port, "smtp", "")).unwrap();
    let out = deliver(
        &t,
        job(
            envelope("s@c.test", &["a@hop.test"]),
            &message("x"),
            "hop",
            "hop.test",
        ),
    )
    .await;
    assert_eq!(kind(&out[0]), "transient");
    assert!(
        reason(&out[0]).starts_with("4.4.1 127.0.0.1[127.0.0.1]:"),
        "{}",
        reason(&out[0])
    );
    assert!(reason(&out[0]).contains("refused"), "{}", reason(&out[0]));
    assert_eq!(out[0].remote, None, "no connection was made");
}

/// Whether the next hop answered the transaction before it went away, for
/// the scheduler's judgement of the destination: after MAIL, RCPT and DATA
/// were answered (a hang-up at the end of the message) it did; a hang-up
/// at MAIL, or a 421 there, says nothing of the sort.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hangup_after_the_transaction_was_answered_says_the_host_is_alive() {
    for (args, answered) in [
        (["-q", "."], true),
        (["-q", "MAIL"], false),
        (["-Q", "MAIL"], false),
    ] {
        for o in run(&args).await {
            assert_eq!(kind(&o), "transient", "{args:?}: {o:?}");
            assert_eq!(o.answered, answered, "{args:?}: {o:?}");
        }
    }
}
