//! The conformance suite every [`DataStore`] and [`BlobStore`] backend must pass.
//!
//! Backends instantiate it with [`conformance_suite!`](crate::conformance_suite),
//! passing an async constructor of fresh, empty stores. Each check is also a public
//! function so a backend can run one in isolation while debugging.

use std::sync::Arc;

use bytes::Bytes;

use crate::model::*;
use crate::store::*;

/// A fresh pair of stores for one check, plus whatever keeps them alive (a
/// temporary directory, a database schema).
pub struct TestStores {
    /// The data store under test.
    pub data: Arc<dyn DataStore>,
    /// The blob store under test.
    pub blob: Arc<dyn BlobStore>,
    /// The two are one store that supports [`DataStore::insert_with_contents`].
    pub unified: bool,
    /// Dropped when the check ends.
    pub guard: Box<dyn std::any::Any + Send>,
}

/// Generates one `#[tokio::test]` per check, against stores made by `$make`
/// (an `async fn() -> TestStores`).
#[macro_export]
macro_rules! conformance_suite {
    ($make:path) => {
        $crate::conformance_suite!(@tests $make;
            insert_then_read, blob_roundtrip, claim_filters, lease_is_exclusive,
            renew_only_by_owner, complete_removes_and_reports, defer_moves_to_deferred,
            admin_actions, cancel_removes, scan_pages_in_key_order, concurrent_inserts,
            accept_through_spool, claim_keys_conditions, claim_keys_is_exclusive,
            complete_owing_a_notice_keeps_until_discharged, delay_notice_owed_until_discharged,
            final_notice_supersedes_a_delay_notice, cancel_drops_a_notice_owed,
            claim_job_conditions, claim_job_reads_what_a_job_needs, claim_job_is_exclusive,
            reroute_moves_only_a_leased_entry, an_existing_id_is_refused,
            newest_message_of_a_tag, emptied_messages_lose_their_contents_at_once);
    };
    (@tests $make:path; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let stores = $make().await;
                $crate::conformance::$name(&stores).await;
            }
        )*
    };
}

const A: NodeId = NodeId(1);
const B: NodeId = NodeId(2);
const T0: UnixMillis = 1_700_000_000_000;

/// An envelope with `n` recipients and DSN parameters set, so that every field
/// must round-trip.
pub fn sample_envelope(id: u64, n: u32) -> Envelope {
    Envelope {
        id: MessageId(id),
        sender: format!("sender{id}@example.org"),
        recipients: (0..n)
            .map(|i| Recipient {
                address: format!("rcpt{i}@dest{}.example", i % 3),
                orcpt: Some(format!("rfc822;orig{i}@example.net")),
                notify: if i % 2 == 0 {
                    Notify::On {
                        success: true,
                        failure: true,
                        delay: false,
                    }
                } else {
                    Notify::Never
                },
            })
            .collect(),
        size: 1234,
        arrived: T0,
        body: BodyType::EightBitMime,
        smtputf8: true,
        ret: Some(Ret::Headers),
        envid: Some("env-ü-1".into()),
        mt_priority: -3,
        source: Source::Smtp,
        remote_ip: Some("192.0.2.7".parse().unwrap()),
        helo: Some("client.example".into()),
        authenticated_as: None,
    }
}

/// Entries for every recipient of `env`, due at `due`, in queue `queue`.
pub fn sample_entries(env: &Envelope, queue: &str, due: UnixMillis) -> Vec<QueueEntry> {
    (0..env.recipients.len() as u32)
        .map(|rcpt| {
            QueueEntry::new(
                EntryKey {
                    message: env.id,
                    rcpt,
                },
                Routing {
                    queue: queue.into(),
                    schedule: "default".into(),
                    route: "mx".into(),
                    weight: rcpt as i32,
                },
                due,
            )
        })
        .collect()
}

fn claim(owner: NodeId, lane: Lane, now: UnixMillis, limit: usize) -> Claim {
    Claim {
        owner,
        queue: None,
        lane,
        now,
        lease_until: now + 60_000,
        limit,
    }
}

async fn put(s: &TestStores, id: u64, n: u32, queue: &str, due: UnixMillis) -> Envelope {
    let env = sample_envelope(id, n);
    s.data
        .insert(&env, &sample_entries(&env, queue, due))
        .await
        .unwrap();
    env
}

/// What is inserted reads back identically: envelope, entries, scan.
pub async fn insert_then_read(s: &TestStores) {
    let env = put(s, 10, 3, "default", T0).await;
    assert_eq!(s.data.envelope(env.id).await.unwrap(), Some(env.clone()));
    let entries = s.data.entries(env.id).await.unwrap();
    assert_eq!(entries, sample_entries(&env, "default", T0));
    assert_eq!(s.data.scan(None, 100).await.unwrap(), entries);
    assert_eq!(s.data.envelope(MessageId(11)).await.unwrap(), None);
    assert!(s.data.entries(MessageId(11)).await.unwrap().is_empty());
}

