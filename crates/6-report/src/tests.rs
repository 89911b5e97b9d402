//! The reporter as a whole, against a real embedded spool: which events
//! give which notifications, one per message and kind, their envelopes and
//! routing (bounce queue), double bounces, DKIM keys at start.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ferrymail_deliver::{Remote, RemoteReply};
use ferrymail_schedule::{Event, EventKind};
use ferrymail_spool::embedded::EmbeddedStore;
use ferrymail_spool::{
    Envelope, IdGenerator, MessageId, Notify, QueueEntry, Queued, Recipient, Ret, Source, Spool,
};
use tokio::sync::mpsc;

use crate::*;

/// An Ed25519 key (PKCS#8 v1, as `openssl genpkey -algorithm ed25519`
/// writes it), for tests only.
const ED25519_PEM: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF\n-----END PRIVATE KEY-----\n";

fn config(extra: &str) -> ferrymail_config::Config {
    let text = format!("[server]\nhostname = \"mx.ferry.test\"\n\n{extra}");
    ferrymail_config::parse(&text, Path::new("/t.toml")).unwrap_or_else(|e| panic!("{e}"))
}

fn signed_config(extra: &str) -> ferrymail_config::Config {
    config(&format!(
        "[report.dsn]\nsign = \"['ed']\"\n{extra}\n\n[signature.ed]\nprivate-key = \"\"\"\n{ED25519_PEM}\"\"\"\n\
         domain = \"ferry.test\"\nselector = \"s1\"\nalgorithm = \"ed25519-sha256\"\n"
    ))
}

struct Fixture {
    _dir: tempfile_dir::Dir,
    spool: Spool,
    queued: mpsc::UnboundedReceiver<Queued>,
    reporter: Option<Reporter>,
}

