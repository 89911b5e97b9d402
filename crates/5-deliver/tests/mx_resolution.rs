//! MX resolution against a real DNS server (hickory-server, in process) with
//! `[resolver] type = "custom"`, and smtp-sink instances on several loopback
//! addresses: preference order, fallback to the next MX when one refuses
//! connections, max-mx and max-multihomed, implicit MX, null MX, NXDOMAIN,
//! NODATA and SERVFAIL.

mod common;

use common::*;
use ferrymail_deliver::{SmtpTransport, Transport};

/// A config whose `viamx` route does MX lookups and connects on `port`.
fn mx_config(dns: std::net::SocketAddr, port: u16, extra: &str) -> ferrymail_config::Config {
    config(&format!(
        "[resolver]\ntype = \"custom\"\ncustom = [\"udp://{dns}\"]\n\n[queue.route.viamx]\ntype = \"mx\"\nport = {port}\n\n{extra}\n"
    ))
}

async fn send(t: &SmtpTransport, domain: &str) -> ferrymail_deliver::RecipientOutcome {
    send_via(t, "viamx", domain).await
}

/// One message to `user@domain` through `route`; its one outcome.
async fn send_via(
    t: &SmtpTransport,
    route: &str,
    domain: &str,
) -> ferrymail_deliver::RecipientOutcome {
    let j = job(
        envelope("s@c.test", &[&format!("user@{domain}")]),
        &message("mx"),
        route,
        domain,
    );
    let mut out = tokio::time::timeout(std::time::Duration::from_secs(60), t.deliver(j))
        .await
        .unwrap();
    out.remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preference_order_and_fallback() {
    let port = free_port();
    let sink_a = Sink::start_at("127.0.0.2", port, &[]);
    let sink_b = Sink::start_at("127.0.0.3", port, &[]);
    let zone = Zone::new()
        // a.test prefers 127.0.0.2, b.test prefers 127.0.0.3
        .mx("a.test", 10, "mx-a.hosts.test")
        .mx("a.test", 20, "mx-b.hosts.test")
        .mx("b.test", 20, "mx-a.hosts.test")
        .mx("b.test", 10, "mx-b.hosts.test")
        // fallback.test: the best MX refuses connections (nothing on .4)
        .mx("fallback.test", 5, "dead.hosts.test")
        .mx("fallback.test", 50, "mx-b.hosts.test")
        .mx("fallback.test", 90, "mx-a.hosts.test")
        .addr("mx-a.hosts.test", "127.0.0.2")
        .addr("mx-b.hosts.test", "127.0.0.3")
        .addr("dead.hosts.test", "127.0.0.4");
    let dns = DnsServer::start(zone).await;
    let t = SmtpTransport::new(&mx_config(dns.addr, port, "")).unwrap();

    let o = send(&t, "a.test").await;
    assert_eq!(kind(&o), "delivered", "{o:?}");
    assert_eq!(o.remote.as_ref().unwrap().host, "mx-a.hosts.test");
    assert_eq!(o.remote.as_ref().unwrap().ip.to_string(), "127.0.0.2");

    let o = send(&t, "b.test").await;
    assert_eq!(kind(&o), "delivered", "{o:?}");
    assert_eq!(o.remote.as_ref().unwrap().host, "mx-b.hosts.test");

    let o = send(&t, "fallback.test").await;
    assert_eq!(kind(&o), "delivered", "{o:?}");
    assert_eq!(
        o.remote.as_ref().unwrap().host,
        "mx-b.hosts.test",
        "the next MX in order"
    );
    assert_eq!(sink_a.wait_dumped(1).len(), 1);
    assert_eq!(sink_b.wait_dumped(2).len(), 2);

    // max-mx = 1: only the dead host is tried.
    let t1 =
        SmtpTransport::new(&mx_config(dns.addr, port, "[queue.outbound]\nmax-mx = 1\n")).unwrap();
    let o = send(&t1, "fallback.test").await;
    assert_eq!(kind(&o), "transient", "{o:?}");
    assert!(
        reason(&o).contains("dead.hosts.test[127.0.0.4]"),
        "{}",
        reason(&o)
    );
    assert!(!reason(&o).contains("mx-b"), "{}", reason(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multihomed_host() {
    let port = free_port();
    let _sink = Sink::start_at("127.0.0.5", port, &[]);
    let zone = Zone::new()
        .mx("multi.test", 10, "mx.multi.test")
        .addr("mx.multi.test", "127.0.0.6") // refuses
        .addr("mx.multi.test", "127.0.0.5");
    let dns = DnsServer::start(zone).await;
    let t = SmtpTransport::new(&mx_config(dns.addr, port, "")).unwrap();
    let o = send(&t, "multi.test").await;
    assert_eq!(kind(&o), "delivered", "{o:?}");
    assert_eq!(o.remote.as_ref().unwrap().ip.to_string(), "127.0.0.5");
    let t1 = SmtpTransport::new(&mx_config(
        dns.addr,
        port,
        "[queue.outbound]\nmax-multihomed = 1\n",
    ))
    .unwrap();
    let o = send(&t1, "multi.test").await;
    assert_eq!(kind(&o), "transient", "one address per host: {o:?}");
    // ipv6-only: the host has no AAAA record.
    let t6 = SmtpTransport::new(&mx_config(
        dns.addr,
        port,
        "[queue.outbound]\nip-strategy = \"ipv6-only\"\n",
    ))
    .unwrap();
    let o = send(&t6, "multi.test").await;
    assert_eq!(kind(&o), "transient", "{o:?}");
    assert!(
        reason(&o).contains("no IPv6 address records"),
        "{}",
        reason(&o)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn implicit_mx_null_mx_and_dns_errors() {
    let port = free_port();
    let _sink = Sink::start_at("127.0.0.1", port, &[]);
    let zone = Zone::new()
        .addr("implicit.test", "127.0.0.1")
        .addr("xn--bcher-kva.test", "127.0.0.1")
        .mx("null.test", 0, ".")
        .addr("null.test", "127.0.0.1")
        .empty("nothing.test")
        .servfail("broken.test");
    let dns = DnsServer::start(zone).await;
    let t = SmtpTransport::new(&mx_config(dns.addr, port, "")).unwrap();

    let o = send(&t, "implicit.test").await;
    assert_eq!(kind(&o), "delivered", "implicit MX: {o:?}");
    assert_eq!(o.remote.as_ref().unwrap().host, "implicit.test");

    // An internationalised domain's implicit MX is named in A-labels, as
    // MX names are (what a certificate or an MTA-STS policy lists; before,
    // `bücher.test`, which no certificate names). The sink has no SMTPUTF8,
    // which the recipient's address needs: 5.6.7 from the host reached.
    let o = send(&t, "bücher.test").await;
    assert_eq!(o.outcome.status(), "5.6.7", "implicit MX of an IDN: {o:?}");
    assert_eq!(o.remote.as_ref().unwrap().host, "xn--bcher-kva.test");

    let o = send(&t, "null.test").await;
    assert_eq!(kind(&o), "permanent", "{o:?}");
    assert_eq!(o.outcome.status(), "5.1.10");
    assert_eq!(o.remote, None);

    let o = send(&t, "nowhere.test").await;
    assert_eq!(kind(&o), "permanent", "NXDOMAIN: {o:?}");
    assert_eq!(o.outcome.status(), "5.1.2");
    assert!(reason(&o).contains("NXDOMAIN"), "{}", reason(&o));

    let o = send(&t, "nothing.test").await;
    assert_eq!(kind(&o), "permanent", "no MX, no A: {o:?}");
    assert_eq!(o.outcome.status(), "5.1.2");

    let o = send(&t, "broken.test").await;
    assert_eq!(kind(&o), "transient", "SERVFAIL: {o:?}");
    assert_eq!(o.outcome.status(), "4.4.3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_dns_server_is_transient() {
    // A UDP port nobody answers on: refused or timed out, never permanent.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    drop(silent);
    let t = SmtpTransport::new(&mx_config(addr, 25, "")).unwrap();
    let o = send(&t, "example.test").await;
    assert_eq!(kind(&o), "transient", "{o:?}");
    assert_eq!(o.outcome.status(), "4.4.3");
}

/// RFC 5321 §5.1: MX records none of which is usable are an error to
/// report. A domain whose every MX host does not exist (or has no address
/// records) bounces with 5.4.4 instead of being retried until the message
/// expires; one host that might come back (a DNS failure, a refused
/// connection) keeps it transient.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mx_hosts_that_do_not_exist_are_a_permanent_failure() {
    let port = free_port();
    let zone = Zone::new()
        .mx("gone.test", 10, "mx1.gone-provider.test")
        .mx("gone.test", 20, "mx2.gone-provider.test")
        .empty("mx2.gone-provider.test")
        .mx("half.test", 10, "mx1.gone-provider.test")
        .mx("half.test", 20, "broken.hosts.test")
        .servfail("broken.hosts.test")
        .mx("dead.test", 10, "mx1.gone-provider.test")
        .mx("dead.test", 20, "dead.hosts.test")
        .addr("dead.hosts.test", "127.0.0.4");
    let dns = DnsServer::start(zone).await;
    let t = SmtpTransport::new(&mx_config(dns.addr, port, "")).unwrap();

    let o = send(&t, "gone.test").await;
    assert_eq!(kind(&o), "permanent", "{o:?}");
    assert_eq!(o.outcome.status(), "5.4.4");
    assert!(
        reason(&o).contains("mx1.gone-provider.test"),
        "{}",
        reason(&o)
    );
    assert!(
        reason(&o).contains("mx2.gone-provider.test"),
        "{}",
        reason(&o)
    );

    let o = send(&t, "half.test").await;
    assert_eq!(kind(&o), "transient", "a DNS failure may pass: {o:?}");

    let o = send(&t, "dead.test").await;
    assert_eq!(
        kind(&o),
        "transient",
        "a refused connection may pass: {o:?}"
    );
}

/// RFC 5321 §5.1: an MX host that is this server, and every host of its
/// preference or a less preferred one, are not tried. Mail with nothing
/// better than this server fails with 5.4.6 ("loops back to myself");
/// a backup MX whose better hosts are down keeps the mail (transient)
/// instead of handing it to itself or to another backup of its level.
/// "This server" is a listener's port on its own address, any local
/// address for a wildcard listener, or `server.hostname`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mx_host_that_is_this_server_is_not_tried() {
    let port = free_port();
    let sink = Sink::start_at("127.0.0.2", port, &[]);
    let zone = Zone::new()
        .addr("self.hosts.test", "127.0.0.1")
        .addr("other.hosts.test", "127.0.0.2")
        .addr("dead.hosts.test", "127.0.0.4")
        .addr("client.ferry.test", "127.0.0.9")
        .mx("only-me.test", 10, "self.hosts.test")
        .mx("backup.test", 10, "dead.hosts.test")
        .mx("backup.test", 20, "self.hosts.test")
        .mx("backup.test", 30, "other.hosts.test")
        .mx("peers.test", 10, "self.hosts.test")
        .mx("peers.test", 10, "other.hosts.test")
        .mx("named.test", 10, "client.ferry.test")
        .mx("elsewhere.test", 10, "other.hosts.test");
    let dns = DnsServer::start(zone).await;
    let listener = |bind: &str| {
        // `server.hostname` is client.ferry.test (`common::config`).
        format!("[server.listener.smtp]\nbind = \"{bind}:{port}\"\n")
    };
    let t = SmtpTransport::new(&mx_config(dns.addr, port, &listener("127.0.0.1"))).unwrap();

    let o = send(&t, "only-me.test").await;
    assert_eq!(kind(&o), "permanent", "{o:?}");
    assert_eq!(o.outcome.status(), "5.4.6");
    assert!(
        reason(&o).contains("loops back to myself"),
        "{}",
        reason(&o)
    );

    let o = send(&t, "backup.test").await;
    assert_eq!(kind(&o), "transient", "the primary may come back: {o:?}");
    assert!(reason(&o).contains("dead.hosts.test"), "{}", reason(&o));
    assert!(
        reason(&o).contains("self.hosts.test: this server"),
        "{}",
        reason(&o)
    );

    let o = send(&t, "peers.test").await;
    assert_eq!(
        o.outcome.status(),
        "5.4.6",
        "its own level is discarded: {o:?}"
    );

    let o = send(&t, "named.test").await;
    assert_eq!(o.outcome.status(), "5.4.6", "by server.hostname: {o:?}");

    // 127.0.0.2 is not the listener's address: another server.
    let o = send(&t, "elsewhere.test").await;
    assert_eq!(kind(&o), "delivered", "{o:?}");
    assert_eq!(
        sink.wait_dumped(1).len(),
        1,
        "only elsewhere.test's message"
    );

    // A wildcard listener answers on every local address, 127.0.0.2 too.
    let t = SmtpTransport::new(&mx_config(dns.addr, port, &listener("0.0.0.0"))).unwrap();
    let o = send(&t, "elsewhere.test").await;
    assert_eq!(o.outcome.status(), "5.4.6", "{o:?}");
}

/// An MX host that answers EHLO with this server's own name is this
/// server reached through an address it cannot tell is its own (a NAT, a
/// load balancer): treated as the address check above treats it, as
/// Postfix does ("loops back to myself"). A relay route is not checked:
/// it names its next hop on purpose.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mx_host_that_greets_with_this_servers_name_is_this_server() {
    let port = free_port();
    // `server.hostname` is client.ferry.test (`common::config`).
    let natted = Sink::start_at("127.0.0.6", port, &["-h", "CLIENT.ferry.test"]);
    let other = Sink::start_at("127.0.0.7", port, &[]);
    let outbound_named = Sink::start_at("127.0.0.8", port, &["-h", "out.ferry.test"]);
    let zone = Zone::new()
        .addr("out.hosts.test", "127.0.0.8")
        .mx("outbound-named.test", 10, "out.hosts.test")
        .addr("nat.hosts.test", "127.0.0.6")
        .addr("other.hosts.test", "127.0.0.7")
        .addr("dead.hosts.test", "127.0.0.4")
        .mx("only-me.test", 10, "nat.hosts.test")
        .mx("backup.test", 10, "dead.hosts.test")
        .mx("backup.test", 20, "nat.hosts.test")
        .mx("backup.test", 30, "other.hosts.test")
        .mx("primary.test", 10, "other.hosts.test")
        .mx("primary.test", 20, "nat.hosts.test");
    let dns = DnsServer::start(zone).await;
    let direct =
        format!("[queue.route.direct]\ntype = \"relay\"\naddress = \"127.0.0.6\"\nport = {port}\n");
    let t = SmtpTransport::new(&mx_config(dns.addr, port, &direct)).unwrap();

    let o = send(&t, "only-me.test").await;
    assert_eq!(kind(&o), "permanent", "{o:?}");
    assert_eq!(o.outcome.status(), "5.4.6");
    assert!(
        reason(&o).contains("loops back to myself")
            && reason(&o).contains("greets as CLIENT.ferry.test"),
        "{}",
        reason(&o)
    );

    // A backup MX whose better host is down keeps the mail, and does not
    // hand it to a less preferred host either.
    let o = send(&t, "backup.test").await;
    assert_eq!(kind(&o), "transient", "{o:?}");
    assert!(
        reason(&o).contains("dead.hosts.test")
            && reason(&o).contains("nat.hosts.test: this server"),
        "{}",
        reason(&o)
    );

    // A better host that is up takes the mail; the loop is never seen.
    let o = send(&t, "primary.test").await;
    assert_eq!(kind(&o), "delivered", "{o:?}");
    assert_eq!(o.remote.as_ref().unwrap().host, "other.hosts.test");
    assert_eq!(other.wait_dumped(1).len(), 1);

    // The same host through a relay route: delivered.
    let o = send_via(&t, "direct", "only-me.test").await;
    assert_eq!(kind(&o), "delivered", "{o:?}");
    assert_eq!(natted.wait_dumped(1).len(), 1, "only the relayed message");

    // The name compared is server.hostname, the one this server greets
    // with, not the EHLO name the queue sends (`[queue.outbound]
    // hostname`): a host greeting with the outbound name is another.
    let outbound = format!("{direct}\n[queue.outbound]\nhostname = \"'out.ferry.test'\"\n");
    let t = SmtpTransport::new(&mx_config(dns.addr, port, &outbound)).unwrap();
    let o = send(&t, "only-me.test").await;
    assert_eq!(o.outcome.status(), "5.4.6", "{o:?}");
    let o = send(&t, "outbound-named.test").await;
    assert_eq!(kind(&o), "delivered", "{o:?}");
    assert_eq!(outbound_named.wait_dumped(1).len(), 1);
}

/// Recipients the first MX host puts off (450 at RCPT: a primary that
/// greylists) on a new connection are tried on the next MX host in the
/// same attempt, once: at most two MX sessions per attempt, as Postfix's
/// `smtp_mx_session_limit`. Before, they waited a whole retry interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recipients_put_off_by_one_mx_host_go_to_the_next() {
    let port = free_port();
    let _greylist_a = Sink::start_at("127.0.0.2", port, &["-r", "RCPT"]);
    let _greylist_b = Sink::start_at("127.0.0.3", port, &["-r", "RCPT"]);
    let backup = Sink::start_at("127.0.0.5", port, &[]);
    let zone = Zone::new()
        .addr("grey-a.hosts.test", "127.0.0.2")
        .addr("grey-b.hosts.test", "127.0.0.3")
        .addr("backup.hosts.test", "127.0.0.5")
        .mx("one.test", 10, "grey-a.hosts.test")
        .mx("one.test", 20, "backup.hosts.test")
        .mx("two.test", 10, "grey-a.hosts.test")
        .mx("two.test", 20, "grey-b.hosts.test")
        .mx("two.test", 30, "backup.hosts.test");
    let dns = DnsServer::start(zone).await;
    let t = SmtpTransport::new(&mx_config(dns.addr, port, "")).unwrap();

    let o = send(&t, "one.test").await;
    assert_eq!(kind(&o), "delivered", "{o:?}");
    assert_eq!(o.remote.as_ref().unwrap().host, "backup.hosts.test");
    assert_eq!(backup.wait_dumped(1).len(), 1);

    // Two hosts put it off: the third is left for the next attempt.
    let o = send(&t, "two.test").await;
    assert_eq!(kind(&o), "transient", "{o:?}");
    assert_eq!(o.remote.as_ref().unwrap().host, "grey-b.hosts.test");
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(backup.dumped().len(), 1, "the third MX host was not tried");
}