/// Contents round-trip byte for byte, and deletion is idempotent.
pub async fn blob_roundtrip(s: &TestStores) {
    let small = Bytes::from_static(b"Subject: hi\r\n\r\nbody\r\n");
    let large = Bytes::from((0..300_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>());
    s.blob.put(MessageId(1), small.clone()).await.unwrap();
    s.blob.put(MessageId(2), large.clone()).await.unwrap();
    assert_eq!(s.blob.get(MessageId(1)).await.unwrap(), Some(small));
    assert_eq!(s.blob.get(MessageId(2)).await.unwrap(), Some(large));
    s.blob.delete(MessageId(1)).await.unwrap();
    assert_eq!(s.blob.get(MessageId(1)).await.unwrap(), None);
    s.blob.delete(MessageId(1)).await.unwrap();
    assert_eq!(s.blob.get(MessageId(3)).await.unwrap(), None);
}

/// Claims honour due time, hold, lane, queue and limit, earliest due first.
pub async fn claim_filters(s: &TestStores) {
    put(s, 1, 1, "default", T0 + 5_000).await; // not yet due at T0
    put(s, 2, 1, "default", T0 - 2_000).await;
    put(s, 3, 1, "other", T0 - 1_000).await;
    put(s, 4, 1, "default", T0 - 3_000).await;
    let held = EntryKey {
        message: MessageId(4),
        rcpt: 0,
    };
    assert_eq!(s.data.admin(&[held], AdminAction::Hold).await.unwrap(), 1);

    // Deferred lane is empty.
    assert!(
        s.data
            .claim(&claim(A, Lane::Deferred, T0, 10))
            .await
            .unwrap()
            .is_empty()
    );
    // Queue filter.
    let mut c = claim(A, Lane::Pending, T0, 10);
    c.queue = Some("other".into());
    let got = s.data.claim(&c).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].key.message, MessageId(3));
    assert_eq!(
        got[0].lease,
        Some(Lease {
            owner: A,
            until: T0 + 60_000
        })
    );
    // Limit and order: only message 2 is left that is due, unheld, unleased.
    let got = s.data.claim(&claim(A, Lane::Pending, T0, 1)).await.unwrap();
    assert_eq!(
        got.iter().map(|e| e.key.message).collect::<Vec<_>>(),
        vec![MessageId(2)]
    );
    assert!(
        s.data
            .claim(&claim(A, Lane::Pending, T0, 10))
            .await
            .unwrap()
            .is_empty()
    );
    // Later, message 1 becomes due; the held one never does.
    let got = s
        .data
        .claim(&claim(A, Lane::Pending, T0 + 10_000, 10))
        .await
        .unwrap();
    assert_eq!(
        got.iter().map(|e| e.key.message).collect::<Vec<_>>(),
        vec![MessageId(1)]
    );
}

/// A live lease keeps other nodes out; a lapsed one lets them in.
pub async fn lease_is_exclusive(s: &TestStores) {
    put(s, 1, 2, "default", T0).await;
    let got = s
        .data
        .claim(&claim(A, Lane::Pending, T0, 10))
        .await
        .unwrap();
    assert_eq!(got.len(), 2);
    assert!(
        s.data
            .claim(&claim(B, Lane::Pending, T0 + 1_000, 10))
            .await
            .unwrap()
            .is_empty()
    );
    // A's lease ran until T0 + 60s: at that moment B may take over.
    let got = s
        .data
        .claim(&claim(B, Lane::Pending, T0 + 60_000, 10))
        .await
        .unwrap();
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|e| e.lease.unwrap().owner == B));
    // A no longer owns them.
    let key = got[0].key;
    assert!(matches!(
        s.data.complete(A, key, None).await,
        Err(StoreError::NotLeased(_))
    ));
}

/// Only the owner renews; renewal counts what it renewed.
pub async fn renew_only_by_owner(s: &TestStores) {
    let env = put(s, 1, 2, "default", T0).await;
    let keys: Vec<_> = sample_entries(&env, "default", T0)
        .iter()
        .map(|e| e.key)
        .collect();
    s.data
        .claim(&claim(A, Lane::Pending, T0, 10))
        .await
        .unwrap();
    assert_eq!(s.data.renew(B, &keys, T0 + 500_000).await.unwrap(), 0);
    assert_eq!(s.data.renew(A, &keys, T0 + 500_000).await.unwrap(), 2);
    // The renewed lease holds past the original deadline.
    assert!(
        s.data
            .claim(&claim(B, Lane::Pending, T0 + 100_000, 10))
            .await
            .unwrap()
            .is_empty()
    );
    let entries = s.data.entries(env.id).await.unwrap();
    assert!(entries.iter().all(|e| e.lease
        == Some(Lease {
            owner: A,
            until: T0 + 500_000
        })));
}

/// Completing removes the entry; the last one removes the envelope too.
pub async fn complete_removes_and_reports(s: &TestStores) {
    let env = put(s, 1, 2, "default", T0).await;
    let k0 = EntryKey {
        message: env.id,
        rcpt: 0,
    };
    let k1 = EntryKey {
        message: env.id,
        rcpt: 1,
    };
    // Not leased yet: refused.
    assert!(matches!(
        s.data.complete(A, k0, None).await,
        Err(StoreError::NotLeased(_))
    ));
    s.data
        .claim(&claim(A, Lane::Pending, T0, 10))
        .await
        .unwrap();
    assert!(matches!(
        s.data.complete(B, k0, None).await,
        Err(StoreError::NotLeased(_))
    ));
    assert_eq!(s.data.complete(A, k0, None).await.unwrap().remaining, 1);
    assert!(s.data.envelope(env.id).await.unwrap().is_some());
    let last = s.data.complete(A, k1, None).await.unwrap();
    assert_eq!(last.remaining, 0);
    if s.unified && last.contents_removed {
        // A store that is its own blob store and says so: the contents must
        // really be gone.
        assert_eq!(s.blob.get(env.id).await.unwrap(), None);
    }
    assert_eq!(s.data.envelope(env.id).await.unwrap(), None);
    assert!(s.data.entries(env.id).await.unwrap().is_empty());
    assert!(s.data.scan(None, 10).await.unwrap().is_empty());
}