/// A temporary directory removed on drop (no tempfile crate needed).
mod tempfile_dir {
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new() -> Dir {
            use std::sync::atomic::{AtomicUsize, Ordering};
            static N: AtomicUsize = AtomicUsize::new(0);
            let p = std::env::temp_dir().join(format!(
                "ferrymail-report-test-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn fixture(cfg: &ferrymail_config::Config) -> Fixture {
    let dir = tempfile_dir::Dir::new();
    let store = EmbeddedStore::open(&dir.0).unwrap();
    let spool = Spool {
        data: store.clone(),
        blob: store,
        unified: true,
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let reporter = Reporter::new(cfg, spool.clone(), Arc::new(IdGenerator::new(1)), tx).unwrap();
    Fixture {
        _dir: dir,
        spool,
        queued: rx,
        reporter: Some(reporter),
    }
}

fn original(sender: &str, notify: [Notify; 3]) -> Arc<Envelope> {
    Arc::new(Envelope {
        id: MessageId(42 << 22),
        sender: sender.into(),
        recipients: notify
            .iter()
            .enumerate()
            .map(|(i, n)| Recipient {
                address: format!("r{i}@dest.test"),
                orcpt: None,
                notify: *n,
            })
            .collect(),
        size: 100,
        arrived: 1_767_323_045_000,
        body: ferrymail_spool::BodyType::SevenBit,
        smtputf8: false,
        ret: Some(Ret::Full),
        envid: Some("e-1".into()),
        mt_priority: 0,
        source: Source::Smtp,
        remote_ip: None,
        helo: None,
        authenticated_as: None,
    })
}

fn reply(code: u16, status: &str) -> RemoteReply {
    RemoteReply {
        code,
        status: Some(status.into()),
        text: "said so".into(),
    }
}

fn event(env: &Arc<Envelope>, rcpt: u32, kind: EventKind) -> Event {
    Event {
        envelope: env.clone(),
        rcpt,
        queue: "default".into(),
        kind,
        attempt_at: env.arrived + 5000,
        attempts: 1,
        remote: Some(Remote {
            host: "hop.dest.test".into(),
            ip: "127.0.0.1".parse().unwrap(),
            port: 25,
            tls: None,
            dsn: false,
            lmtp: false,
            source: None,
        }),
        contents: Some(bytes::Bytes::from_static(
            b"Subject: hi\r\nMessage-ID: <m@x>\r\n\r\nbody\r\n",
        )),
    }
}

/// The first notify age of `env`'s recipients passed: a 450, retried
/// for a day more.
fn first_delay(env: &Envelope) -> EventKind {
    EventKind::Delayed {
        notify_num: 1,
        will_retry_until: Some(env.arrived + 86_400_000),
        reason: "busy".into(),
        reply: Some(reply(450, "4.2.0")),
    }
}

fn failed() -> EventKind {
    EventKind::Failed {
        reason: "rejected".into(),
        reply: Some(reply(550, "5.1.1")),
    }
}

/// Runs the reporter over `events` and returns every notification it
/// queued: (envelope, entries, contents).
async fn run(f: &mut Fixture, events: Vec<Event>) -> Vec<(Envelope, Vec<QueueEntry>, Vec<u8>)> {
    let (tx, rx) = mpsc::unbounded_channel();
    let running = f.reporter.take().unwrap().start(
        rx,
        ReportSettings {
            quiet: Duration::from_millis(50),
            ..ReportSettings::default()
        },
    );
    for e in events {
        tx.send(e).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    running.finish().await;
    let mut out = Vec::new();
    while let Ok(queued) = f.queued.try_recv() {
        let entries = queued.entries;
        let id = entries[0].key.message;
        let env = f.spool.data.envelope(id).await.unwrap().expect("envelope");
        // The domains come along, so the queue engine need not read the
        // envelope back.
        let domains: Vec<String> = entries
            .iter()
            .map(|e| env.rcpt_domain(e.key.rcpt))
            .collect();
        assert_eq!(queued.domains, Some(domains), "domains handed over");
        let stored = f.spool.data.entries(id).await.unwrap();
        assert_eq!(stored, entries, "what the queue engine got is durable");
        let contents = f.spool.blob.get(id).await.unwrap().expect("contents");
        out.push((env, entries, contents.to_vec()));
    }
    out
}

/// One notification per message and kind: two failures of one job become
/// one notice; a delivery to a DSN-capable hop and a NOTIFY=NEVER failure
/// give none; the notice has the null sender, goes to the original sender,
/// is `source = dsn` on the bounce queue and schedule, and is signed.
#[tokio::test]
async fn one_failure_notice_per_message_on_the_bounce_queue() {
    let cfg = signed_config("");
    let mut f = fixture(&cfg);
    let env = original(
        "sender@sender.test",
        [Notify::Default, Notify::Default, Notify::Never],
    );
    let events = vec![
        event(&env, 1, failed()),
        event(&env, 0, failed()),
        event(&env, 2, failed()),
    ];
    let got = run(&mut f, events).await;
    assert_eq!(got.len(), 1, "one notice");
    let (denv, entries, contents) = &got[0];
    assert_eq!(denv.sender, "");
    assert_eq!(denv.source, Source::Dsn);
    assert_eq!(denv.recipients.len(), 1);
    assert_eq!(denv.recipients[0].address, "sender@sender.test");
    assert_eq!(denv.size, contents.len() as u64);
    assert!(!denv.smtputf8);
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].queue, "bounce");
    assert_eq!(entries[0].schedule, "bounce");
    let text = String::from_utf8_lossy(contents);
    assert!(text.starts_with("DKIM-Signature: "), "{text}");
    assert!(text.contains("a=ed25519-sha256"), "{text}");
    assert!(text.contains("d=ferry.test"), "{text}");
    assert!(text.contains("s=s1"), "{text}");
    assert!(text.contains("Final-Recipient: rfc822; r0@dest.test"));
    assert!(text.contains("Final-Recipient: rfc822; r1@dest.test"));
    assert!(!text.contains("r2@dest.test"), "NOTIFY=NEVER");
    assert!(text.contains("Content-Type: message/rfc822"), "RET=FULL");
}

/// Kinds are separate notices; delays only with NOTIFY=DELAY (the default
/// is FAILURE only); success only with NOTIFY=SUCCESS, and never for an
/// SMTP hop that supports DSN.
#[tokio::test]
async fn kinds_and_the_default_notify() {
    let cfg = config("");
    let mut f = fixture(&cfg);
    let all = Notify::On {
        success: true,
        failure: true,
        delay: true,
    };
    let env = original("s@sender.test", [Notify::Default, all, all]);
    let delayed = first_delay(&env);
    let events = vec![
        event(&env, 0, delayed.clone()),
        event(&env, 1, delayed),
        event(
            &env,
            2,
            EventKind::Delivered {
                reply: reply(250, "2.0.0"),
                lmtp: false,
            },
        ),
    ];
    let got = run(&mut f, events).await;
    assert_eq!(got.len(), 1, "the delay notice of r1 only");
    let text = String::from_utf8_lossy(&got[0].2);
    assert!(text.contains("Action: delayed"));
    assert!(text.contains("Final-Recipient: rfc822; r1@dest.test"));
    assert!(
        !text.contains("r0@dest.test"),
        "absent NOTIFY: no delay notice"
    );
    assert!(!text.contains("DKIM-Signature"), "no signer configured");

    let mut f = fixture(&cfg);
    let env = original("s@sender.test", [all, all, all]);
    let events = vec![
        event(&env, 0, failed()),
        event(
            &env,
            1,
            EventKind::Relayed {
                reply: reply(250, "2.0.0"),
            },
        ),
        event(
            &env,
            2,
            EventKind::Delivered {
                reply: reply(250, "2.1.5"),
                lmtp: true,
            },
        ),
    ];
    let got = run(&mut f, events).await;
    assert_eq!(got.len(), 2, "a failure notice and a success notice");
    let texts: Vec<String> = got
        .iter()
        .map(|g| String::from_utf8_lossy(&g.2).to_string())
        .collect();
    let success = texts
        .iter()
        .find(|t| t.contains("Action: relayed"))
        .unwrap();
    assert!(success.contains("Action: delivered"));
    assert!(success.contains("Status: 2.1.5"));
    assert!(!success.contains("Action: failed"));
}

/// The null sender never gets a notification; with `double-bounce` the
/// postmaster gets a copy of failures, but not of a failed copy.
#[tokio::test]
async fn null_sender_and_double_bounce() {
    let mut f = fixture(&config(""));
    let env = original("", [Notify::Default; 3]);
    assert!(run(&mut f, vec![event(&env, 0, failed())]).await.is_empty());

    let cfg = config("[report.dsn]\ndouble-bounce = \"postmaster@ferry.test\"\n");
    let mut f = fixture(&cfg);
    let got = run(&mut f, vec![event(&env, 0, failed())]).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0.recipients[0].address, "postmaster@ferry.test");
    assert_eq!(got[0].0.sender, "");
    let text = String::from_utf8_lossy(&got[0].2);
    assert!(text.contains("Subject: Postmaster copy: undeliverable bounce"));

    // The copy itself fails: no copy of the copy.
    let mut copy = (*original("", [Notify::Default; 3])).clone();
    copy.source = Source::Dsn;
    copy.recipients.truncate(1);
    copy.recipients[0].address = "Postmaster@ferry.test".into();
    let copy = Arc::new(copy);
    let mut f = fixture(&cfg);
    assert!(
        run(&mut f, vec![event(&copy, 0, failed())])
            .await
            .is_empty()
    );
}

/// SMTPUTF8 is kept on the notice only when it has non-ASCII in it.
#[tokio::test]
async fn smtputf8_only_when_needed() {
    let cfg = config("");
    let mut e = (*original("s@sender.test", [Notify::Default; 3])).clone();
    e.smtputf8 = true;
    let ascii = Arc::new(e.clone());
    e.sender = "jos\u{e9}@sender.test".into();
    let utf8 = Arc::new(e);
    let mut f = fixture(&cfg);
    let got = run(&mut f, vec![event(&ascii, 0, failed())]).await;
    assert!(!got[0].0.smtputf8);
    let mut f = fixture(&cfg);
    let got = run(&mut f, vec![event(&utf8, 0, failed())]).await;
    assert!(got[0].0.smtputf8);
    assert_eq!(got[0].0.recipients[0].address, "jos\u{e9}@sender.test");
}

/// A key that cannot be used stops the reporter from being built, naming
/// the signature; so does a key of the wrong type for the algorithm.
#[test]
fn bad_keys_are_refused() {
    let garbage = config(
        "[signature.bad]\nprivate-key = \"-----BEGIN PRIVATE KEY-----\\nAAAA\\n-----END PRIVATE KEY-----\\n\"\n\
         domain = \"d.test\"\nselector = \"s\"\n",
    );
    let e = Signers::from_config(&garbage).unwrap_err();
    assert_eq!(e.id, "bad");
    assert!(
        e.to_string().starts_with("[signature.bad] private-key: "),
        "{e}"
    );

    let wrong_type = config(&format!(
        "[signature.rsa]\nprivate-key = \"\"\"\n{ED25519_PEM}\"\"\"\ndomain = \"d.test\"\nselector = \"s\"\nalgorithm = \"rsa-sha256\"\n"
    ));
    let e = Signers::from_config(&wrong_type).unwrap_err();
    assert!(e.to_string().contains("not an RSA key"), "{e}");

    let good = signed_config("");
    let s = Signers::from_config(&good).unwrap();
    assert!(s.contains("ed"));
    let h = s
        .sign("ed", b"From: a@b.test\r\nSubject: x\r\n\r\nbody\r\n")
        .unwrap()
        .unwrap();
    assert!(
        h.starts_with("DKIM-Signature: v=1; a=ed25519-sha256;"),
        "{h}"
    );
    assert!(h.ends_with("\r\n"));
    assert!(s.sign("missing", b"x").is_none());
}

/// Once a notification is queued, the notices it settles are discharged:
/// the finished recipients it reports on leave the store, and with the last
/// of them the original's envelope and contents. A recipient still being
/// delivered (no notice owed) keeps the message until then.
#[tokio::test]
async fn notices_are_discharged_once_the_notification_is_queued() {
    use ferrymail_spool::{EntryKey, NodeId, Routing};
    let cfg = config("");
    let mut f = fixture(&cfg);
    let env = original(
        "sender@sender.test",
        [Notify::Default, Notify::Default, Notify::Default],
    );
    let key = |rcpt| EntryKey {
        message: env.id,
        rcpt,
    };
    let entries: Vec<QueueEntry> = (0..3)
        .map(|r| QueueEntry::new(key(r), Routing::default_with_weight(0), 0))
        .collect();
    f.spool
        .accept(
            &env,
            &entries,
            bytes::Bytes::from_static(b"Subject: hi\r\n\r\nx\r\n"),
        )
        .await
        .unwrap();
    // Recipients 0 and 1 failed, each with its failure notice owed, as the
    // queue engine records them; recipient 2 is still queued.
    let node = NodeId(7);
    f.spool
        .data
        .claim_keys(node, &[key(0), key(1)], 0, 60_000)
        .await
        .unwrap();
    let events = vec![event(&env, 0, failed()), event(&env, 1, failed())];
    for e in &events {
        let owed = e.owed_notice();
        f.spool
            .data
            .complete(node, e.key(), Some(&owed))
            .await
            .unwrap();
    }
    assert_eq!(f.spool.data.entries(env.id).await.unwrap().len(), 3);

    let got = run(&mut f, events.clone()).await;
    assert_eq!(got.len(), 1, "one notice");
    let left = f.spool.data.entries(env.id).await.unwrap();
    assert_eq!(
        left.iter().map(|e| e.key).collect::<Vec<_>>(),
        vec![key(2)],
        "the reported recipients are discharged"
    );
    assert!(f.spool.blob.get(env.id).await.unwrap().is_some());

    // When the last recipient's notice is discharged, the message goes,
    // contents included (a second reporter run, as after a restart).
    f.spool
        .data
        .claim_keys(node, &[key(2)], 0, 60_000)
        .await
        .unwrap();
    let last = event(&env, 2, failed());
    f.spool
        .data
        .complete(node, key(2), Some(&last.owed_notice()))
        .await
        .unwrap();
    let (tx, _rx) = mpsc::unbounded_channel();
    f.reporter =
        Some(Reporter::new(&cfg, f.spool.clone(), Arc::new(IdGenerator::new(2)), tx).unwrap());
    run(&mut f, vec![last]).await;
    assert!(f.spool.data.entries(env.id).await.unwrap().is_empty());
    assert_eq!(f.spool.data.envelope(env.id).await.unwrap(), None);
    assert_eq!(f.spool.blob.get(env.id).await.unwrap(), None);
}

/// The contents store of the spool, refusing its first `fails` writes as
/// a store in an outage does, then the real embedded store. (A wrapper
/// around the real store: an outage cannot be staged in an embedded store
/// on demand; PostgreSQL outages are covered end to end in
/// `crates/ferrymail/tests/postgres_outage_gives_4xx.rs`.)
struct Outage {
    inner: Arc<EmbeddedStore>,
    fails: std::sync::atomic::AtomicU32,
}

#[async_trait::async_trait]
impl ferrymail_spool::BlobStore for Outage {
    async fn put(
        &self,
        id: MessageId,
        contents: bytes::Bytes,
    ) -> Result<(), ferrymail_spool::StoreError> {
        use std::sync::atomic::Ordering;
        if self
            .fails
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(ferrymail_spool::StoreError::Engine(
                "outage (staged)".into(),
            ));
        }
        ferrymail_spool::BlobStore::put(&*self.inner, id, contents).await
    }
    async fn get(
        &self,
        id: MessageId,
    ) -> Result<Option<bytes::Bytes>, ferrymail_spool::StoreError> {
        ferrymail_spool::BlobStore::get(&*self.inner, id).await
    }
    async fn delete(&self, id: MessageId) -> Result<(), ferrymail_spool::StoreError> {
        ferrymail_spool::BlobStore::delete(&*self.inner, id).await
    }
}

/// A notification the spool refuses is not given up: it is tried again,
/// with growing waits, until the spool takes it, while its notice stays
/// owed; then it is queued once and the notice discharged.
#[tokio::test]
async fn a_refused_notification_is_tried_again_until_queued() {
    // Eight refusals (waits 20, 40, then 80 ms each: more tries than the
    // reporter once made before giving up), then the ninth is taken.
    let (run, _dir) = with_outage(8, (20, 20, 80));
    let env = original("sender@origin.test", [Notify::Default; 3]);
    run.events.send(event(&env, 0, failed())).unwrap();
    let spool = run.spool.clone();
    let outage = run.outage.clone();
    let text = run.only_notification().await;
    assert_eq!(outage.fails.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert!(text.contains("Action: failed"), "{text}");
    let stored = spool.data.scan(None, 10).await.unwrap();
    assert!(!stored.is_empty(), "the notification is queued durably");
}

/// A reporter whose spool refuses its first `fails` contents writes, with
/// `(quiet, retry_first, retry_max)` in milliseconds.
struct OutageRun {
    spool: Spool,
    outage: Arc<Outage>,
    events: mpsc::UnboundedSender<Event>,
    queued: mpsc::UnboundedReceiver<Queued>,
    running: crate::Running,
}

fn with_outage(fails: u32, (quiet, first, max): (u64, u64, u64)) -> (OutageRun, tempfile_dir::Dir) {
    let dir = tempfile_dir::Dir::new();
    let data = EmbeddedStore::open(&dir.0.join("data")).unwrap();
    let blobs = EmbeddedStore::open(&dir.0.join("blob")).unwrap();
    let outage = Arc::new(Outage {
        inner: blobs.clone(),
        fails: std::sync::atomic::AtomicU32::new(fails),
    });
    let spool = Spool {
        data: data.clone(),
        blob: outage.clone(),
        unified: false,
    };
    let (tx, queued) = mpsc::unbounded_channel();
    let reporter = Reporter::new(
        &config(""),
        spool.clone(),
        Arc::new(IdGenerator::new(1)),
        tx,
    )
    .unwrap();
    let (events, rx) = mpsc::unbounded_channel();
    let running = reporter.start(
        rx,
        ReportSettings {
            quiet: Duration::from_millis(quiet),
            retry_first: Duration::from_millis(first),
            retry_max: Duration::from_millis(max),
            ..ReportSettings::default()
        },
    );
    let run = OutageRun {
        spool,
        outage,
        events,
        queued,
        running,
    };
    (run, dir)
}

impl OutageRun {
    fn refusals_left(&self) -> u32 {
        self.outage.fails.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits for the one notification the run queues, stops the reporter,
    /// checks that it queued no other, and returns its text.
    async fn only_notification(mut self) -> String {
        let entries = tokio::time::timeout(Duration::from_secs(10), self.queued.recv())
            .await
            .expect("the notification is queued once the outage ends")
            .unwrap();
        self.running.finish().await;
        assert!(self.queued.try_recv().is_err(), "one notification");
        let id = entries.entries[0].key.message;
        let contents = self.spool.blob.get(id).await.unwrap().unwrap();
        String::from_utf8_lossy(&contents).into_owned()
    }
}

/// An owed notice handed over again while its notification waits for the
/// spool (a shared store's takeover sweep does this once the notice's hold
/// lapses) joins the waiting notification: one notification, not two.
#[tokio::test]
async fn a_notice_handed_over_again_while_refused_gives_one_notification() {
    let (run, _dir) = with_outage(4, (10, 100, 100));
    let env = original("sender@origin.test", [Notify::Default; 3]);
    run.events.send(event(&env, 0, failed())).unwrap();
    // Refused once (the group closes after 10 ms), waiting 100 ms for its
    // next try: the same notice comes again, and another recipient's.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(run.refusals_left(), 3);
    run.events.send(event(&env, 0, failed())).unwrap();
    run.events.send(event(&env, 1, failed())).unwrap();
    let text = run.only_notification().await;
    assert_eq!(
        text.matches("Final-Recipient:").count(),
        2,
        "both recipients, each once: {text}"
    );
}

/// A delay notification still waiting for the spool when its recipient
/// fails for good is not sent after the failure notification: the sender
/// hears "failed", never "still trying" afterwards.
#[tokio::test]
async fn a_final_outcome_supersedes_a_waiting_delay_notification() {
    let (run, _dir) = with_outage(3, (10, 100, 100));
    let all = Notify::On {
        success: true,
        failure: true,
        delay: true,
    };
    let env = original("sender@origin.test", [all; 3]);
    let delayed = first_delay(&env);
    run.events.send(event(&env, 0, delayed)).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(run.refusals_left(), 2, "the delay notification waits");
    run.events.send(event(&env, 0, failed())).unwrap();
    let text = run.only_notification().await;
    assert!(text.contains("Action: failed"), "{text}");
    assert!(!text.contains("Action: delayed"), "{text}");
}

/// A delay notification still being collected when its recipient reaches
/// a final outcome is not sent, whether or not that outcome calls for a
/// notification itself: relayed to a hop that took over the DSN duty,
/// failed with NOTIFY=DELAY only (no failure notice wanted), or failed
/// with a failure notice wanted. Only the recipient still waiting keeps
/// its delay report.
#[tokio::test]
async fn a_final_outcome_takes_its_recipient_out_of_an_open_delay_notification() {
    let cfg = config("");
    let mut f = fixture(&cfg);
    let delay_only = Notify::On {
        success: false,
        failure: false,
        delay: true,
    };
    let all = Notify::On {
        success: true,
        failure: true,
        delay: true,
    };
    let env = original("sender@sender.test", [delay_only, delay_only, all]);
    let delayed = first_delay(&env);
    let events = vec![
        event(&env, 0, delayed.clone()),
        event(&env, 1, delayed.clone()),
        event(&env, 2, delayed),
        // Within the group's quiet time: r0 delivered to a DSN-capable
        // hop, r2 failed for good.
        event(
            &env,
            0,
            EventKind::Delivered {
                reply: reply(250, "2.0.0"),
                lmtp: false,
            },
        ),
        event(&env, 2, failed()),
    ];
    let got = run(&mut f, events).await;
    let texts: Vec<String> = got
        .iter()
        .map(|n| String::from_utf8_lossy(&n.2).into_owned())
        .collect();
    let delays: Vec<&String> = texts
        .iter()
        .filter(|t| t.contains("Action: delayed"))
        .collect();
    assert_eq!(delays.len(), 1, "{texts:#?}");
    assert_eq!(
        delays[0].matches("Final-Recipient:").count(),
        1,
        "r1 only: {}",
        delays[0]
    );
    assert!(delays[0].contains("Final-Recipient: rfc822; r1@dest.test"));
    assert_eq!(
        texts
            .iter()
            .filter(|t| t.contains("Action: failed"))
            .count(),
        1,
        "r2's failure: {texts:#?}"
    );
}

/// Addresses are stored with a quoted local part unquoted (smtp-proto's
/// `"john smith"@x` is `john smith@x`); the notice quotes them again, so
/// that its To field and Final-Recipient hold addr-specs (RFC 5322
/// §3.4.1, RFC 3464 §2.3.2), as the delivery client's paths do.
#[tokio::test]
async fn quoted_local_parts_are_quoted_again_in_the_notice() {
    let cfg = config("");
    let mut f = fixture(&cfg);
    let mut env = (*original("john smith@sender.test", [Notify::Default; 3])).clone();
    env.recipients[0].address = "a \"b\"@dest.test".into();
    let env = Arc::new(env);
    let got = run(&mut f, vec![event(&env, 0, failed())]).await;
    assert_eq!(got.len(), 1);
    let text = String::from_utf8_lossy(&got[0].2);
    assert!(text.contains("To: <\"john smith\"@sender.test>"), "{text}");
    assert!(
        text.contains("Final-Recipient: rfc822; \"a \\\"b\\\"\"@dest.test"),
        "{text}"
    );
    assert!(!text.contains("<john smith@"), "{text}");
    // The envelope is the stored address; the delivery client quotes it.
    assert_eq!(got[0].0.recipients[0].address, "john smith@sender.test");
}
