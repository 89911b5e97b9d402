//! MT-PRIORITY (RFC 6710) is the client's claim. From a client the server
//! trusts (authenticated, or trusted to relay) it orders the queue; from
//! anyone else it is accepted and ignored (§5, §11), so that a stranger's
//! mail cannot jump ahead of all other mail.

mod common;

use common::*;

fn priority_of(s: &Server, id: &str) -> i64 {
    let out = s.cli(&["queue", "show", id, "--json"]);
    assert!(out.status.success(), "{out:?}");
    let m: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    m["mt_priority"].as_i64().unwrap()
}

#[test]
fn untrusted_clients_priority_is_ignored() {
    let send = |s: &Server| {
        let mut c = s.client();
        c.ehlo();
        assert_eq!(c.cmd("MAIL FROM:<a@example.org> MT-PRIORITY=9").code, 250);
        assert_eq!(c.cmd("RCPT TO:<u@local.test>").code, 250);
        assert_eq!(c.cmd("DATA").code, 354);
        c.send_raw(b"Subject: urgent!\r\n\r\nbody\r\n.\r\n");
        queued_id(&c.read())
    };
    // Loopback is not trusted here: mail for the local domain only.
    let stranger = Server::start("[session.rcpt]\nlocal-domains = [\"local.test\"]\n");
    assert_eq!(priority_of(&stranger, &send(&stranger)), 0);
    // Trusted to relay: the priority stands.
    let trusted = Server::start_default();
    assert_eq!(priority_of(&trusted, &send(&trusted)), 9);
}