/// Deferring moves the entry to the deferred lane, counts the attempt and
/// releases the lease.
pub async fn defer_moves_to_deferred(s: &TestStores) {
    let env = put(s, 1, 1, "default", T0).await;
    let key = EntryKey {
        message: env.id,
        rcpt: 0,
    };
    s.data
        .claim(&claim(A, Lane::Pending, T0, 10))
        .await
        .unwrap();
    let d = Deferral {
        due: T0 + 120_000,
        last_error: "451 4.3.0 try later".into(),
        notify_count: 1,
        notice: None,
        attempted: true,
    };
    assert!(matches!(
        s.data.defer(B, key, &d).await,
        Err(StoreError::NotLeased(_))
    ));
    s.data.defer(A, key, &d).await.unwrap();
    let e = &s.data.entries(env.id).await.unwrap()[0];
    assert_eq!(e.lane, Lane::Deferred);
    assert_eq!(e.attempts, 1);
    assert_eq!(e.due, T0 + 120_000);
    assert_eq!(e.lease, None);
    assert_eq!(e.last_error.as_deref(), Some("451 4.3.0 try later"));
    assert_eq!(e.notify_count, 1);
    // Not in the pending lane any more; in the deferred lane once due.
    assert!(
        s.data
            .claim(&claim(B, Lane::Pending, T0 + 200_000, 10))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        s.data
            .claim(&claim(B, Lane::Deferred, T0 + 100_000, 10))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        s.data
            .claim(&claim(B, Lane::Deferred, T0 + 120_000, 10))
            .await
            .unwrap()
            .len(),
        1
    );
    // A deferral without an attempt (a suspended destination) leaves the
    // count as it was.
    let idle = Deferral {
        due: T0 + 400_000,
        attempted: false,
        ..d
    };
    s.data.defer(B, key, &idle).await.unwrap();
    let e = &s.data.entries(env.id).await.unwrap()[0];
    assert_eq!((e.attempts, e.due), (1, T0 + 400_000));
}

/// `reroute` moves a leased entry to a new queue, schedule, route and
/// weight, due when asked, and releases the lease; attempts and errors
/// stay; without the lease it changes nothing.
pub async fn reroute_moves_only_a_leased_entry(s: &TestStores) {
    let env = put(s, 1, 1, "old", T0).await;
    let key = EntryKey {
        message: env.id,
        rcpt: 0,
    };
    let routing = Routing {
        queue: "new".into(),
        schedule: "fast".into(),
        route: "smarthost".into(),
        weight: 7,
    };
    assert!(matches!(
        s.data.reroute(A, key, &routing, T0 + 5).await,
        Err(StoreError::NotLeased(_))
    ));
    let claimed = s.data.claim_keys(A, &[key], T0, T0 + 60_000).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert!(matches!(
        s.data.reroute(B, key, &routing, T0 + 5).await,
        Err(StoreError::NotLeased(_))
    ));
    s.data.reroute(A, key, &routing, T0 + 5).await.unwrap();
    let e = &s.data.entries(env.id).await.unwrap()[0];
    assert_eq!(
        (
            e.queue.as_str(),
            e.schedule.as_str(),
            e.route.as_str(),
            e.weight
        ),
        ("new", "fast", "smarthost", 7)
    );
    assert_eq!(e.due, T0 + 5);
    assert_eq!(e.lease, None);
    assert_eq!(e.attempts, 0);
    // Released: anyone may claim it now.
    assert_eq!(
        s.data
            .claim_keys(B, &[key], T0 + 10, T0 + 60_000)
            .await
            .unwrap()
            .len(),
        1
    );
}

/// Hold, release and retry change exactly the named entries.
pub async fn admin_actions(s: &TestStores) {
    let env = put(s, 1, 2, "default", T0 + 1_000_000).await;
    let k0 = EntryKey {
        message: env.id,
        rcpt: 0,
    };
    let missing = EntryKey {
        message: MessageId(99),
        rcpt: 0,
    };
    assert_eq!(
        s.data
            .admin(&[k0, missing], AdminAction::Hold)
            .await
            .unwrap(),
        1
    );
    let e = s.data.entries(env.id).await.unwrap();
    assert!(e[0].held && !e[1].held);
    assert_eq!(
        s.data
            .admin(&[k0], AdminAction::Retry { now: T0 })
            .await
            .unwrap(),
        1
    );
    // Still held: a retry does not release.
    assert!(
        s.data
            .claim(&claim(A, Lane::Pending, T0, 10))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(s.data.admin(&[k0], AdminAction::Release).await.unwrap(), 1);
    let got = s
        .data
        .claim(&claim(A, Lane::Pending, T0, 10))
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].key, k0);
}

