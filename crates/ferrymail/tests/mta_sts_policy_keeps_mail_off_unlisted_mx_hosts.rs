//! MTA-STS (RFC 8461) through `ferrymail serve`, with every part real: a
//! hickory DNS server holding the recipient domain's MX and `_mta-sts`
//! records, a policy host on port 443 (Python's http.server behind its ssl
//! module), and two aiosmtpd MX hosts with STARTTLS and certificates from a
//! test CA that the server trusts through `SSL_CERT_FILE` (the operating
//! system trust store's override).
//!
//! The preferred MX (`rogue.sts.test`, preference 10) has a certificate
//! valid for its own name, as an attacker's host slipped into the MX
//! answer would; only the policy's list tells it apart. With the policy in
//! `enforce` mode the mail goes to the listed MX, over verified TLS, and
//! the delivery log says a policy applied; `[queue.outbound.tls] mta-sts =
//! "disable"` for another domain with the same records sends it to the
//! preferred host, which shows the records alone would. After a restart
//! with the policy host gone, the policy kept from the last run still
//! holds.

mod common;
mod dns_support;

use std::time::Duration;

use common::peers::*;
use common::*;
use dns_support::{DnsServer, Zone};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

#[test]
fn enforced_policy_sends_mail_only_to_the_listed_mx_over_verified_tls() {
    require("openssl");
    let pki = tempfile::tempdir().unwrap();
    let dir = pki.path();
    let file = |name: &str| dir.join(name).display().to_string();
    self_signed_cert("Ferry Test CA", &dir.join("ca.key"), &dir.join("ca.pem"));
    // Each host serves both domains, under both names.
    for name in ["rogue", "mx", "mta-sts"] {
        ca_signed_cert(
            dir,
            name,
            &format!("{name}.sts.test"),
            &format!("DNS:{name}.sts.test,DNS:{name}.off.test"),
        );
    }
    let tls = |name: &str| {
        json!({
            "tls_cert": file(&format!("{name}.pem")),
            "tls_key": file(&format!("{name}.key")),
        })
    };

    // 127.0.17.1: the preferred MX; .2: the listed one; .3: the policy host.
    let port = free_port();
    let rogue = RecordingSink::start_at("127.0.17.1", port, tls("rogue"));
    let listed = RecordingSink::start_at("127.0.17.2", port, tls("mx"));
    let requests = dir.join("policy-requests.log");
    let policy_host = python_peer(
        "mta_sts_policy_server.py",
        &json!({
            "host": "127.0.17.3",
            "port": 443,
            "cert": file("mta-sts.pem"),
            "key": file("mta-sts.key"),
            "policy": "version: STSv1\r\nmode: enforce\r\nmx: mx.sts.test\r\nmx: mx.off.test\r\nmax_age: 86400\r\n",
            "log": requests.display().to_string(),
        }),
    );
    // sts.test and off.test publish the same: off.test's mail is the
    // control, with MTA-STS disabled for it.
    let mut zone = Zone::new();
    for domain in ["sts.test", "off.test"] {
        zone = zone
            .mx(domain, 10, &format!("rogue.{domain}"))
            .mx(domain, 20, &format!("mx.{domain}"))
            .addr(&format!("rogue.{domain}"), "127.0.17.1")
            .addr(&format!("mx.{domain}"), "127.0.17.2")
            .addr(&format!("mta-sts.{domain}"), "127.0.17.3")
            .txt(&format!("_mta-sts.{domain}"), "v=STSv1; id=20261202T0000;");
    }
    let dns = DnsServer::start(zone);

    let delivery_log = dir.join("delivery.jsonl");
    let ca = file("ca.pem");
    let env = [("SSL_CERT_FILE", ca.as_str())];
    let mut server = Server::start_with_env(
        &format!(
            r#"[session.rcpt]
relay = "remote_ip == '127.0.0.1'"

[resolver]
type = "custom"
custom = ["udp://{dns}"]

[queue.route.viamx]
type = "mx"
port = {port}

[queue.strategy]
route = "'viamx'"

[queue.schedule]
retry = "[1h]"

[queue.outbound]
delivery-log = "{log}"

[queue.outbound.tls]
mta-sts = [ {{ if = "rcpt_domain == 'off.test'", then = "disable" }}, {{ else = "optional" }} ]
"#,
            dns = dns.addr,
            log = delivery_log.display(),
        ),
        &env,
    );

    let mut c = server.client();
    c.ehlo();
    queued_id(&c.send_message(
        "app@example.org",
        &["user@sts.test"],
        b"Subject: enforced\r\n\r\nbody\r\n",
    ));
    queued_id(&c.send_message(
        "app@example.org",
        &["user@off.test"],
        b"Subject: not enforced\r\n\r\nbody\r\n",
    ));
    c.cmd("QUIT");

    let got = listed.wait_transactions(1, WAIT);
    assert_eq!(got[0]["rcpt_tos"], json!(["user@sts.test"]));
    assert_eq!(got[0]["tls"], true, "STARTTLS to the listed MX");
    let control = rogue.wait_transactions(1, WAIT);
    assert_eq!(control[0]["rcpt_tos"], json!(["user@off.test"]));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(listed.transactions().len(), 1);
    assert_eq!(
        rogue.transactions().len(),
        1,
        "no sts.test mail to the unlisted MX"
    );

    // One fetch, over HTTPS that verified against the CA from SSL_CERT_FILE,
    // for sts.test only.
    let asked = std::fs::read_to_string(&requests).unwrap_or_default();
    assert_eq!(
        asked,
        "/.well-known/mta-sts.txt mta-sts.sts.test\n",
        "{}",
        server.log_text()
    );

    let log = wait_for(
        WAIT,
        "two delivery log lines",
        || server.log_text(),
        || {
            let text = std::fs::read_to_string(&delivery_log).unwrap_or_default();
            (text.lines().count() >= 2).then_some(text)
        },
    );
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let line = |domain: &str| {
        lines
            .iter()
            .find(|l| l["domain"] == domain)
            .unwrap_or_else(|| panic!("no line for {domain}: {log}"))
    };
    let sts = line("sts.test");
    assert_eq!(sts["outcome"], "delivered", "{log}");
    assert_eq!(sts["mx"], "mx.sts.test", "{log}");
    assert_eq!(sts["mta_sts"], "enforce", "{log}");
    assert!(
        sts["tls"].as_str().is_some_and(|v| v.starts_with("TLSv1")),
        "{log}"
    );
    let off = line("off.test");
    assert_eq!(off["mx"], "rogue.off.test", "{log}");
    assert_eq!(off["mta_sts"], serde_json::Value::Null, "{log}");
    let text = server.log_text();
    assert!(text.contains("MTA-STS policy fetched"), "{text}");
    let metrics = String::from_utf8(server.api_get("/metrics").1).unwrap();
    for line in [
        "ferrymail_mta_sts_policies{mode=\"enforce\"} 1\n",
        "ferrymail_mta_sts_policy_fetches_total{result=\"success\"} 1\n",
        "ferrymail_mta_sts_policy_fetches_total{result=\"failure\"} 0\n",
    ] {
        assert!(metrics.contains(line), "{line}{metrics}");
    }

    // A restart with the policy host gone (as an attacker who blocks it
    // would have it): the policy kept from the last run still holds, so
    // the mail still goes to the listed MX only, with no fetch.
    drop(policy_host);
    assert!(server.terminate().success());
    server.spawn_with_env(&env);
    let mut c = server.client();
    c.ehlo();
    queued_id(&c.send_message(
        "app@example.org",
        &["again@sts.test"],
        b"Subject: after a restart\r\n\r\nbody\r\n",
    ));
    c.cmd("QUIT");
    let got = listed.wait_transactions(2, WAIT);
    assert_eq!(got[1]["rcpt_tos"], json!(["again@sts.test"]));
    assert_eq!(got[1]["tls"], true);
    assert_eq!(rogue.transactions().len(), 1);
    let text = server.log_text();
    assert!(
        text.contains("MTA-STS policies kept from the last run"),
        "{text}"
    );
    let metrics = String::from_utf8(server.api_get("/metrics").1).unwrap();
    assert!(
        metrics.contains("ferrymail_mta_sts_policies{mode=\"enforce\"} 1\n"),
        "{metrics}"
    );
    assert_eq!(
        std::fs::read_to_string(&requests).unwrap().lines().count(),
        1,
        "no second fetch"
    );
}
