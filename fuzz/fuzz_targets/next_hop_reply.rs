//! What a next hop answers: the delivery client's reply parser, the EHLO
//! capabilities and the reply as logged and put in a DSN.
#![no_main]

use ferrymail_deliver::protocol::ehlo::Capabilities;
use ferrymail_deliver::protocol::reply::{MAX_REPLY_BYTES, parse_reply};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|buf: &[u8]| {
    let mut rest = buf;
    while let Ok(Some((reply, used))) = parse_reply(rest) {
        assert!(used > 0 && used <= rest.len() && used <= MAX_REPLY_BYTES);
        assert!((200..600).contains(&reply.code));
        let _ = reply.is_positive();
        let _ = reply.closes_connection();
        let _ = Capabilities::from_ehlo(&reply);
        let remote = reply.to_remote();
        let _ = format!("{remote:?}");
        rest = &rest[used..];
    }
});