/// Cancel removes entries whatever their lease, and reports emptied messages.
pub async fn cancel_removes(s: &TestStores) {
    let e1 = put(s, 1, 2, "default", T0).await;
    let e2 = put(s, 2, 1, "default", T0).await;
    s.data.claim(&claim(A, Lane::Pending, T0, 1)).await.unwrap();
    let k = |m: &Envelope, r| EntryKey {
        message: m.id,
        rcpt: r,
    };
    let gone = s.data.cancel(&[k(&e1, 0), k(&e2, 0)]).await.unwrap();
    assert_eq!(gone, vec![e2.id]);
    assert_eq!(s.data.envelope(e2.id).await.unwrap(), None);
    assert!(s.data.envelope(e1.id).await.unwrap().is_some());
    let left = s.data.scan(None, 10).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].key, k(&e1, 1));
}

/// A store that is its own blob store removes a message's contents in the
/// same request that removes its last entry, however that entry goes:
/// completed, cancelled, or discharged after its notice. The caller's own
/// delete comes as a separate request, and a crash before it would leave
/// contents nothing refers to and nothing sweeps. Separate blob stores are
/// left to the caller (and, for `fs`, to its orphan sweep).
pub async fn emptied_messages_lose_their_contents_at_once(s: &TestStores) {
    if !s.unified {
        return;
    }
    let contents = || Bytes::from_static(b"Subject: x\r\n\r\nx\r\n");
    let key = |m: &Envelope| EntryKey {
        message: m.id,
        rcpt: 0,
    };
    // Cancelled.
    let cancelled = put(s, 1, 1, "default", T0).await;
    s.blob.put(cancelled.id, contents()).await.unwrap();
    assert_eq!(
        s.data.cancel(&[key(&cancelled)]).await.unwrap(),
        vec![cancelled.id]
    );
    assert_eq!(s.blob.get(cancelled.id).await.unwrap(), None, "cancel");
    // Completed owing a final notice, then discharged.
    let bounced = put(s, 2, 1, "default", T0).await;
    s.blob.put(bounced.id, contents()).await.unwrap();
    s.data
        .claim(&claim(A, Lane::Pending, T0, 10))
        .await
        .unwrap();
    s.data
        .complete(A, key(&bounced), Some(&sample_notice(None, 1)))
        .await
        .unwrap();
    assert!(
        s.blob.get(bounced.id).await.unwrap().is_some(),
        "kept while the notice, which may return it, is owed"
    );
    assert_eq!(
        s.data
            .discharge(&[final_slot(key(&bounced))])
            .await
            .unwrap(),
        vec![bounced.id]
    );
    assert_eq!(s.blob.get(bounced.id).await.unwrap(), None, "discharge");
}

/// Scanning pages through every entry exactly once, in key order.
pub async fn scan_pages_in_key_order(s: &TestStores) {
    for id in (1..=150u64).rev() {
        put(s, id, 2, "default", T0).await;
    }
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = s.data.scan(after, 64).await.unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 64);
        after = Some(page.last().unwrap().key);
        seen.extend(page.into_iter().map(|e| e.key));
    }
    assert_eq!(seen.len(), 300);
    assert!(seen.windows(2).all(|w| w[0] < w[1]));
}

