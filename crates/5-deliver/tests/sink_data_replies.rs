//! smtp-sink refusing DATA or the end of data, or hanging up: the reply to
//! DATA (or to its end) applies to every recipient accepted at RCPT, and a
//! dropped connection is transient for all.

mod common;

use common::*;
use ferrymail_deliver::SmtpTransport;

async fn run(args: &[&str]) -> Vec<ferrymail_deliver::RecipientOutcome> {
    let sink = Sink::start(args);
    let t = SmtpTransport::new(&relay_config(sink.port, "smtp", "")).unwrap();
    let env = envelope("s@c.test", &["a@hop.test", "b@hop.test"]);
    deliver(&t, job(env, &message("data"), "hop", "hop.test")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_5xx_is_permanent_for_all() {
    let out = run(&["-f", "DATA"]).await;
    for o in &out {
        assert_eq!(kind(o), "permanent", "{o:?}");
        assert_eq!(
            reply_text(o).as_deref(),
            Some("500 5.3.0 Error: command failed")
        );
        assert!(reason(o).contains("(in reply to DATA)"), "{}", reason(o));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_of_data_4xx_is_transient_for_all() {
    let out = run(&["-r", "."]).await;
    for o in &out {
        assert_eq!(kind(o), "transient", "{o:?}");
        assert_eq!(
            reply_text(o).as_deref(),
            Some("450 4.3.0 Error: command failed")
        );
        assert!(
            reason(o).contains("(in reply to end of DATA)"),
            "{}",
            reason(o)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_of_data_5xx_is_permanent_for_all() {
    let out = run(&["-f", "."]).await;
    for o in &out {
        assert_eq!(kind(o), "permanent", "{o:?}");
        assert_eq!(o.outcome.status(), "5.3.0");
    }
}
