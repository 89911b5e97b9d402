//! The Authentication-Results field (RFC 8601) through the real `ferrymail
//! serve`, with reverse DNS answered by a DNS server inside the test:
//!
//! * with `[auth.iprev]` on, every accepted message carries our field,
//!   under `server.hostname`, right after our Received field, saying what
//!   the check found: `iprev=pass` with the forward-confirmed name, or
//!   `iprev=permerror` for a client without a PTR name (relaxed mode
//!   accepts it and says so);
//! * fields the client sent that claim our name are removed (§5), so no
//!   sender can forge our verdict; fields of other servers are kept;
//! * with nothing checked (the default), no field is added and the
//!   message is stored as sent.
//!
//! (AUTH's `auth=pass smtp.auth=USER` is checked in
//! `smtp_auth_lets_known_users_relay`.)

mod common;
mod dns_support;
use common::*;
use dns_support::*;

/// A message that carries a forged field under our name, another
/// server's field, and a forged field folded over two lines.
const FORGED: &[u8] =
    b"Authentication-Results: mx.ferry.test; iprev=pass policy.iprev=127.0.0.1\r\n\
Authentication-Results: upstream.example; spf=pass smtp.mailfrom=example.org\r\n\
Authentication-Results: MX.FERRY.TEST;\r\n\tauth=pass smtp.auth=mallory\r\n\
Subject: vouch for me\r\n\r\nbody\r\n";

fn send(s: &Server) -> String {
    let mut c = s.client();
    c.ehlo();
    let id = queued_id(&c.send_message("a@example.org", &["user@local.test"], FORGED));
    c.cmd("QUIT");
    id
}

#[test]
fn iprev_results_are_stated_and_forged_ones_removed() {
    let (_dns, s) = checked_server(
        Zone::new()
            .ptr(LOOPBACK_PTR, "mail.client.test")
            .addr("mail.client.test", "127.0.0.1"),
        "[auth.iprev]\nverify = \"relaxed\"\n",
    );
    let stored = s.contents(&send(&s));
    let after_received = String::from_utf8(strip_received(&stored).to_vec()).unwrap();
    assert_eq!(
        after_received,
        "Authentication-Results: mx.ferry.test;\r\n\
         \tiprev=pass policy.iprev=127.0.0.1 (mail.client.test)\r\n\
         Authentication-Results: upstream.example; spf=pass smtp.mailfrom=example.org\r\n\
         Subject: vouch for me\r\n\r\nbody\r\n"
    );
}

#[test]
fn a_client_without_a_ptr_name_is_reported_as_permerror() {
    let (_dns, s) = checked_server(Zone::new(), "[auth.iprev]\nverify = \"relaxed\"\n");
    let stored = s.contents(&send(&s));
    let text = String::from_utf8_lossy(strip_received(&stored)).to_string();
    assert!(
        text.starts_with(
            "Authentication-Results: mx.ferry.test;\r\n\tiprev=permerror policy.iprev=127.0.0.1\r\n"
        ),
        "{text}"
    );
}

#[test]
fn nothing_checked_nothing_added_and_nothing_removed() {
    let s = Server::start_default();
    let stored = s.contents(&send(&s));
    assert_eq!(strip_received(&stored), FORGED);
}
