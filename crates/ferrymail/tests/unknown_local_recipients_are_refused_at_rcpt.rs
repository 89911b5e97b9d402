//! `[session.rcpt] directory` (Stalwart's key): in the local domains only
//! the addresses of the directory's principals are accepted. Any other
//! gets 550 5.1.1 at RCPT TO (Postfix's local_recipient_maps), so that the
//! mailbox server behind Ferrymail never has to bounce it later to a
//! sender who may be forged (backscatter). Through the real `ferrymail
//! serve`:
//!
//! * a principal's address is accepted, whatever its case;
//! * an unknown local address is refused with 550 5.1.1, and the
//!   transaction goes on for the others;
//! * postmaster is always accepted (RFC 5321 §4.5.1);
//! * without the setting, every local part is accepted as before.

mod common;

use common::*;

const DIRECTORY: &str = r#"[directory.users]
type = "memory"

[[directory.users.principals]]
name = "alice"
secret = "alice-pw"
email = ["alice@local.test", "sales@local.test"]
"#;

#[test]
fn only_known_local_addresses_are_accepted() {
    let s = Server::start(&format!(
        "[session.rcpt]\nlocal-domains = [\"local.test\"]\ndirectory = \"'users'\"\n\n{DIRECTORY}"
    ));
    let mut c = s.client();
    c.ehlo();
    assert_eq!(c.cmd("MAIL FROM:<someone@example.org>").code, 250);
    assert!(c.cmd("RCPT TO:<alice@local.test>").is(250, "2.1.5"));
    assert!(c.cmd("RCPT TO:<Sales@Local.Test>").is(250, "2.1.5"));
    let r = c.cmd("RCPT TO:<bob@local.test>");
    assert!(r.is(550, "5.1.1"), "{r:?}");
    assert!(r.text().contains("User unknown"), "{r:?}");
    assert!(c.cmd("RCPT TO:<postmaster@local.test>").is(250, "2.1.5"));
    assert!(c.cmd("RCPT TO:<postmaster>").is(250, "2.1.5"));
    assert_eq!(c.cmd("DATA").code, 354);
    c.send_raw(b"Subject: hi\r\n\r\nbody\r\n.\r\n");
    let id = queued_id(&c.read());
    let m = s.show(&id).expect("queued");
    let addresses: Vec<&str> = m["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["address"].as_str().unwrap())
        .collect();
    assert_eq!(
        addresses,
        [
            "alice@local.test",
            "Sales@Local.Test",
            "postmaster@local.test",
            "postmaster@mx.ferry.test"
        ]
    );
}

#[test]
fn without_a_directory_every_local_part_is_accepted() {
    let s = Server::start(&format!(
        "[session.rcpt]\nlocal-domains = [\"local.test\"]\n\n{DIRECTORY}"
    ));
    let mut c = s.client();
    c.ehlo();
    assert_eq!(c.cmd("MAIL FROM:<someone@example.org>").code, 250);
    assert!(c.cmd("RCPT TO:<bob@local.test>").is(250, "2.1.5"));
}