/// Many concurrent inserts (the group-commit path) all land.
pub async fn concurrent_inserts(s: &TestStores) {
    let mut tasks = Vec::new();
    for id in 1..=200u64 {
        let data = s.data.clone();
        let blob = s.blob.clone();
        tasks.push(tokio::spawn(async move {
            let env = sample_envelope(id, 1);
            blob.put(env.id, Bytes::from(vec![b'x'; 1000 + id as usize]))
                .await
                .unwrap();
            data.insert(&env, &sample_entries(&env, "default", T0))
                .await
                .unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(s.data.scan(None, 1000).await.unwrap().len(), 200);
    for id in 1..=200u64 {
        let b = s.blob.get(MessageId(id)).await.unwrap().unwrap();
        assert_eq!(b.len(), 1000 + id as usize);
    }
}

/// The accept path through [`crate::Spool`]: contents and envelope land
/// together, for unified and separate stores alike.
pub async fn accept_through_spool(s: &TestStores) {
    let spool = crate::Spool {
        data: s.data.clone(),
        blob: s.blob.clone(),
        unified: s.unified,
    };
    let env = sample_envelope(77, 2);
    let contents = Bytes::from_static(b"Received: x\r\n\r\nbody\r\n");
    spool
        .accept(&env, &sample_entries(&env, "default", T0), contents.clone())
        .await
        .unwrap();
    assert_eq!(s.blob.get(env.id).await.unwrap(), Some(contents));
    assert_eq!(s.data.envelope(env.id).await.unwrap(), Some(env.clone()));
    assert_eq!(s.data.entries(env.id).await.unwrap().len(), 2);
}

/// An insert with an id that exists is refused and changes nothing: not
/// the stored envelope, not its entries; through the spool too, whose
/// read-back after the failure must not take the other message's envelope
/// for this one (that would answer 250 for mail stored nowhere).
pub async fn an_existing_id_is_refused(s: &TestStores) {
    let first = put(s, 5, 2, "default", T0).await;
    let mut second = sample_envelope(5, 1);
    second.sender = "someone-else@example.org".into();
    let entries = sample_entries(&second, "other", T0);
    assert!(s.data.insert(&second, &entries).await.is_err());
    let spool = crate::Spool {
        data: s.data.clone(),
        blob: s.blob.clone(),
        unified: s.unified,
    };
    let refused = spool
        .accept(
            &second,
            &entries,
            Bytes::from_static(b"Subject: b\r\n\r\nb\r\n"),
        )
        .await;
    assert!(refused.is_err(), "{refused:?}");
    assert_eq!(
        s.data.envelope(first.id).await.unwrap(),
        Some(first.clone())
    );
    let kept = s.data.entries(first.id).await.unwrap();
    assert_eq!(kept, sample_entries(&first, "default", T0));
}

/// The newest id of a node tag (bits 12..22) is found among ids of other
/// tags, newer ones included; none for a tag without messages.
pub async fn newest_message_of_a_tag(s: &TestStores) {
    let id = |ms: u64, tag: u64, seq: u64| (ms << 22) | (tag << 12) | seq;
    for i in [
        id(T0, 7, 0),
        id(T0, 7, 1),
        id(T0 + 5, 7, 0),
        id(T0 + 9, 8, 0),
        id(T0 + 1, 8, 3),
    ] {
        put(s, i, 1, "default", T0).await;
    }
    assert_eq!(
        s.data.newest_message(7).await.unwrap(),
        Some(MessageId(id(T0 + 5, 7, 0)))
    );
    assert_eq!(
        s.data.newest_message(8).await.unwrap(),
        Some(MessageId(id(T0 + 9, 8, 0)))
    );
    assert_eq!(s.data.newest_message(9).await.unwrap(), None);
}

/// `claim_keys` takes exactly the named entries, whatever their due time or
/// lane, and skips the missing, the held and those under another node's live
/// lease; this node's own lease (e.g. from before a restart) is taken over.
pub async fn claim_keys_conditions(s: &TestStores) {
    let env = put(s, 1, 6, "default", T0 + 3_600_000).await; // due in an hour
    let k = |rcpt| EntryKey {
        message: env.id,
        rcpt,
    };
    let missing = EntryKey {
        message: MessageId(99),
        rcpt: 0,
    };
    // k(1) held; k(2) leased by B until T0 + 60s; k(3) leased by A until T0 + 60s;
    // k(4) leased by B until T0 - 1 (lapsed); k(5) deferred.
    assert_eq!(s.data.admin(&[k(1)], AdminAction::Hold).await.unwrap(), 1);
    let got = s
        .data
        .claim_keys(B, &[k(2), k(4)], T0 - 60_001, T0 - 1)
        .await
        .unwrap();
    assert_eq!(got.len(), 2);
    let got = s
        .data
        .claim_keys(B, &[k(2)], T0 - 2, T0 + 60_000)
        .await
        .unwrap();
    assert_eq!(got.len(), 1, "the owner extends its own lease");
    let got = s
        .data
        .claim_keys(A, &[k(3), k(5)], T0, T0 + 60_000)
        .await
        .unwrap();
    assert_eq!(got.len(), 2);
    s.data
        .defer(
            A,
            k(5),
            &Deferral {
                due: T0 + 7_200_000,
                last_error: "451 later".into(),
                notify_count: 0,
                notice: None,
                attempted: true,
            },
        )
        .await
        .unwrap();

    let now = T0 + 1_000;
    let got = s
        .data
        .claim_keys(
            A,
            &[k(0), k(1), k(2), k(3), k(4), k(5), missing, k(0)],
            now,
            now + 30_000,
        )
        .await
        .unwrap();
    let keys: Vec<_> = got.iter().map(|e| e.key).collect();
    assert_eq!(
        keys,
        vec![k(0), k(3), k(4), k(5)],
        "not held k(1), not B's live k(2), not the missing one, k(0) once"
    );
    for e in &got {
        assert_eq!(
            e.lease,
            Some(Lease {
                owner: A,
                until: now + 30_000
            })
        );
    }
    assert_eq!(got[3].lane, Lane::Deferred, "any lane");
    assert_eq!(got[3].attempts, 1, "the entry is returned as stored");
    // The leases are durable: B can no longer claim them, A can complete them.
    assert!(
        s.data
            .claim_keys(B, &[k(0), k(3)], now, now + 30_000)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(s.data.complete(A, k(0), None).await.unwrap().remaining, 5);
    // Claimed entries leave the due-order claim index until the lease lapses.
    assert!(
        s.data
            .claim(&claim(B, Lane::Deferred, T0 + 8_000_000, 10))
            .await
            .unwrap()
            .iter()
            .all(|e| e.key != k(5) || e.lease.unwrap().owner == B)
    );
    // B's lapsed lease on k(2) after T0 + 60s: A takes it.
    let got = s
        .data
        .claim_keys(A, &[k(2)], T0 + 60_000, T0 + 120_000)
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
}

/// Four claimers, nodes A and B twice each (two of them naming the keys in
/// reverse order), race for the 40 entries of one message through `claim`
/// (store, owner, message, keys → what it leased): each entry goes to
/// exactly one node, and the store's leases say so.
async fn race_for_entries<F, Fut>(s: &TestStores, claim: F)
where
    F: Fn(Arc<dyn DataStore>, NodeId, MessageId, Vec<EntryKey>) -> Fut,
    Fut: std::future::Future<Output = Vec<QueueEntry>> + Send + 'static,
{
    let env = put(s, 1, 40, "default", T0).await;
    let keys: Vec<EntryKey> = (0..40)
        .map(|rcpt| EntryKey {
            message: env.id,
            rcpt,
        })
        .collect();
    let mut tasks = Vec::new();
    for (owner, rev) in [(A, false), (B, true), (A, true), (B, false)] {
        let mut keys = keys.clone();
        if rev {
            keys.reverse();
        }
        let got = claim(s.data.clone(), owner, env.id, keys);
        tasks.push(tokio::spawn(async move { (owner, got.await) }));
    }
    let mut owner_of = std::collections::HashMap::new();
    for t in tasks {
        let (owner, got) = t.await.unwrap();
        for e in got {
            assert_eq!(e.lease.unwrap().owner, owner);
            let prev = owner_of.insert(e.key, owner);
            assert!(
                prev.is_none_or(|p| p == owner),
                "{:?} claimed by two nodes",
                e.key
            );
        }
    }
    assert_eq!(owner_of.len(), 40, "every entry claimed by someone");
    for e in s.data.scan(None, 100).await.unwrap() {
        assert_eq!(Some(e.lease.unwrap().owner), owner_of.get(&e.key).copied());
    }
}

/// Two nodes claiming the same keys at the same moment: each entry goes to
/// exactly one of them.
pub async fn claim_keys_is_exclusive(s: &TestStores) {
    race_for_entries(s, |data, owner, _, keys| async move {
        data.claim_keys(owner, &keys, T0, T0 + 60_000)
            .await
            .unwrap()
    })
    .await;
}

/// `claim_job` claims by the rules of `claim_keys`: it skips the missing,
/// the held, those finished with a notice owed and those under another
/// node's live lease, takes over this node's own lease, names each key
/// once, returns the entries in the order of the keys with the lease set,
/// and makes the leases durable.
pub async fn claim_job_conditions(s: &TestStores) {
    let env = put(s, 1, 7, "default", T0 + 3_600_000).await; // due in an hour
    let k = |rcpt| EntryKey {
        message: env.id,
        rcpt,
    };
    let missing = EntryKey {
        message: env.id,
        rcpt: 99,
    };
    // k(1) held; k(2) leased by B until T0 + 60s; k(3) leased by A until
    // T0 + 60s; k(4) leased by B until T0 - 1 (lapsed); k(6) finished with
    // a final notice owed.
    assert_eq!(s.data.admin(&[k(1)], AdminAction::Hold).await.unwrap(), 1);
    let c = |owner, keys: Vec<EntryKey>, now, until| {
        let data = s.data.clone();
        async move {
            data.claim_job(owner, env.id, &keys, now, until, false)
                .await
                .unwrap()
        }
    };
    assert_eq!(
        c(B, vec![k(2), k(4)], T0 - 60_001, T0 - 1)
            .await
            .entries
            .len(),
        2
    );
    assert_eq!(
        c(B, vec![k(2)], T0 - 2, T0 + 60_000).await.entries.len(),
        1,
        "the owner extends its own lease"
    );
    assert_eq!(
        c(A, vec![k(3), k(6)], T0, T0 + 60_000).await.entries.len(),
        2
    );
    s.data
        .complete(A, k(6), Some(&sample_notice(None, 1)))
        .await
        .unwrap();

    let now = T0 + 1_000;
    let got = c(
        A,
        vec![k(5), k(0), k(1), k(2), k(3), k(4), k(6), missing, k(0)],
        now,
        now + 30_000,
    )
    .await;
    let keys: Vec<_> = got.entries.iter().map(|e| e.key).collect();
    assert_eq!(
        keys,
        vec![k(5), k(0), k(3), k(4)],
        "in the order of the keys; not held k(1), not B's live k(2), not the notice-owed k(6), \
         not the missing one, k(0) once"
    );
    for e in &got.entries {
        assert_eq!(
            e.lease,
            Some(Lease {
                owner: A,
                until: now + 30_000
            })
        );
    }
    assert_eq!(got.envelope, Some(env.clone()));
    assert_eq!(got.contents, None, "contents are read only when asked for");
    // The leases are durable: B cannot claim them, A can complete them.
    assert!(
        c(B, vec![k(0), k(3), k(5)], now, now + 30_000)
            .await
            .entries
            .is_empty()
    );
    assert_eq!(s.data.complete(A, k(0), None).await.unwrap().remaining, 6);
}

/// `claim_job` returns the envelope with the entries and, when asked (only
/// of a store that is also the blob store), may return the contents; a
/// claim that takes nothing reads nothing.
pub async fn claim_job_reads_what_a_job_needs(s: &TestStores) {
    let env = sample_envelope(7, 2);
    let entries = sample_entries(&env, "default", T0);
    let body = Bytes::from_static(b"Subject: claimed\r\n\r\nbody\r\n");
    let spool = crate::Spool {
        data: s.data.clone(),
        blob: s.blob.clone(),
        unified: s.unified,
    };
    spool.accept(&env, &entries, body.clone()).await.unwrap();
    let k0 = entries[0].key;
    let k1 = entries[1].key;
    let got = s
        .data
        .claim_job(A, env.id, &[k0], T0, T0 + 60_000, s.unified)
        .await
        .unwrap();
    assert_eq!(got.entries.len(), 1);
    assert_eq!(got.envelope, Some(env.clone()));
    match &got.contents {
        None => {}
        Some(read) => {
            assert!(
                s.unified,
                "contents read by a store that does not hold them"
            );
            assert_eq!(
                read.as_ref(),
                Some(&body),
                "the contents, if read, are the message's"
            );
        }
    }
    // Nothing claimable (B's lease is live): nothing read either.
    let none = s
        .data
        .claim_job(B, env.id, &[k0], T0, T0 + 60_000, s.unified)
        .await
        .unwrap();
    assert!(none.entries.is_empty());
    assert_eq!(none.envelope, None);
    assert_eq!(none.contents, None);
    // Contents gone (an operator, a crash of a split store): reported as
    // missing when read, never as someone else's.
    if s.unified {
        s.blob.delete(env.id).await.unwrap();
        let got = s
            .data
            .claim_job(A, env.id, &[k1], T0, T0 + 60_000, true)
            .await
            .unwrap();
        assert_eq!(got.entries.len(), 1);
        assert_eq!(got.envelope, Some(env.clone()));
        assert!(
            matches!(got.contents, None | Some(None)),
            "{:?}",
            got.contents
        );
    }
}

/// Two nodes starting jobs for the same keys at the same moment: each
/// entry goes to exactly one of them, and each that got any also got the
/// envelope.
pub async fn claim_job_is_exclusive(s: &TestStores) {
    race_for_entries(s, |data, owner, message, keys| async move {
        let got = data
            .claim_job(owner, message, &keys, T0, T0 + 60_000, false)
            .await
            .unwrap();
        if !got.entries.is_empty() {
            assert_eq!(got.envelope.as_ref().map(|e| e.id), Some(message));
        }
        got.entries
    })
    .await;
}

/// An owed notice with every field set, so that it must round-trip whole:
/// the final failure of `attempts` attempts, or with `delay = Some(n)` the
/// delay notice of notify age `n`.
pub fn sample_notice(delay: Option<u32>, attempts: u32) -> OwedNotice {
    let reply = Some(NoticeReply {
        code: if delay.is_some() { 452 } else { 550 },
        status: Some(if delay.is_some() { "4.2.2" } else { "5.1.1" }.into()),
        text: "Mailbox says ü".into(),
    });
    OwedNotice {
        queue: "default".into(),
        outcome: match delay {
            Some(notify_num) => NoticeOutcome::Delayed {
                notify_num,
                will_retry_until: Some(T0 + 86_400_000),
                reason: "452 mailbox full".into(),
                reply,
            },
            None => NoticeOutcome::Failed {
                reason: "550 user unknown".into(),
                reply,
            },
        },
        attempt_at: T0 + 1_234,
        attempts,
        remote: Some(NoticeRemote {
            host: "mx.dest.example".into(),
            ip: "192.0.2.25".parse().unwrap(),
            port: 25,
            tls: Some("TLSv1.3".into()),
            dsn: true,
            lmtp: false,
        }),
    }
}

fn final_slot(key: EntryKey) -> Discharge {
    Discharge {
        key,
        slot: NoticeSlot::Final,
    }
}

fn delay_slot(key: EntryKey, notify_num: u32) -> Discharge {
    Discharge {
        key,
        slot: NoticeSlot::Delay { notify_num },
    }
}

/// Completing with a final notice owed keeps the entry (finished: no
/// lease, never claimable, by due order or by key) and the envelope, with
/// the notice as given; only the discharge of that final notice removes
/// them, and reports the message emptied once.
pub async fn complete_owing_a_notice_keeps_until_discharged(s: &TestStores) {
    let env = put(s, 1, 2, "default", T0).await;
    let k0 = EntryKey {
        message: env.id,
        rcpt: 0,
    };
    let k1 = EntryKey {
        message: env.id,
        rcpt: 1,
    };
    s.data
        .claim(&claim(A, Lane::Pending, T0, 10))
        .await
        .unwrap();
    let notice = sample_notice(None, 1);
    assert!(matches!(
        s.data.complete(B, k0, Some(&notice)).await,
        Err(StoreError::NotLeased(_))
    ));
    assert_eq!(
        s.data
            .complete(A, k0, Some(&notice))
            .await
            .unwrap()
            .remaining,
        2,
        "the finished entry still counts"
    );
    let e = &s.data.entries(env.id).await.unwrap()[0];
    assert_eq!(e.notice.as_ref(), Some(&notice));
    assert!(e.is_notice_owed());
    assert_eq!(e.lease, None);
    assert_eq!(e.attempts, 1, "the final attempt counts");
    assert_eq!(s.data.scan(None, 10).await.unwrap()[0], *e);
    // Its own outcome is recorded: completing it again is refused.
    assert!(matches!(
        s.data.complete(A, k0, None).await,
        Err(StoreError::NotLeased(_))
    ));
    // The other recipient finishes without a notice: removed at once, but
    // the message is not empty while k0 waits for its notice.
    assert_eq!(s.data.complete(A, k1, None).await.unwrap().remaining, 1);
    assert!(s.data.envelope(env.id).await.unwrap().is_some());
    // Never claimable again, however late, by anyone.
    for lane in [Lane::Pending, Lane::Deferred] {
        assert!(
            s.data
                .claim(&claim(B, lane, T0 + 10_000_000, 10))
                .await
                .unwrap()
                .is_empty()
        );
    }
    assert!(
        s.data
            .claim_keys(A, &[k0], T0 + 10_000_000, T0 + 10_060_000)
            .await
            .unwrap()
            .is_empty()
    );
    // A delay discharge does not settle a final notice.
    assert!(
        s.data
            .discharge(&[delay_slot(k0, 1)])
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(s.data.entries(env.id).await.unwrap().len(), 1);
    assert_eq!(
        s.data.discharge(&[final_slot(k0)]).await.unwrap(),
        vec![env.id]
    );
    assert_eq!(s.data.envelope(env.id).await.unwrap(), None);
    assert!(s.data.entries(env.id).await.unwrap().is_empty());
    // Repeating it is harmless and reports nothing.
    assert!(
        s.data
            .discharge(&[final_slot(k0)])
            .await
            .unwrap()
            .is_empty()
    );
    assert!(s.data.discharge(&[]).await.unwrap().is_empty());
}

/// A deferral may owe a delay notice: the entry stays in the deferred lane
/// and claimable, the notice stays through later deferrals that owe none,
/// is replaced by a later age's, and only the discharge of the notice it
/// holds clears it.
pub async fn delay_notice_owed_until_discharged(s: &TestStores) {
    let env = put(s, 1, 1, "default", T0).await;
    let key = EntryKey {
        message: env.id,
        rcpt: 0,
    };
    let defer = |due, notify_count, notice| Deferral {
        due,
        last_error: "452 4.2.2 full".into(),
        notify_count,
        notice,
        attempted: true,
    };
    s.data.claim_keys(A, &[key], T0, T0 + 60_000).await.unwrap();
    let first = sample_notice(Some(1), 1);
    s.data
        .defer(A, key, &defer(T0 + 1_000, 1, Some(first.clone())))
        .await
        .unwrap();
    let e = s.data.entries(env.id).await.unwrap().remove(0);
    assert_eq!(e.notice.as_ref(), Some(&first));
    assert!(
        !e.is_notice_owed(),
        "a delay notice does not finish the entry"
    );
    // Still delivered: claimable in the deferred lane once due.
    let got = s
        .data
        .claim(&claim(A, Lane::Deferred, T0 + 1_000, 10))
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].notice.as_ref(), Some(&first));
    // A deferral that owes nothing keeps the owed notice.
    s.data
        .defer(A, key, &defer(T0 + 2_000, 1, None))
        .await
        .unwrap();
    assert_eq!(
        s.data.entries(env.id).await.unwrap()[0].notice.as_ref(),
        Some(&first)
    );
    // A later age's notice replaces it.
    s.data
        .claim_keys(A, &[key], T0 + 2_000, T0 + 62_000)
        .await
        .unwrap();
    let second = sample_notice(Some(2), 3);
    s.data
        .defer(A, key, &defer(T0 + 3_000, 2, Some(second.clone())))
        .await
        .unwrap();
    // Discharging the first (already superseded) changes nothing.
    assert!(
        s.data
            .discharge(&[delay_slot(key, 1), final_slot(key)])
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        s.data.entries(env.id).await.unwrap()[0].notice.as_ref(),
        Some(&second)
    );
    assert!(
        s.data
            .discharge(&[delay_slot(key, 2)])
            .await
            .unwrap()
            .is_empty()
    );
    let e = s.data.entries(env.id).await.unwrap().remove(0);
    assert_eq!(e.notice, None);
    assert_eq!(e.attempts, 3);
    assert_eq!(e.lane, Lane::Deferred);
    assert!(s.data.envelope(env.id).await.unwrap().is_some());
}

/// The final outcome of a recipient whose delay notice is still owed
/// supersedes it: the late discharge of the delay notice neither clears
/// the final notice nor removes the entry.
pub async fn final_notice_supersedes_a_delay_notice(s: &TestStores) {
    let env = put(s, 1, 1, "default", T0).await;
    let key = EntryKey {
        message: env.id,
        rcpt: 0,
    };
    s.data.claim_keys(A, &[key], T0, T0 + 60_000).await.unwrap();
    s.data
        .defer(
            A,
            key,
            &Deferral {
                due: T0,
                last_error: "452 later".into(),
                notify_count: 1,
                notice: Some(sample_notice(Some(1), 1)),
                attempted: true,
            },
        )
        .await
        .unwrap();
    s.data.claim_keys(A, &[key], T0, T0 + 60_000).await.unwrap();
    let fin = sample_notice(None, 2);
    assert_eq!(
        s.data.complete(A, key, Some(&fin)).await.unwrap().remaining,
        1
    );
    assert!(
        s.data
            .discharge(&[delay_slot(key, 1)])
            .await
            .unwrap()
            .is_empty()
    );
    let e = s.data.entries(env.id).await.unwrap().remove(0);
    assert_eq!(e.notice.as_ref(), Some(&fin));
    assert_eq!(
        s.data.discharge(&[final_slot(key)]).await.unwrap(),
        vec![env.id]
    );
}

/// An operator's cancel drops an entry that only waits for its notice,
/// like any other, and the notice with it.
pub async fn cancel_drops_a_notice_owed(s: &TestStores) {
    let env = put(s, 1, 1, "default", T0).await;
    let key = EntryKey {
        message: env.id,
        rcpt: 0,
    };
    s.data.claim_keys(A, &[key], T0, T0 + 60_000).await.unwrap();
    s.data
        .complete(A, key, Some(&sample_notice(None, 1)))
        .await
        .unwrap();
    assert_eq!(s.data.cancel(&[key]).await.unwrap(), vec![env.id]);
    assert_eq!(s.data.envelope(env.id).await.unwrap(), None);
    assert!(s.data.scan(None, 10).await.unwrap().is_empty());
}
