//! NOTIFY=NEVER: a recipient refused with 550 by the next hop (smtp-sink)
//! fails, and no notification is sent to anyone.

mod common;
mod dsn_support;

use std::time::Duration;

use common::*;
use dsn_support::*;

#[test]
fn notify_never_gives_no_notice() {
    let hop = Hop::start(&["-f", "RCPT", "-B", "550 5.1.1 No such user"]);
    let sink = Sink::start();
    let keys = Keys::generate();
    let server = Server::start(&config(
        &Setup {
            hop: hop.port,
            ..Setup::default()
        },
        &sink,
        &keys,
    ));
    let id = send(
        &server,
        "sender@sender.test",
        "RET=FULL",
        &[("gone@dest.test", "NOTIFY=NEVER")],
        &original("Never mind"),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !log_lines(&server, &format!("id={id}"))
        .iter()
        .any(|l| l.contains(" failed "))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the recipient did not fail:\n{}",
            plain_log(&server)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Longer than the reporter's grouping time and a delivery.
    std::thread::sleep(Duration::from_secs(4));
    assert!(sink.received().is_empty(), "no notification");
    assert!(log_lines(&server, "notification queued").is_empty());
}
