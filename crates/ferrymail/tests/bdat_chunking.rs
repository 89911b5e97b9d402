//! RFC 3030 CHUNKING over real TCP: BDAT chunks are stored byte for byte (no
//! dot-unstuffing, no line-ending repair), the chunk of a refused BDAT is still
//! consumed so the session stays in sync, DATA cannot follow BDAT, the size limit
//! applies to the sum of the chunks, and pipelined chunks work.

mod common;

use common::*;

/// Sends `BDAT n [LAST]` followed by the chunk in one write, reads the reply.
fn bdat(c: &mut Smtp, chunk: &[u8], last: bool) -> Reply {
    let mut w = format!(
        "BDAT {}{}\r\n",
        chunk.len(),
        if last { " LAST" } else { "" }
    )
    .into_bytes();
    w.extend_from_slice(chunk);
    c.send_raw(&w);
    c.read()
}

fn begin(c: &mut Smtp, rcpt: &str) {
    c.ehlo();
    let r = c.cmd("MAIL FROM:<sender@example.org>");
    assert!(r.is(250, "2.1.0"), "{r:?}");
    let r = c.cmd(&format!("RCPT TO:<{rcpt}>"));
    assert!(r.is(250, "2.1.5"), "{r:?}");
}

fn stored_body(server: &Server, r: &Reply) -> Vec<u8> {
    let id = queued_id(r);
    let stored = server.contents(&id);
    strip_received(&stored).to_vec()
}

#[test]
fn ehlo_offers_chunking() {
    let server = Server::start_default();
    let mut c = server.client();
    let r = c.ehlo();
    assert!(
        r.lines.iter().any(|l| &l[4..] == "CHUNKING"),
        "EHLO does not offer CHUNKING: {r:?}"
    );
}

#[test]
fn multi_chunk_message_is_stored_exactly() {
    let server = Server::start_default();
    let mut c = server.client();
    begin(&mut c, "user@local.test");
    // Lines starting with "." are not stuffed in BDAT and must stay as they are;
    // a bare LF and a bare CR are content too; the chunk boundaries fall in the
    // middle of a line and in the middle of a CRLF.
    let chunks: [&[u8]; 4] = [
        b"Subject: chunks\r\nFrom: <sender@example.org>\r\n\r\n.one dot\r\n..two dots\r",
        b"\n.\r\nbare\nLF and bare\rCR\r\n",
        b".\r\n",
        b"last line without dot\r\n",
    ];
    for ch in &chunks[..3] {
        let r = bdat(&mut c, ch, false);
        assert!(r.is(250, "2.0.0"), "non-final chunk: {r:?}");
        assert!(
            r.text().contains(&format!("{} octets", ch.len())),
            "chunk reply should count the octets: {r:?}"
        );
    }
    let r = bdat(&mut c, chunks[3], true);
    assert_eq!(r.code, 250, "{r:?}");
    let expected: Vec<u8> = chunks.concat();
    assert_eq!(
        String::from_utf8_lossy(&stored_body(&server, &r)),
        String::from_utf8_lossy(&expected)
    );
    assert_eq!(stored_body(&server, &r), expected);
    // The session is still usable after the transaction.
    assert!(c.cmd("NOOP").is(250, "2.0.0"));
}

#[test]
fn bdat_zero_last_ends_the_message() {
    let server = Server::start_default();
    let mut c = server.client();
    begin(&mut c, "user@local.test");
    let body = b"Subject: zero last\r\n\r\nbody\r\n";
    let r = bdat(&mut c, body, false);
    assert!(r.is(250, "2.0.0"), "{r:?}");
    let r = c.cmd("BDAT 0 LAST");
    assert_eq!(r.code, 250, "BDAT 0 LAST: {r:?}");
    assert!(r.text().contains("queued as"), "{r:?}");
    assert_eq!(stored_body(&server, &r), body.to_vec());
}

#[test]
fn single_bdat_last_with_empty_message_chunks() {
    // BDAT 0 (not LAST) is a legal empty chunk, then the whole message LAST.
    let server = Server::start_default();
    let mut c = server.client();
    begin(&mut c, "user@local.test");
    let r = c.cmd("BDAT 0");
    assert!(r.is(250, "2.0.0"), "{r:?}");
    let body = b"Subject: one\r\n\r\n.\r\n";
    let r = bdat(&mut c, body, true);
    assert_eq!(stored_body(&server, &r), body.to_vec());
}

#[test]
fn bdat_before_mail_consumes_chunk_and_session_survives() {
    let server = Server::start_default();
    let mut c = server.client();
    c.ehlo();
    // The chunk looks like commands: if the server did not consume it, it would
    // answer them (two extra replies) and the session would go out of step.
    let r = bdat(&mut c, b"RSET\r\nNOOP\r\n", false);
    assert!(r.is(503, "5.5.1"), "BDAT before MAIL: {r:?}");
    let r = c.cmd("NOOP");
    assert!(
        r.is(250, "2.0.0"),
        "first reply after the refused BDAT must be NOOP's: {r:?}"
    );
    // And a whole transaction still works.
    begin(&mut c, "user@local.test");
    let body = b"Subject: after refusal\r\n\r\nok\r\n";
    let r = bdat(&mut c, body, true);
    assert_eq!(stored_body(&server, &r), body.to_vec());
}

#[test]
fn bdat_last_before_rcpt_is_refused_and_consumed() {
    let server = Server::start_default();
    let mut c = server.client();
    c.ehlo();
    assert!(c.cmd("MAIL FROM:<a@example.org>").is(250, "2.1.0"));
    let r = bdat(&mut c, b"QUIT\r\n", true);
    assert!(r.is(503, "5.5.1"), "BDAT before RCPT: {r:?}");
    let r = c.cmd("NOOP");
    assert!(r.is(250, "2.0.0"), "{r:?}");
    assert_eq!(server.queue_json()["messages"].as_array().unwrap().len(), 0);
}

