//! MTA-STS (RFC 8461) against real peers: a hickory DNS server with the
//! `_mta-sts` TXT records, an HTTPS policy server on port 443 (rustls, a
//! certificate from a test CA), an aiosmtpd next hop with STARTTLS and a
//! certificate from the same CA, and smtp-sink as a second MX that offers no
//! STARTTLS (the MX an attacker would slip in).
//!
//! Every domain's best MX (preference 10) is the smtp-sink "rogue" host, so
//! without a policy the mail goes there; the scenarios show what a policy
//! changes. Each scene has addresses of its own, 127.0.N.x with N from 1 to
//! 9, since the policy servers all need port 443 (the end-to-end test in
//! the ferrymail crate uses 127.0.17.x).

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use common::*;
use ferrymail_deliver::{RecipientOutcome, SmtpTransport, Transport};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ENFORCE: &str = "version: STSv1\r\nmode: enforce\r\nmx: mx.sts.test\r\nmax_age: 86400\r\n";

/// An HTTPS server on `ip:443` answering every request with `response`,
/// recording each request's head.
struct PolicyServer {
    requests: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for PolicyServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl PolicyServer {
    async fn start(ip: &str, cert: &Cert, response: String) -> PolicyServer {
        use rustls::pki_types::PrivateKeyDer;
        use rustls::pki_types::pem::PemObject;
        let key = PrivateKeyDer::from_pem_file(&cert.key).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der.clone()], key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let addr: SocketAddr = format!("{ip}:443").parse().unwrap();
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("bind {addr} (tests run as root): {e}"));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, seen, response) = (acceptor.clone(), seen.clone(), response.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    seen.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&head).into_owned());
                    let _ = tls.write_all(response.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        PolicyServer { requests, task }
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

/// A 200 response carrying `body` as text/plain.
fn policy(body: &str) -> String {
    http(200, "text/plain", body)
}

fn http(status: u16, content_type: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// The addresses and servers of one scenario, on 127.0.`net`.x: the
/// preferred MX `rogue.sts.test` at .1, the listed MX `mx.sts.test` at .2,
/// the policy host `mta-sts.sts.test` at .3.
struct Scene {
    dns: DnsServer,
    port: u16,
    rogue: Rogue,
    mx: PyPeer,
    policy: Option<PolicyServer>,
    ca: Cert,
    /// Certificate files, kept while the peers run.
    _certs: Vec<Cert>,
}

/// The MX that the policy does not list.
enum Rogue {
    /// smtp-sink: no STARTTLS.
    Plain(Sink),
    /// aiosmtpd with STARTTLS and a certificate from the CA for its own
    /// name: an attacker's host that would pass any check but the
    /// policy's list.
    Tls(PyPeer),
}

impl Rogue {
    fn received(&self) -> usize {
        match self {
            Rogue::Plain(s) => s.dumped().len(),
            Rogue::Tls(p) => p.transactions().len(),
        }
    }
}

#[derive(Default)]
struct Setup {
    /// The `_mta-sts` record's id; `None`: no record.
    id: Option<&'static str>,
    /// The policy server's response; `None`: no server.
    response: Option<String>,
    /// The listed MX presents a self-signed certificate instead of the CA's.
    self_signed_mx: bool,
    /// The rogue MX offers STARTTLS with a CA certificate.
    rogue_tls: bool,
}

impl Scene {
    async fn start(net: u8, setup: Setup) -> Scene {
        let ip = |host: u8| format!("127.0.{net}.{host}");
        let (ca, mut leaves) =
            ca_and_leaves(&[&["mx.sts.test"], &["mta-sts.sts.test"], &["rogue.sts.test"]]);
        let port = free_port();
        let tls_opts = |c: &Cert| {
            json!({
                "tls_cert": c.cert.display().to_string(),
                "tls_key": c.key.display().to_string(),
            })
        };
        let rogue = if setup.rogue_tls {
            Rogue::Tls(PyPeer::start_at(&ip(1), port, tls_opts(&leaves[2])))
        } else {
            Rogue::Plain(Sink::start_at(&ip(1), port, &[]))
        };
        if setup.self_signed_mx {
            leaves[0] = self_signed(&["mx.sts.test"]);
        }
        let mx = PyPeer::start_at(&ip(2), port, tls_opts(&leaves[0]));
        let mut zone = Zone::new()
            .mx("sts.test", 10, "rogue.sts.test")
            .mx("sts.test", 20, "mx.sts.test")
            .addr("rogue.sts.test", &ip(1))
            .addr("mx.sts.test", &ip(2))
            .addr("mta-sts.sts.test", &ip(3));
        if let Some(id) = setup.id {
            zone = zone.txt("_mta-sts.sts.test", &format!("v=STSv1; id={id};"));
        }
        let dns = DnsServer::start(zone).await;
        let policy = match setup.response {
            Some(r) => Some(PolicyServer::start(&ip(3), &leaves[1], r).await),
            None => None,
        };
        Scene {
            dns,
            port,
            rogue,
            mx,
            policy,
            ca,
            _certs: leaves,
        }
    }

    /// A transport trusting the scene's CA, with `extra` TOML.
    fn transport(&self, extra: &str) -> SmtpTransport {
        let cfg = config(&format!(
            "[resolver]\ntype = \"custom\"\ncustom = [\"udp://{}\"]\n\n[queue.route.viamx]\ntype = \"mx\"\nport = {}\n\n{extra}\n",
            self.dns.addr, self.port
        ));
        SmtpTransport::with_roots(&cfg, std::slice::from_ref(&self.ca.der)).unwrap()
    }

    fn requests(&self) -> Vec<String> {
        self.policy
            .as_ref()
            .map(|p| p.requests())
            .unwrap_or_default()
    }
}

async fn send(t: &SmtpTransport, subject: &str) -> RecipientOutcome {
    send_from(t, "s@c.test", subject).await
}

async fn send_from(t: &SmtpTransport, sender: &str, subject: &str) -> RecipientOutcome {
    let j = job(
        envelope(sender, &["user@sts.test"]),
        &message(subject),
        "viamx",
        "sts.test",
    );
    tokio::time::timeout(std::time::Duration::from_secs(60), t.deliver(j))
        .await
        .unwrap()
        .remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enforce_delivers_only_to_listed_mx_over_verified_tls() {
    let scene = Scene::start(
        1,
        Setup {
            id: Some("20261202"),
            response: Some(policy(ENFORCE)),
            rogue_tls: true,
            ..Setup::default()
        },
    )
    .await;

    // Without MTA-STS the best MX gets the mail: an unlisted host whose
    // certificate is valid for its own name.
    let plain = scene.transport("[queue.outbound.tls]\nmta-sts = \"disable\"\n");
    let o = send(&plain, "disabled").await;
    assert_eq!(kind(&o), "delivered", "{o:?}");
    assert_eq!(o.remote.as_ref().unwrap().host, "rogue.sts.test");
    assert_eq!(scene.rogue.received(), 1);
    assert_eq!(plain.mta_sts_fetches(), 0);
    assert!(scene.requests().is_empty());

    // By default (optional) the policy is fetched and enforced: only the
    // listed MX, over STARTTLS with a certificate that verifies.
    let t = scene.transport("");
    let o = send(&t, "enforced").await;
    assert_eq!(kind(&o), "delivered", "{o:?}");
    assert_eq!(o.remote.as_ref().unwrap().host, "mx.sts.test");
    assert!(o.remote.as_ref().unwrap().tls.is_some(), "{o:?}");
    let tx = scene.mx.transactions();
    assert_eq!(tx.len(), 1);
    assert_eq!(tx[0]["tls"], true);
    assert_eq!(scene.rogue.received(), 1, "only the first message");
    let requests = scene.requests();
    assert_eq!(requests.len(), 1);
    assert!(
        requests[0].starts_with("GET /.well-known/mta-sts.txt HTTP/1.1\r\n"),
        "{requests:?}"
    );
    assert!(
        requests[0]
            .to_ascii_lowercase()
            .contains("host: mta-sts.sts.test\r\n"),
        "{requests:?}"
    );

    // The policy is cached under its id: no second fetch.
    let o = send(&t, "cached").await;
    assert_eq!(kind(&o), "delivered", "{o:?}");
    assert_eq!(o.remote.as_ref().unwrap().host, "mx.sts.test");
    assert_eq!(t.mta_sts_fetches(), 1);
    assert_eq!(scene.requests().len(), 1);
    assert_eq!(scene.mx.transactions().len(), 2);
    assert_eq!(scene.rogue.received(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enforce_defers_when_the_certificate_does_not_verify() {
    // The listed MX presents a self-signed certificate: an attacker's, as
    // far as the sender can tell.
    let setup = |mode: &str| Setup {
        id: Some("1"),
        response: Some(policy(&ENFORCE.replace("enforce", mode))),
        self_signed_mx: true,
        ..Setup::default()
    };
    let scene = Scene::start(2, setup("enforce")).await;
    let t = scene.transport("");
    let o = send(&t, "enforced").await;
    assert_eq!(kind(&o), "transient", "{o:?}");
    let r = reason(&o);
    assert!(r.starts_with("4.7.5 "), "{r}");
    assert!(
        r.contains("rogue.sts.test: not an MX host of the MTA-STS policy of sts.test"),
        "{r}"
    );
    assert!(r.contains("mx.sts.test["), "{r}");
    assert!(r.contains("TLS"), "{r}");
    assert!(scene.mx.transactions().is_empty());
    assert_eq!(scene.rogue.received(), 0);

    // The same policy in testing mode changes nothing: the best MX, as
    // without a policy.
    let scene = Scene::start(3, setup("testing")).await;
    let t = scene.transport("");
    let o = send(&t, "testing").await;
    assert_eq!(kind(&o), "delivered", "{o:?}");
    assert_eq!(o.remote.as_ref().unwrap().host, "rogue.sts.test");
    assert_eq!(t.mta_sts_fetches(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enforce_requires_starttls_of_a_listed_mx() {
    // The policy lists the host that offers no STARTTLS too.
    let scene = Scene::start(
        4,
        Setup {
            id: Some("1"),
            response: Some(policy(
                &ENFORCE.replace("mx: mx.sts.test", "mx: *.sts.test"),
            )),
            self_signed_mx: true,
            ..Setup::default()
        },
    )
    .await;
    let t = scene.transport("");
    let o = send(&t, "no starttls").await;
    assert_eq!(kind(&o), "transient", "{o:?}");
    let r = reason(&o);
    assert!(r.contains("rogue.sts.test["), "{r}");
    assert!(r.contains("STARTTLS is not offered"), "{r}");
    assert_eq!(scene.rogue.received(), 0, "nothing sent in plain text");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_usable_policy_means_none_unless_required() {
    let require = "[queue.outbound.tls]\nmta-sts = \"require\"\n";
    // No TXT record: optional delivers as usual, require defers.
    let scene = Scene::start(5, Setup::default()).await;
    let o = send(&scene.transport(""), "no record").await;
    assert_eq!(kind(&o), "delivered", "{o:?}");
    assert_eq!(o.remote.as_ref().unwrap().host, "rogue.sts.test");
    let o = send(&scene.transport(require), "required").await;
    assert_eq!(kind(&o), "transient", "{o:?}");
    let r = reason(&o);
    assert!(
        r.starts_with("4.7.5 MTA-STS is required for sts.test but no policy is available"),
        "{r}"
    );
    assert!(r.contains("no _mta-sts record"), "{r}");
    assert_eq!(scene.rogue.received(), 1);
    // An address literal has no policy: require defers it too.
    let literal = job(
        envelope("s@c.test", &["u@[127.0.5.1]"]),
        &message("literal"),
        "viamx",
        "[127.0.5.1]",
    );
    let o = scene.transport(require).deliver(literal).await.remove(0);
    assert_eq!(kind(&o), "transient", "{o:?}");
    assert!(
        reason(&o).contains("is an address literal"),
        "{}",
        reason(&o)
    );

    // A record, but the policy host redirects (§3.3: not followed),
    // answers with HTML or 404, or serves a broken policy: no policy, so
    // mail goes on as before, and `require` says why it waits.
    for (net, response, why) in [
        (6, http(301, "text/plain", ""), "HTTP status 301"),
        (
            7,
            http(200, "text/html", ENFORCE),
            "Content-Type is text/html",
        ),
        (8, http(404, "text/plain", "no"), "HTTP status 404"),
        (
            9,
            policy("version: STSv1\r\nmode: enforce\r\n"),
            "no max_age",
        ),
    ] {
        let scene = Scene::start(
            net,
            Setup {
                id: Some("1"),
                response: Some(response),
                ..Setup::default()
            },
        )
        .await;
        let o = send(&scene.transport(""), "bad policy").await;
        assert_eq!(kind(&o), "delivered", "{why}: {o:?}");
        assert_eq!(o.remote.as_ref().unwrap().host, "rogue.sts.test", "{why}");
        assert_eq!(scene.requests().len(), 1, "{why}");
        let o = send(&scene.transport(require), "required").await;
        assert_eq!(kind(&o), "transient", "{why}: {o:?}");
        assert!(reason(&o).contains(why), "{why}: {}", reason(&o));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_deliveries_fetch_the_policy_once() {
    let scene = Scene::start(
        10,
        Setup {
            id: Some("1"),
            response: Some(policy(ENFORCE)),
            ..Setup::default()
        },
    )
    .await;
    let t = scene.transport("");
    let subjects: Vec<String> = (0..8).map(|i| format!("at once {i}")).collect();
    let outcomes = futures_join(subjects.iter().map(|s| send(&t, s))).await;
    for o in &outcomes {
        assert_eq!(kind(o), "delivered", "{o:?}");
        assert_eq!(o.remote.as_ref().unwrap().host, "mx.sts.test");
    }
    assert_eq!(t.mta_sts_fetches(), 1);
    assert_eq!(scene.requests().len(), 1);
    assert_eq!(scene.rogue.received(), 0);
}

/// Runs the futures concurrently and returns their outputs in order.
async fn futures_join<F: std::future::Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut pinned: Vec<_> = futures.map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, slot) in pinned.iter_mut().zip(out.iter_mut()) {
            if slot.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *slot = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(Option::unwrap).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enforce_outranks_route_settings_max_mx_and_pooled_connections() {
    let scene = Scene::start(
        11,
        Setup {
            id: Some("1"),
            response: Some(policy(ENFORCE)),
            rogue_tls: true,
            ..Setup::default()
        },
    )
    .await;

    // The route says no TLS and one MX host: the policy still gets TLS,
    // and its listed host, though an unlisted one is preferred.
    let t = scene.transport("tls.mode = \"disable\"\n\n[queue.outbound]\nmax-mx = 1\n");
    let o = send(&t, "route says plain").await;
    assert_eq!(kind(&o), "delivered", "{o:?}");
    assert_eq!(o.remote.as_ref().unwrap().host, "mx.sts.test");
    assert_eq!(scene.mx.transactions()[0]["tls"], true);

    // A connection pooled for a delivery the policy did not apply to is
    // not reused for one it applies to.
    let t = scene.transport(
        "[queue.outbound.tls]\nmta-sts = [ { if = \"sender == 'plain@c.test'\", then = \"disable\" }, { else = \"optional\" } ]\n",
    );
    let o = send_from(&t, "plain@c.test", "no policy").await;
    assert_eq!(o.remote.as_ref().unwrap().host, "rogue.sts.test", "{o:?}");
    let o = send(&t, "policy").await;
    assert_eq!(kind(&o), "delivered", "{o:?}");
    assert_eq!(o.remote.as_ref().unwrap().host, "mx.sts.test");
    assert_eq!(scene.rogue.received(), 1);
    assert_eq!(scene.mx.transactions().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enforce_with_no_listed_mx_defers_with_4_7_5() {
    let scene = Scene::start(
        12,
        Setup {
            id: Some("1"),
            response: Some(policy(
                &ENFORCE.replace("mx: mx.sts.test", "mx: elsewhere.test"),
            )),
            rogue_tls: true,
            ..Setup::default()
        },
    )
    .await;
    let o = send(&scene.transport(""), "nowhere").await;
    assert_eq!(kind(&o), "transient", "{o:?}");
    let r = reason(&o);
    assert!(r.starts_with("4.7.5 rogue.sts.test: not an MX host of the MTA-STS policy of sts.test (mx: elsewhere.test); mx.sts.test: not an MX host"), "{r}");
    assert_eq!(scene.rogue.received(), 0);
    assert!(scene.mx.transactions().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_policy_is_refreshed_before_it_expires() {
    // max_age 2 s: a refresh is due after 1 s (half of it), in the
    // background, while deliveries go on under the kept policy.
    let scene = Scene::start(
        13,
        Setup {
            id: Some("1"),
            response: Some(policy(&ENFORCE.replace("86400", "2"))),
            ..Setup::default()
        },
    )
    .await;
    let t = scene.transport("");
    assert_eq!(kind(&send(&t, "first").await), "delivered");
    assert_eq!(scene.requests().len(), 1);
    assert_eq!(kind(&send(&t, "within").await), "delivered");
    assert_eq!(scene.requests().len(), 1, "not due yet");
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let o = send(&t, "refresh due").await;
    assert_eq!(o.remote.as_ref().unwrap().host, "mx.sts.test", "{o:?}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while scene.requests().len() < 2 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(scene.requests().len(), 2, "refreshed once");
    assert_eq!(t.mta_sts_fetches(), 2);
    assert_eq!(scene.rogue.received(), 0);
}
