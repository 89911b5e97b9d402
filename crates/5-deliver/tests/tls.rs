//! TLS next hops (aiosmtpd with certificates made by rcgen): opportunistic
//! STARTTLS encrypts without verifying; `require` verifies against a private
//! CA, and a certificate that does not verify fails the host;
//! `require` without STARTTLS fails; opportunistic STARTTLS that is
//! refused or whose handshake fails falls back to plain text, `require`
//! does not; `disable` stays in plain text;
//! implicit TLS; AUTH PLAIN and LOGIN over TLS.

mod common;

use common::*;
use ferrymail_deliver::SmtpTransport;
use serde_json::json;

fn tls_peer(cert: &Cert, extra: serde_json::Value) -> PyPeer {
    let mut opts = json!({
        "tls_cert": cert.cert.display().to_string(),
        "tls_key": cert.key.display().to_string(),
    });
    for (k, v) in extra.as_object().unwrap() {
        opts[k] = v.clone();
    }
    PyPeer::start(opts)
}

async fn one(t: &SmtpTransport) -> ferrymail_deliver::RecipientOutcome {
    deliver(
        t,
        job(
            envelope("s@c.test", &["a@hop.test"]),
            &message("tls"),
            "hop",
            "hop.test",
        ),
    )
    .await
    .remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opportunistic_starttls_encrypts_without_verifying() {
    // The default mode is `optional`: RFC 7435 opportunistic security, like
    // Postfix's `may`. A self-signed certificate (as a fresh Ferrymail
    // generates) still gets the mail, encrypted.
    let cert = self_signed(&["peer.ferry.test"]);
    let peer = tls_peer(&cert, json!({}));
    let t = SmtpTransport::new(&relay_config(peer.port, "smtp", "")).unwrap();
    let o = one(&t).await;
    assert_eq!(kind(&o), "delivered", "{o:?}");
    assert_eq!(o.remote.as_ref().unwrap().tls.as_deref(), Some("TLSv1.3"));
    assert_eq!(peer.transactions()[0]["tls"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verified_against_a_private_ca() {
    let (ca, leaf) = ca_and_leaf(&["127.0.0.1"]);
    let peer = tls_peer(&leaf, json!({}));
    let cfg = relay_config(peer.port, "smtp", "tls.mode = \"require\"");
    let t = SmtpTransport::with_roots(&cfg, std::slice::from_ref(&ca.der)).unwrap();
    let o = one(&t).await;
    assert_eq!(kind(&o), "delivered", "{o:?}");
    assert!(o.remote.as_ref().unwrap().tls.is_some());
    // Without the CA the same server fails verification: transient 4.7.5,
    // and nothing is sent in plain text instead.
    let t = SmtpTransport::new(&cfg).unwrap();
    let o = one(&t).await;
    assert_eq!(kind(&o), "transient", "{o:?}");
    assert_eq!(o.outcome.status(), "4.7.5");
    assert!(reason(&o).contains("TLS failed"), "{}", reason(&o));
    assert_eq!(peer.transactions().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_name_fails_verification() {
    let (ca, leaf) = ca_and_leaf(&["other.ferry.test"]);
    let peer = tls_peer(&leaf, json!({}));
    let cfg = relay_config(peer.port, "smtp", "tls.mode = \"require\"");
    let t = SmtpTransport::with_roots(&cfg, std::slice::from_ref(&ca.der)).unwrap();
    let o = one(&t).await;
    assert_eq!(kind(&o), "transient", "{o:?}");
    assert!(
        reason(&o).to_lowercase().contains("certificate"),
        "{}",
        reason(&o)
    );
    assert!(peer.transactions().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_without_starttls_fails() {
    let peer = PyPeer::start(json!({}));
    let t = SmtpTransport::new(&relay_config(peer.port, "smtp", "tls.mode = \"require\"")).unwrap();
    let o = one(&t).await;
    assert_eq!(kind(&o), "transient", "{o:?}");
    assert_eq!(o.outcome.status(), "4.7.4");
    assert!(peer.transactions().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opportunistic_starttls_refused_goes_on_in_plain_text() {
    // RFC 3207 §4: a 454 to STARTTLS leaves the session in plain text, and
    // an opportunistic client may go on with it rather than defer the mail.
    let cert = self_signed(&["peer.ferry.test"]);
    let refusal = "454 4.7.0 TLS not available due to temporary reason";
    let peer = tls_peer(&cert, json!({ "starttls_reply": refusal }));
    let t = SmtpTransport::new(&relay_config(peer.port, "smtp", "")).unwrap();
    let o = one(&t).await;
    assert_eq!(kind(&o), "delivered", "{o:?}");
    assert_eq!(o.remote.as_ref().unwrap().tls, None);
    assert_eq!(peer.transactions().len(), 1);
    assert_eq!(peer.transactions()[0]["tls"], false);

    // `require` never sends in the clear: the refusal fails this host.
    let cfg = relay_config(peer.port, "smtp", "tls.mode = \"require\"");
    let o = one(&SmtpTransport::new(&cfg).unwrap()).await;
    assert_eq!(kind(&o), "transient", "{o:?}");
    assert_eq!(o.outcome.status(), "4.7.5");
    assert!(reason(&o).contains("454"), "{}", reason(&o));
    assert_eq!(peer.transactions().len(), 1, "nothing more was sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opportunistic_handshake_failure_retries_in_plain_text() {
    // A server that offers STARTTLS but speaks only TLS 1.0, which rustls
    // does not: the handshake fails and takes the connection with it. An
    // opportunistic client connects again without STARTTLS (Postfix's
    // `may`, RFC 7435) instead of deferring the mail until it expires.
    let cert = self_signed(&["peer.ferry.test"]);
    let peer = tls_peer(&cert, json!({ "tls_max_version": "TLSv1" }));
    let t = SmtpTransport::new(&relay_config(peer.port, "smtp", "")).unwrap();
    let o = one(&t).await;
    assert_eq!(kind(&o), "delivered", "{o:?}");
    assert_eq!(o.remote.as_ref().unwrap().tls, None);
    assert_eq!(peer.transactions().len(), 1);
    assert_eq!(peer.transactions()[0]["tls"], false);

    // With `require` the same failure is the host's: transient 4.7.5, and
    // nothing goes out in plain text.
    let cfg = relay_config(
        peer.port,
        "smtp",
        "tls.mode = \"require\"\ntls.allow-invalid-certs = true",
    );
    let o = one(&SmtpTransport::new(&cfg).unwrap()).await;
    assert_eq!(kind(&o), "transient", "{o:?}");
    assert_eq!(o.outcome.status(), "4.7.5");
    assert!(reason(&o).contains("TLS failed"), "{}", reason(&o));
    assert_eq!(peer.transactions().len(), 1, "nothing more was sent");

    // Nor does a route with AUTH credentials fall back (as in Postfix): they
    // are not for a connection an attacker may have downgraded.
    let cfg = relay_config(
        peer.port,
        "smtp",
        "auth.username = \"ferry\"\nauth.secret = \"s3cret\"",
    );
    let o = one(&SmtpTransport::new(&cfg).unwrap()).await;
    assert_eq!(kind(&o), "transient", "{o:?}");
    assert!(reason(&o).contains("TLS failed"), "{}", reason(&o));
    assert_eq!(peer.transactions().len(), 1, "nothing more was sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_stays_plain() {
    let cert = self_signed(&["peer.ferry.test"]);
    let peer = tls_peer(&cert, json!({}));
    let t = SmtpTransport::new(&relay_config(peer.port, "smtp", "tls.mode = \"disable\"")).unwrap();
    let o = one(&t).await;
    assert_eq!(kind(&o), "delivered", "{o:?}");
    assert_eq!(o.remote.as_ref().unwrap().tls, None);
    assert_eq!(peer.transactions()[0]["tls"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn implicit_tls() {
    let cert = self_signed(&["peer.ferry.test"]);
    let peer = tls_peer(&cert, json!({"implicit_tls": true}));
    let t = SmtpTransport::new(&relay_config(
        peer.port,
        "smtp",
        "tls.implicit = true\ntls.allow-invalid-certs = true",
    ))
    .unwrap();
    let o = one(&t).await;
    assert_eq!(kind(&o), "delivered", "{o:?}");
    assert!(o.remote.as_ref().unwrap().tls.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_plain_and_login_over_starttls() {
    let cert = self_signed(&["peer.ferry.test"]);
    for (exclude, secret, want) in [
        (json!([]), "s3cret", "delivered"),
        (json!(["PLAIN"]), "s3cret", "delivered"),
        (json!([]), "wrong", "transient"),
    ] {
        let peer = tls_peer(
            &cert,
            json!({"auth": {"user": "ferry", "password": "s3cret"}, "auth_exclude": exclude}),
        );
        let t = SmtpTransport::new(&relay_config(
            peer.port,
            "smtp",
            &format!("tls.allow-invalid-certs = true\nauth.username = \"ferry\"\nauth.secret = \"{secret}\""),
        ))
        .unwrap();
        let o = one(&t).await;
        assert_eq!(kind(&o), want, "exclude {exclude}, secret {secret}: {o:?}");
        if want == "delivered" {
            assert_eq!(peer.transactions()[0]["auth"], "ferry");
        } else {
            assert!(reason(&o).contains("535"), "{}", reason(&o));
        }
    }
}

/// A route with AUTH credentials verifies the certificate even in the
/// default `optional` mode: the password goes to the next hop named, not
/// to whoever answered STARTTLS with any certificate. Before, the
/// self-signed peer below got the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_credentials_go_only_over_a_verified_certificate() {
    let cert = self_signed(&["peer.ferry.test"]);
    let peer = tls_peer(
        &cert,
        json!({"auth": {"user": "ferry", "password": "s3cret"}}),
    );
    let t = SmtpTransport::new(&relay_config(
        peer.port,
        "smtp",
        "auth.username = \"ferry\"\nauth.secret = \"s3cret\"",
    ))
    .unwrap();
    let o = one(&t).await;
    assert_eq!(kind(&o), "transient", "{o:?}");
    assert!(reason(&o).contains("TLS failed"), "{}", reason(&o));
    assert!(peer.transactions().is_empty(), "nothing was sent");
}