#[test]
fn data_after_bdat_chunk_is_refused() {
    let server = Server::start_default();
    let mut c = server.client();
    begin(&mut c, "user@local.test");
    let r = bdat(&mut c, b"Subject: mixed\r\n\r\n", false);
    assert!(r.is(250, "2.0.0"), "{r:?}");
    let r = c.cmd("DATA");
    assert!(r.is(503, "5.5.1"), "DATA after BDAT: {r:?}");
    // The BDAT transaction can still be finished.
    let r = bdat(&mut c, b"rest\r\n", true);
    assert_eq!(
        stored_body(&server, &r),
        b"Subject: mixed\r\n\r\nrest\r\n".to_vec()
    );
}

#[test]
fn bdat_total_above_max_message_size_is_refused_on_last() {
    let server = Server::start(
        "[session.rcpt]\nlocal-domains = [\"local.test\"]\n\n[session.data]\nmax-message-size = 1000\n",
    );
    let mut c = server.client();
    let ehlo = c.ehlo();
    assert!(
        ehlo.lines.iter().any(|l| &l[4..] == "SIZE 1000"),
        "EHLO should advertise SIZE 1000: {ehlo:?}"
    );
    assert!(c.cmd("MAIL FROM:<a@example.org>").is(250, "2.1.0"));
    assert!(c.cmd("RCPT TO:<u@local.test>").is(250, "2.1.5"));
    let chunk = vec![b'x'; 600];
    // Each chunk alone is under the limit, the sum is not.
    let r = bdat(&mut c, &chunk, false);
    assert_eq!(r.code, 250, "{r:?}");
    let r = bdat(&mut c, &chunk, false);
    assert_eq!(r.code, 250, "chunks keep being consumed: {r:?}");
    let r = bdat(&mut c, b"end\r\n", true);
    assert!(r.is(552, "5.3.4"), "oversized BDAT message: {r:?}");
    // Nothing was queued, and the session is in sync and usable.
    let r = c.cmd("NOOP");
    assert!(r.is(250, "2.0.0"), "{r:?}");
    assert_eq!(
        server.queue_json()["messages"].as_array().unwrap().len(),
        0,
        "an oversized message must not be queued"
    );
    // A new transaction within the limit still goes through.
    assert!(c.cmd("MAIL FROM:<a@example.org>").is(250, "2.1.0"));
    assert!(c.cmd("RCPT TO:<u@local.test>").is(250, "2.1.5"));
    let r = bdat(&mut c, b"Subject: small\r\n\r\nok\r\n", true);
    assert_eq!(r.code, 250, "{r:?}");
    assert_eq!(server.queue_json()["messages"].as_array().unwrap().len(), 1);
}

#[test]
fn pipelined_bdat_chunks_in_one_write() {
    let server = Server::start_default();
    let mut c = server.client();
    c.ehlo();
    let parts: [&[u8]; 3] = [
        b"Subject: pipelined\r\n\r\n",
        b".dot line\r\nBDAT 5\r\nnot a command\r\n",
        b"tail\n",
    ];
    let mut w = Vec::new();
    w.extend_from_slice(b"MAIL FROM:<p@example.org>\r\nRCPT TO:<u@local.test>\r\n");
    for (i, p) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        w.extend_from_slice(
            format!("BDAT {}{}\r\n", p.len(), if last { " LAST" } else { "" }).as_bytes(),
        );
        w.extend_from_slice(p);
    }
    w.extend_from_slice(b"NOOP\r\n");
    c.send_raw(&w);
    assert!(c.read().is(250, "2.1.0"), "MAIL");
    assert!(c.read().is(250, "2.1.5"), "RCPT");
    for p in &parts[..2] {
        let r = c.read();
        assert!(r.is(250, "2.0.0"), "{r:?}");
        assert!(r.text().contains(&format!("{} octets", p.len())), "{r:?}");
    }
    let last = c.read();
    assert!(last.text().contains("queued as"), "{last:?}");
    assert!(c.read().is(250, "2.0.0"), "NOOP after the pipelined BDATs");
    assert_eq!(stored_body(&server, &last), parts.concat());
}

/// A client pipelines the next transaction right behind a message, and the
/// next BDAT's chunk is still on its way: the first message's 250 (and the
/// next MAIL's and RCPT's replies) come at once, not when the chunk is in
/// (RFC 2920 §3.2). It used to wait for the chunk, and was lost if the
/// client went away before sending it, although the message was queued.
#[test]
fn replies_are_sent_before_waiting_for_a_chunk() {
    let server = Server::start_default();
    let mut c = server.client();
    begin(&mut c, "user@local.test");
    let first = b"Subject: one\r\n\r\nfirst\r\n";
    let mut w = format!("BDAT {} LAST\r\n", first.len()).into_bytes();
    w.extend_from_slice(first);
    w.extend_from_slice(
        b"MAIL FROM:<sender@example.org>\r\nRCPT TO:<user@local.test>\r\nBDAT 1000 LAST\r\npart of the chunk",
    );
    c.send_raw(&w);
    let r = c.read();
    assert!(r.is(250, "2.0.0"), "{r:?}");
    let id = queued_id(&r);
    assert_eq!(stored_body(&server, &r), first);
    assert!(c.read().is(250, "2.1.0"));
    assert!(c.read().is(250, "2.1.5"));
    // The rest of the chunk, and the second message is whole.
    let rest = vec![b'x'; 1000 - b"part of the chunk".len()];
    c.send_raw(&rest);
    let r = c.read();
    assert!(r.is(250, "2.0.0"), "{r:?}");
    assert_ne!(queued_id(&r), id);
}
