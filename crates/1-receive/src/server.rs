//! Accepting connections: the global and per-IP connection limits, one task per
//! connection, and graceful shutdown. SMTP and LMTP listeners share all of it;
//! only the sessions' [`Dialect`] differs.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

use crate::protocol::dialect::Dialect;
use crate::protocol::reply::replies;
use crate::session::Session;
use crate::{ActiveSession, ReceiveCounters, Receiver};

/// Connection limits shared by every SMTP and LMTP listener of the server.
/// A reload may change both maxima; connections already open stay.
pub struct ConnectionLimits {
    open: Mutex<Open>,
    max: AtomicUsize,
    max_per_ip: AtomicUsize,
}

/// The connections open now: in all and per address.
#[derive(Default)]
struct Open {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// Holds one connection's place in both limits; released on drop.
pub struct Slot {
    limits: Arc<ConnectionLimits>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.limits.open.lock().unwrap_or_else(|e| e.into_inner());
        open.total -= 1;
        if let Some(n) = open.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.per_ip.remove(&self.ip);
            }
        }
    }
}

impl ConnectionLimits {
    /// At most `global` connections in all, and `per_ip` from one address.
    pub fn new(global: usize, per_ip: usize) -> Arc<Self> {
        Arc::new(ConnectionLimits {
            open: Mutex::new(Open::default()),
            max: AtomicUsize::new(global),
            max_per_ip: AtomicUsize::new(per_ip),
        })
    }

    /// New maxima, from a reloaded configuration. Lowering one closes no
    /// connection; new ones wait until the count is under it.
    pub fn set(&self, global: usize, per_ip: usize) {
        self.max.store(global, Ordering::Relaxed);
        self.max_per_ip.store(per_ip, Ordering::Relaxed);
    }

    /// Takes a slot for a connection from `ip`, or `None` if a limit is
    /// reached. IPv6 clients count per /64, as AUTH failures and rate
    /// limits do: one host holds a whole /64 and could otherwise open
    /// `max-per-ip` connections from each of its addresses.
    pub fn acquire(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let ip = crate::auth::FailureLedger::key(ip);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.total >= self.max.load(Ordering::Relaxed) {
            return None;
        }
        let n = open.per_ip.entry(ip).or_insert(0);
        if *n >= self.max_per_ip.load(Ordering::Relaxed) {
            return None;
        }
        *n += 1;
        open.total += 1;
        Some(Slot {
            limits: self.clone(),
            ip,
        })
    }
}

/// Accepts connections on `listener` until `rx.shutdown` is cancelled, and
/// runs a session speaking `dialect` (SMTP, or LMTP for an `lmtp` listener)
/// on each. Each session is spawned on `tracker`, so the caller can wait for
/// sessions in progress to finish.
///
/// Each connection gets the receiver `current` holds when it is accepted: a
/// reload replaces it for new sessions, and sessions in progress keep the
/// one they started with.
///
/// With `implicit_tls`, every connection starts with a TLS handshake
/// (SMTP submission over implicit TLS, RFC 8314 §3.3, usually port 465)
/// with the receiver's certificate, bounded by the command timeout; a
/// client that does not complete it is closed without a word.
pub async fn serve(
    listener: TcpListener,
    current: Arc<ArcSwap<Receiver>>,
    limits: Arc<ConnectionLimits>,
    tracker: TaskTracker,
    implicit_tls: bool,
    dialect: Dialect,
) {
    let local = listener.local_addr().ok();
    let shutdown = current.load().shutdown.clone();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.cancelled() => break,
        };
        let (mut stream, remote) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off briefly rather than spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        // A dual-stack listener reports IPv4 clients as `::ffff:a.b.c.d`;
        // expressions (`remote_ip == '192.0.2.1'`), SPF's ip4 mechanisms,
        // the Received field and the logs all want the IPv4 address.
        let remote = SocketAddr::new(remote.ip().to_canonical(), remote.port());
        let _ = stream.set_nodelay(true);
        let local: SocketAddr = stream.local_addr().ok().or(local).unwrap_or(remote);
        let slot = limits.acquire(remote.ip());
        let rx = current.load_full();
        let implicit_tls = if implicit_tls {
            rx.implicit_tls.clone()
        } else {
            None
        };
        ReceiveCounters::bump(&rx.counters.connections);
        tracker.spawn(async move {
            let Some(_slot) = slot else {
                ReceiveCounters::bump(&rx.counters.refused_by_limit);
                tracing::info!(remote = %remote.ip(), "connection limit reached");
                let mut out = Vec::new();
                replies::too_many_connections().write_to(&mut out);
                let _ = stream.write_all(&out).await;
                let _ = stream.shutdown().await;
                return;
            };
            let _active = ActiveSession::new(rx.counters.clone());
            let session = match implicit_tls {
                None => Session::new(rx, Box::new(stream), remote, local, dialect),
                Some(acceptor) => {
                    let t = rx.params.command_timeout;
                    match tokio::time::timeout(t, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => Session::with_tls(rx, tls, remote, local, dialect),
                        Ok(Err(e)) => {
                            tracing::info!(remote = %remote.ip(), error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::info!(remote = %remote.ip(), "TLS handshake timed out");
                            return;
                        }
                    }
                }
            };
            session.run().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_count_and_release() {
        let l = ConnectionLimits::new(3, 2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let s1 = l.acquire(a).unwrap();
        let _s2 = l.acquire(a).unwrap();
        assert!(l.acquire(a).is_none(), "per-IP limit");
        let _s3 = l.acquire(b).unwrap();
        assert!(l.acquire(b).is_none(), "global limit");
        drop(s1);
        assert!(l.acquire(a).is_some());
    }

    #[test]
    fn ipv6_clients_count_per_64() {
        let l = ConnectionLimits::new(10, 2);
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2::ffff".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        let s1 = l.acquire(a).unwrap();
        let _s2 = l.acquire(b).unwrap();
        assert!(l.acquire(a).is_none(), "one /64, one count");
        assert!(l.acquire("2001:db8:1:2::9".parse().unwrap()).is_none());
        let _s3 = l.acquire(other).unwrap();
        drop(s1);
        assert!(l.acquire(b).is_some(), "released under the same key");
    }

    #[test]
    fn limits_follow_a_reload() {
        let l = ConnectionLimits::new(1, 1);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let _s1 = l.acquire(a).unwrap();
        assert!(l.acquire(b).is_none(), "global limit of 1");
        l.set(3, 2);
        let _s2 = l.acquire(a).unwrap();
        let _s3 = l.acquire(b).unwrap();
        assert!(l.acquire(a).is_none(), "global limit of 3");
        l.set(2, 1);
        drop(_s3);
        assert!(l.acquire(b).is_none(), "lowered: 2 still open");
    }
}
