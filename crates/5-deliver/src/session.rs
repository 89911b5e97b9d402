//! One client connection to a next hop: greeting, EHLO/LHLO (HELO
//! fallback), STARTTLS, AUTH, and mail transactions with PIPELINING, DATA
//! or BDAT. Every read and write is bounded by the phase's timeout.
//!
//! The protocol decisions live in [`crate::protocol`]; this module moves
//! the bytes and turns replies into per-recipient outcomes.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ferrymail_config::{OutboundTimeouts, RouteAuth, RouteTls, TlsMode};
use ferrymail_spool::Recipient;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::protocol::auth::{base64, plain_command};
use crate::protocol::command::{mail_from, plan, rcpt_to};
use crate::protocol::data::{BDAT_CHUNK, chunks, stuffing_points, terminator};
use crate::protocol::ehlo::Capabilities;
use crate::protocol::reply::{Reply, ReplyError, parse_reply};
use crate::tls::{TlsConfigs, server_name, version_name};
use crate::{Job, Outcome, Remote};

/// Anything a session runs over: TCP, or TLS on top of it.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Largest write of contents in one timed step: the DATA timeout bounds
/// each block (RFC 5321 §4.5.3.2.5), not the whole message.
const WRITE_BLOCK: usize = 256 * 1024;

/// Up to this size the end of the contents is copied next to the terminator
/// and sent in one write.
const COALESCE_MAX: usize = 64 * 1024;

/// The one next-hop host a session is opened to, and the route's policy.
#[derive(Clone, Debug)]
pub struct Peer {
    /// The host name (MX name, relay address, or the domain for an
    /// implicit MX); the TLS server name.
    pub host: String,
    /// The address to connect to.
    pub addr: SocketAddr,
    /// LMTP (RFC 2033) instead of SMTP.
    pub lmtp: bool,
    /// TLS policy of the route.
    pub tls: RouteTls,
    /// AUTH credentials of a relay route.
    pub auth: Option<RouteAuth>,
    /// The local address to connect from (`[queue.outbound.source-ip]`);
    /// `None`: the kernel's choice.
    pub source: Option<std::net::IpAddr>,
    /// The verifying configuration of a route with its own `tls.ca`;
    /// `None`: the transport's.
    pub verify_with: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// For an MX host from the DNS, this server's name (`server.hostname`,
    /// lower case): a host that answers EHLO with it is this server,
    /// reached through an address it cannot tell is its own (a NAT or a
    /// load balancer in front of it), and the session fails with
    /// [`SessionError::LoopsBack`]. `None` for relay routes, which name
    /// their next hop on purpose (another node of the same name, say).
    pub own_name: Option<String>,
}

/// Connects to `peer.addr`, from `peer.source` when one is set.
async fn connect(peer: &Peer) -> std::io::Result<TcpStream> {
    let Some(source) = peer.source else {
        return TcpStream::connect(peer.addr).await;
    };
    let socket = if source.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.bind(std::net::SocketAddr::new(source, 0))?;
    socket.connect(peer.addr).await
}

/// Why a session could not be opened or went away. Always transient for the
/// recipients; the text names the phase.
#[derive(Debug)]
pub enum SessionError {
    /// TCP connect failed.
    Connect(io::Error),
    /// No reply or no progress within the phase's timeout.
    Timeout(&'static str),
    /// Reading or writing failed.
    Io(&'static str, io::Error),
    /// The next hop closed the connection.
    Closed(&'static str),
    /// The bytes were not an SMTP reply.
    Malformed(&'static str, ReplyError),
    /// A setup command (greeting, EHLO, STARTTLS, AUTH, RSET) was refused.
    Rejected(&'static str, Reply),
    /// STARTTLS or implicit TLS failed (handshake, certificate).
    Tls(String),
    /// `tls.mode = "require"` and the next hop does not offer STARTTLS.
    TlsRequired,
    /// AUTH cannot be done (no common mechanism, or no TLS for it).
    Auth(String),
    /// The delivery is being abandoned (shutdown) before the end of the
    /// message was sent; see [`crate::CommitGate`].
    Abandoned,
    /// The next hop answered EHLO (or HELO) with this server's own name:
    /// the mail would come back here (Postfix's "mail for ... loops back to
    /// myself"). Carries the name.
    LoopsBack(String),
}

impl SessionError {
    /// The enhanced status code of this failure (RFC 3463), for the DSN.
    pub fn status(&self) -> &'static str {
        match self {
            SessionError::Connect(_) | SessionError::Timeout("connect") => "4.4.1",
            SessionError::Timeout(_)
            | SessionError::Io(..)
            | SessionError::Closed(_)
            | SessionError::Malformed(..) => "4.4.2",
            SessionError::Rejected(..) => "4.4.0",
            SessionError::Tls(_) => "4.7.5",
            SessionError::TlsRequired => "4.7.4",
            SessionError::Auth(_) => "4.7.8",
            // RFC 3463 X.3.2: system not accepting network messages.
            SessionError::Abandoned => "4.3.2",
            // RFC 3463 X.4.6: routing loop detected. Transient for this
            // host; the caller decides whether the mail has anywhere else
            // to go.
            SessionError::LoopsBack(_) => "4.4.6",
        }
    }

    /// The next hop's reply, when the failure was one.
    pub fn reply(&self) -> Option<&Reply> {
        match self {
            SessionError::Rejected(_, r) => Some(r),
            _ => None,
        }
    }
}

impl std::fmt::Display for SessionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SessionError::Connect(e) => write!(f, "connect failed: {e}"),
            SessionError::Timeout(phase) => write!(f, "timed out during {phase}"),
            SessionError::Io(phase, e) => write!(f, "connection failed during {phase}: {e}"),
            SessionError::Closed(phase) => {
                write!(f, "connection closed by the next hop during {phase}")
            }
            SessionError::Malformed(phase, e) => write!(f, "bad reply to {phase}: {e}"),
            SessionError::Rejected(phase, r) => write!(f, "refused {phase}: {r}"),
            SessionError::Tls(e) => write!(f, "TLS failed: {e}"),
            SessionError::TlsRequired => write!(f, "TLS is required but STARTTLS is not offered"),
            SessionError::Auth(e) => write!(f, "AUTH failed: {e}"),
            SessionError::Abandoned => {
                write!(f, "abandoned by a shutdown before the end of the message")
            }
            SessionError::LoopsBack(name) => {
                write!(f, "the next hop greets as {name}, this server's own name")
            }
        }
    }
}

/// The result of one transaction.
#[derive(Debug)]
pub struct Transaction {
    /// One outcome per recipient of the job, in the job's order.
    pub outcomes: Vec<Outcome>,
    /// The connection can carry another transaction.
    pub usable: bool,
    /// A connection reused from the pool turned out to be closed before
    /// the next hop answered anything in this transaction (it timed out an
    /// idle connection, say). Nothing was sent on, so the caller should
    /// try again on a fresh connection; `outcomes` is empty.
    pub stale: bool,
    /// The next hop answered a command of this transaction with anything
    /// but 421 (see [`crate::RecipientOutcome::answered`]).
    pub answered: bool,
}

/// An open, greeted session, ready for transactions.
pub struct Session {
    stream: Box<dyn Io>,
    rbuf: Vec<u8>,
    /// What the next hop offered in its (last) EHLO/LHLO reply.
    pub caps: Capabilities,
    /// Where the session goes, for outcomes and the log.
    pub remote: Remote,
    /// Transactions attempted on this connection.
    pub transactions: usize,
    /// When the session last finished a transaction; for the idle timeout.
    pub last_used: Instant,
    timeouts: OutboundTimeouts,
    /// Replies read on this connection so far; tells a stale pooled
    /// connection (nothing answered) from a transaction that failed.
    replies: u64,
    /// The last transaction did not end cleanly (a refusal left it open,
    /// or it ended early), so the next one starts with RSET.
    needs_reset: bool,
    /// Replies read so far that were not 421 (service not available).
    live_replies: u64,
}

impl Session {
    /// Connects to `peer` and brings the session to the point where MAIL
    /// may be sent: greeting, EHLO/LHLO, STARTTLS per policy, AUTH.
    ///
    /// Opportunistic TLS (`tls.mode = "optional"`) never costs the mail its
    /// delivery: when the next hop offers STARTTLS and then refuses it, the
    /// session goes on in plain text (RFC 3207 §4 leaves that choice to the
    /// client); when the handshake itself fails (a server that speaks only
    /// TLS 1.0, a broken certificate chain, a middlebox), the connection is
    /// gone, so a new one is opened that does not try STARTTLS. That is
    /// RFC 7435's "fall back to cleartext" and what Postfix's `may` and
    /// Exim's `hosts_try_tls` do; without it such a host would be retried
    /// until the message expired. `require` and implicit TLS never fall back,
    /// and neither does a route with AUTH credentials, which are not to go
    /// over a connection an attacker may have downgraded (Postfix makes the
    /// same exception).
    pub async fn open(
        peer: &Peer,
        hostname: &str,
        timeouts: &OutboundTimeouts,
        tls: &TlsConfigs,
    ) -> Result<Session, SessionError> {
        match Self::open_once(peer, hostname, timeouts, tls, true).await {
            Err(SessionError::Tls(error)) if may_fall_back(peer) => {
                tracing::warn!(
                    host = %peer.host,
                    addr = %peer.addr,
                    %error,
                    "STARTTLS failed; opportunistic TLS: delivering in plain text on a new connection"
                );
                Self::open_once(peer, hostname, timeouts, tls, false).await
            }
            other => other,
        }
    }

    /// One connection attempt of [`Session::open`]; `try_starttls` is false
    /// for the plain-text retry after a failed opportunistic handshake.
    async fn open_once(
        peer: &Peer,
        hostname: &str,
        timeouts: &OutboundTimeouts,
        tls: &TlsConfigs,
        try_starttls: bool,
    ) -> Result<Session, SessionError> {
        let tcp = match tokio::time::timeout(timeouts.connect, connect(peer)).await {
            Err(_) => return Err(SessionError::Timeout("connect")),
            Ok(Err(e)) => return Err(SessionError::Connect(e)),
            Ok(Ok(s)) => s,
        };
        let _ = tcp.set_nodelay(true);
        let mut stream: Box<dyn Io> = Box::new(tcp);
        let mut tls_version = None;
        // Opportunistic STARTTLS (mode `optional`) encrypts without
        // authenticating, as RFC 7435 describes and as Postfix's `may` does:
        // MX hosts rarely have certificates that verify, and refusing them
        // would mean sending in the clear or not at all. `require` (and
        // implicit TLS) verify unless allow-invalid-certs says otherwise, and
        // so does a route with AUTH credentials in every mode: a password
        // must not go to whoever answered STARTTLS with any certificate (an
        // attacker who can strip STARTTLS can as easily present one).
        let verify = !peer.tls.allow_invalid_certs
            && (peer.tls.mode == TlsMode::Require || peer.tls.implicit || peer.auth.is_some());
        let tls_config = match (verify, &peer.verify_with) {
            (true, Some(own)) => own,
            (true, None) => &tls.verify,
            (false, _) => &tls.any,
        };
        if peer.tls.implicit {
            let (s, v) = handshake(stream, peer, tls_config, timeouts.connect).await?;
            stream = s;
            tls_version = Some(v);
        }
        let mut session = Session {
            stream,
            rbuf: Vec::with_capacity(4096),
            caps: Capabilities::default(),
            remote: Remote {
                host: peer.host.clone(),
                ip: peer.addr.ip(),
                port: peer.addr.port(),
                tls: tls_version,
                dsn: false,
                lmtp: peer.lmtp,
                source: peer.source,
            },
            transactions: 0,
            last_used: Instant::now(),
            timeouts: timeouts.clone(),
            replies: 0,
            needs_reset: false,
            live_replies: 0,
        };
        // RFC 5321 §4.3.1: the greeting is 220; 554 (or anything else)
        // means no service here.
        let greeting = session.read_reply("greeting", timeouts.greeting).await?;
        if greeting.code != 220 {
            return Err(SessionError::Rejected("greeting", greeting));
        }
        let greeted_as = session.hello(hostname).await?;
        if let (Some(own), Some(name)) = (&peer.own_name, greeted_as)
            && name.trim_end_matches('.').eq_ignore_ascii_case(own)
        {
            session.quit().await;
            return Err(SessionError::LoopsBack(name));
        }

        // RFC 3207: STARTTLS when offered, unless disabled; with
        // `require`, its absence is a failure of this host.
        if session.remote.tls.is_none() && peer.tls.mode != TlsMode::Disable && try_starttls {
            if session.caps.starttls {
                let reply = session
                    .command(b"STARTTLS\r\n", "STARTTLS", timeouts.ehlo)
                    .await?;
                if reply.code == 220 {
                    session = session.starttls(peer, tls_config).await?;
                    session.hello(hostname).await?;
                } else if reply.closes_connection() {
                    // 421: the host is going away (RFC 5321 §3.8); there is
                    // no session to go on with in plain text. The next host.
                    return Err(SessionError::Rejected("STARTTLS", reply));
                } else if !may_fall_back(peer) {
                    return Err(SessionError::Tls(format!("STARTTLS refused: {reply}")));
                } else {
                    // RFC 3207 §4: after a refusal (454 "TLS not available
                    // due to temporary reason") the session is still in
                    // its plain-text state and may go on as it is.
                    tracing::warn!(
                        host = %peer.host,
                        addr = %peer.addr,
                        %reply,
                        "STARTTLS refused; opportunistic TLS: delivering in plain text"
                    );
                }
            } else if peer.tls.mode == TlsMode::Require {
                return Err(SessionError::TlsRequired);
            }
        }
        if let Some(auth) = &peer.auth {
            session.authenticate(auth).await?;
        }
        Ok(session)
    }

    /// EHLO (or LHLO), falling back to HELO when EHLO is refused with 5xx
    /// (RFC 5321 §4.1.4 keeps HELO for servers that do not know EHLO).
    /// Returns the name the server gave in its reply (the first word of
    /// its first line, RFC 5321 §4.1.1.1), for the loop check.
    async fn hello(&mut self, hostname: &str) -> Result<Option<String>, SessionError> {
        let t = self.timeouts.ehlo;
        let (verb, phase) = if self.remote.lmtp {
            ("LHLO", "LHLO")
        } else {
            ("EHLO", "EHLO")
        };
        let reply = self
            .command(format!("{verb} {hostname}\r\n").as_bytes(), phase, t)
            .await?;
        if reply.is_positive() {
            self.caps = Capabilities::from_ehlo(&reply);
            self.remote.dsn = self.caps.dsn;
            return Ok(greeting_name(&reply));
        }
        if self.remote.lmtp || !reply.is_permanent() {
            return Err(SessionError::Rejected(phase, reply));
        }
        let helo = self
            .command(format!("HELO {hostname}\r\n").as_bytes(), "HELO", t)
            .await?;
        if !helo.is_positive() {
            return Err(SessionError::Rejected("HELO", helo));
        }
        self.caps = Capabilities::default();
        self.remote.dsn = false;
        Ok(greeting_name(&helo))
    }

    /// The handshake after STARTTLS's 220; the capabilities are forgotten,
    /// as RFC 3207 §4.2 requires, and the caller sends EHLO again.
    async fn starttls(
        self,
        peer: &Peer,
        config: &std::sync::Arc<rustls::ClientConfig>,
    ) -> Result<Session, SessionError> {
        // Anything the server sent after its 220 arrived in plain text and
        // must not be read as if it came through TLS (response injection).
        if !self.rbuf.is_empty() {
            return Err(SessionError::Tls(
                "plain-text data after the STARTTLS reply (injection attempt?)".into(),
            ));
        }
        let (stream, version) = handshake(self.stream, peer, config, self.timeouts.tls).await?;
        Ok(Session {
            stream,
            caps: Capabilities::default(),
            remote: Remote {
                tls: Some(version),
                ..self.remote
            },
            ..self
        })
    }

    /// AUTH PLAIN, else AUTH LOGIN (RFC 4954). Credentials go only over TLS
    /// or to a loopback address: a plain-text password on the network is
    /// worse than a deferred message.
    async fn authenticate(&mut self, auth: &RouteAuth) -> Result<(), SessionError> {
        if self.remote.tls.is_none() && !self.remote.ip.is_loopback() {
            return Err(SessionError::Auth(
                "will not send credentials without TLS".into(),
            ));
        }
        let t = self.timeouts.ehlo;
        let done = if self.caps.auth_plain {
            self.command(
                plain_command(&auth.username, &auth.secret).as_bytes(),
                "AUTH",
                t,
            )
            .await?
        } else if self.caps.auth_login {
            let r = self.command(b"AUTH LOGIN\r\n", "AUTH", t).await?;
            if r.code != 334 {
                return Err(SessionError::Rejected("AUTH", r));
            }
            let r = self
                .command(
                    format!("{}\r\n", base64(auth.username.as_bytes())).as_bytes(),
                    "AUTH",
                    t,
                )
                .await?;
            if r.code != 334 {
                return Err(SessionError::Rejected("AUTH", r));
            }
            self.command(
                format!("{}\r\n", base64(auth.secret.as_bytes())).as_bytes(),
                "AUTH",
                t,
            )
            .await?
        } else {
            return Err(SessionError::Auth(
                "the next hop offers neither AUTH PLAIN nor AUTH LOGIN".into(),
            ));
        };
        if done.code != 235 {
            return Err(SessionError::Rejected("AUTH", done));
        }
        Ok(())
    }

    /// RSET (RFC 5321 §4.1.1.5): clears the state a transaction that did not
    /// end cleanly left behind, before the next one.
    pub async fn reset(&mut self) -> Result<(), SessionError> {
        let r = self
            .command(b"RSET\r\n", "RSET", self.timeouts.ehlo)
            .await?;
        if r.is_positive() {
            self.needs_reset = false;
            Ok(())
        } else {
            Err(SessionError::Rejected("RSET", r))
        }
    }

    /// QUIT and close, waiting briefly for the reply.
    pub async fn quit(mut self) {
        let t = self.timeouts.ehlo.min(Duration::from_secs(5));
        let _ = self.command(b"QUIT\r\n", "QUIT", t).await;
        let _ = tokio::time::timeout(t, self.stream.shutdown()).await;
    }

    async fn write(
        &mut self,
        bytes: &[u8],
        phase: &'static str,
        t: Duration,
    ) -> Result<(), SessionError> {
        let stream = &mut self.stream;
        match tokio::time::timeout(t, async {
            stream.write_all(bytes).await?;
            stream.flush().await
        })
        .await
        {
            Err(_) => Err(SessionError::Timeout(phase)),
            Ok(Err(e)) => Err(SessionError::Io(phase, e)),
            Ok(Ok(())) => Ok(()),
        }
    }

    /// Writes without flushing (contents between the command and the end).
    async fn write_part(
        &mut self,
        bytes: &[u8],
        phase: &'static str,
        t: Duration,
    ) -> Result<(), SessionError> {
        for block in bytes.chunks(WRITE_BLOCK) {
            match tokio::time::timeout(t, self.stream.write_all(block)).await {
                Err(_) => return Err(SessionError::Timeout(phase)),
                Ok(Err(e)) => return Err(SessionError::Io(phase, e)),
                Ok(Ok(())) => {}
            }
        }
        Ok(())
    }

    async fn read_reply(
        &mut self,
        phase: &'static str,
        t: Duration,
    ) -> Result<Reply, SessionError> {
        let deadline = tokio::time::Instant::now() + t;
        loop {
            match parse_reply(&self.rbuf) {
                Err(e) => return Err(SessionError::Malformed(phase, e)),
                Ok(Some((reply, used))) => {
                    self.rbuf.drain(..used);
                    self.replies += 1;
                    if reply.code != 421 {
                        self.live_replies += 1;
                    }
                    return Ok(reply);
                }
                Ok(None) => {}
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return Err(SessionError::Timeout(phase)),
                Ok(Err(e)) => return Err(SessionError::Io(phase, e)),
                Ok(Ok(0)) => return Err(SessionError::Closed(phase)),
                Ok(Ok(n)) => self.rbuf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    async fn command(
        &mut self,
        line: &[u8],
        phase: &'static str,
        t: Duration,
    ) -> Result<Reply, SessionError> {
        self.write(line, phase, t).await?;
        self.read_reply(phase, t).await
    }

    /// `host[ip]` for reasons, as Postfix writes it.
    fn who(&self) -> String {
        format!("{}[{}]", self.remote.host, self.remote.ip)
    }

    /// The outcome a reply means for the recipients it applies to.
    fn outcome(&self, reply: &Reply, phase: &str) -> Outcome {
        let remote = reply.to_remote();
        if reply.is_positive() {
            return Outcome::Delivered { reply: remote };
        }
        let reason = format!("{} said: {remote} (in reply to {phase})", self.who());
        if reply.is_permanent() {
            Outcome::Permanent {
                reason,
                reply: Some(remote),
            }
        } else {
            Outcome::Transient {
                reason,
                reply: Some(remote),
            }
        }
    }

    fn lost(&self, e: &SessionError) -> Outcome {
        Outcome::Transient {
            reason: format!("{} {}: {e}", e.status(), self.who()),
            reply: e.reply().map(Reply::to_remote),
        }
    }

    /// What a reply to DATA other than 354 means for the accepted
    /// recipients, and whether the connection stays usable. Only 354, 4xx
    /// or 5xx may answer DATA (RFC 5321 §4.3.2); a 2xx or another 3xx
    /// means the replies are out of step with the commands (or a broken
    /// next hop), so nothing is known to be delivered: transient, and the
    /// connection is not used again.
    fn data_refused(&self, reply: &Reply) -> (Outcome, bool) {
        if reply.code >= 400 {
            return (self.outcome(reply, "DATA"), !reply.closes_connection());
        }
        (
            Outcome::Transient {
                reason: format!(
                    "4.5.0 {}: unexpected reply to DATA, the message was not sent: {reply}",
                    self.who()
                ),
                reply: Some(reply.to_remote()),
            },
            false,
        )
    }

    /// Sends one message to the job's recipients. Never fails as a whole:
    /// every recipient gets an outcome, and `usable` says whether the
    /// connection may carry another transaction.
    ///
    /// With PIPELINING (always for LMTP, RFC 2033 §4.2) MAIL, every RCPT and
    /// DATA go in one write (RFC 2920 §3.1); a RCPT reply applies to its
    /// recipient only; the reply to DATA's end (or to the last BDAT) applies
    /// to every recipient accepted at RCPT, except with LMTP, which answers
    /// once per accepted recipient (RFC 2033 §4.2).
    pub async fn send(&mut self, job: &Job, recipients: &[&Recipient]) -> Transaction {
        self.transactions += 1;
        let n = recipients.len();
        let plan = match plan(&job.envelope, recipients, &job.contents, &self.caps) {
            Ok(p) => p,
            Err(refusal) => {
                let o = Outcome::Permanent {
                    reason: format!("{} {}: {}", refusal.status, self.who(), refusal.reason),
                    reply: None,
                };
                return Transaction {
                    outcomes: vec![o; n],
                    usable: true,
                    stale: false,
                    answered: false,
                };
            }
        };
        let mut outcomes: Vec<Option<Outcome>> = vec![None; n];
        let reused = self.transactions > 1;
        let replies_before = self.replies;
        let live_before = self.live_replies;
        let usable = match self.transact(job, recipients, &plan, &mut outcomes).await {
            Ok(usable) => usable,
            Err(SessionError::Closed(_) | SessionError::Io(..))
                if reused && self.replies == replies_before =>
            {
                // Closed while it sat in the pool: no reply means no MAIL
                // was accepted, so no message can have gone anywhere.
                return Transaction {
                    outcomes: Vec::new(),
                    usable: false,
                    stale: true,
                    answered: false,
                };
            }
            Err(SessionError::Rejected(_, reply))
                if reused && reply.closes_connection() && self.replies == replies_before + 1 =>
            {
                // A 421 as the first reply of a reused connection's
                // transaction (the next hop shut it down while it sat in
                // the pool): nothing was accepted, so try a new one.
                return Transaction {
                    outcomes: Vec::new(),
                    usable: false,
                    stale: true,
                    answered: false,
                };
            }
            Err(e) => {
                let o = self.lost(&e);
                for slot in outcomes.iter_mut().filter(|s| s.is_none()) {
                    *slot = Some(o.clone());
                }
                false
            }
        };
        let outcomes = outcomes
            .into_iter()
            .map(|o| {
                o.unwrap_or_else(|| Outcome::Transient {
                    reason: format!(
                        "4.4.2 {}: transaction ended without a reply for this recipient",
                        self.who()
                    ),
                    reply: None,
                })
            })
            .collect();
        self.last_used = Instant::now();
        Transaction {
            outcomes,
            usable,
            stale: false,
            answered: self.live_replies > live_before,
        }
    }

    /// The transaction proper; fills `outcomes` and returns whether the
    /// connection stays usable. An error leaves the unfilled outcomes to the
    /// caller.
    async fn transact(
        &mut self,
        job: &Job,
        recipients: &[&Recipient],
        plan: &crate::protocol::command::Plan,
        outcomes: &mut [Option<Outcome>],
    ) -> Result<bool, SessionError> {
        let t = self.timeouts.clone();
        let pipelining = self.caps.pipelining || self.remote.lmtp;
        let data_pipelined = pipelining && !plan.chunking;
        let contents: &[u8] = plan.converted.as_deref().unwrap_or(&job.contents);
        let mail = mail_from(&job.envelope, plan, contents.len());
        let rcpts: Vec<String> = recipients.iter().map(|r| rcpt_to(r, plan)).collect();

        // A connection whose last transaction ended cleanly (the reply to
        // the end of the data, RFC 5321 §4.1.1.4, clears all state) takes
        // the next MAIL directly: no RSET round trip per reused message.
        // After anything else, RSET first (§4.1.1.5), in the same group
        // when pipelining (RFC 2920 §3.1 allows RSET anywhere in one).
        let reset = self.needs_reset;
        if reset && !pipelining {
            self.reset().await?;
        }
        // Until every reply of this transaction is in.
        self.needs_reset = true;
        if pipelining {
            let mut out = if reset {
                let mut o = String::from("RSET\r\n");
                o.push_str(&mail);
                o
            } else {
                mail
            };
            for r in &rcpts {
                out.push_str(r);
            }
            if data_pipelined {
                out.push_str("DATA\r\n");
            }
            self.write(out.as_bytes(), "MAIL", t.mail).await?;
            if reset {
                let r = self.read_reply("RSET", t.mail).await?;
                if !r.is_positive() {
                    return Err(SessionError::Rejected("RSET", r));
                }
            }
        } else {
            self.write(mail.as_bytes(), "MAIL", t.mail).await?;
        }
        let mail_reply = self.read_reply("MAIL", t.mail).await?;
        if mail_reply.closes_connection() && !reset && self.transactions > 1 {
            // The first reply of a reused connection's transaction: the
            // caller retries on a new connection (nothing was accepted).
            return Err(SessionError::Rejected("MAIL", mail_reply));
        }
        let mail_ok = mail_reply.is_positive();
        if !mail_ok {
            let o = self.outcome(&mail_reply, "MAIL FROM");
            outcomes.iter_mut().for_each(|s| *s = Some(o.clone()));
            if mail_reply.closes_connection() || !pipelining {
                return Ok(!mail_reply.closes_connection());
            }
        }

        let mut accepted = Vec::new();
        for (i, line) in rcpts.iter().enumerate() {
            if !pipelining {
                self.write(line.as_bytes(), "RCPT", t.rcpt).await?;
            }
            let reply = self.read_reply("RCPT", t.rcpt).await?;
            if reply.closes_connection() {
                // 421: the server is going away (RFC 5321 §3.8); nobody
                // got the message.
                let o = self.outcome(&reply, "RCPT TO");
                // Recipients refused before it keep their own replies.
                outcomes
                    .iter_mut()
                    .filter(|s| s.is_none())
                    .for_each(|s| *s = Some(o.clone()));
                return Ok(false);
            }
            if mail_ok {
                if reply.is_positive() {
                    accepted.push(i);
                } else {
                    outcomes[i] = Some(self.outcome(&reply, "RCPT TO"));
                }
            }
        }

        if data_pipelined {
            let reply = self.read_reply("DATA", t.data).await?;
            if accepted.is_empty() {
                // RFC 2920 §3.1: DATA was accepted although no recipient
                // was; end it with an empty message nobody receives.
                if reply.code == 354 {
                    self.write(b".\r\n", "DATA", t.data).await?;
                    let _ = self.read_reply("DATA", t.data).await?;
                }
                return Ok(!reply.closes_connection());
            }
            if reply.code != 354 {
                let (o, usable) = self.data_refused(&reply);
                accepted.iter().for_each(|&i| outcomes[i] = Some(o.clone()));
                return Ok(usable);
            }
        } else if accepted.is_empty() {
            return Ok(true);
        } else if !plan.chunking {
            let reply = self.command(b"DATA\r\n", "DATA", t.data).await?;
            if reply.code != 354 {
                let (o, usable) = self.data_refused(&reply);
                accepted.iter().for_each(|&i| outcomes[i] = Some(o.clone()));
                return Ok(usable);
            }
        }

        let end_phase = if plan.chunking {
            // RFC 3030 §2: BDAT <size> [LAST] and exactly that many octets;
            // no dot-stuffing. Chunks before the last are answered one by one.
            let ranges = chunks(contents.len(), BDAT_CHUNK);
            let last = ranges.len() - 1;
            for (k, range) in ranges.into_iter().enumerate() {
                if k == last && !job.gate.enter() {
                    return Err(SessionError::Abandoned);
                }
                let header = if k == last {
                    format!("BDAT {} LAST\r\n", range.len())
                } else {
                    format!("BDAT {}\r\n", range.len())
                };
                self.write_part(header.as_bytes(), "BDAT", t.data).await?;
                self.write(&contents[range], "BDAT", t.data).await?;
                if k != last {
                    let reply = self.read_reply("BDAT", t.data).await?;
                    if !reply.is_positive() {
                        let o = self.outcome(&reply, "BDAT");
                        accepted.iter().for_each(|&i| outcomes[i] = Some(o.clone()));
                        return Ok(!reply.closes_connection());
                    }
                }
            }
            "BDAT LAST"
        } else {
            // RFC 5321 §4.5.2: a dot is doubled at the start of a line.
            let mut last = 0;
            for p in stuffing_points(contents) {
                self.write_part(&contents[last..p], "DATA", t.data).await?;
                self.write_part(b".", "DATA", t.data).await?;
                last = p;
            }
            let tail = &contents[last..];
            let end = terminator(contents);
            if !job.gate.enter() {
                return Err(SessionError::Abandoned);
            }
            if tail.len() <= COALESCE_MAX {
                // The last piece and the terminator in one write: one
                // segment (and one wake-up of the next hop) less per message.
                let mut buf = Vec::with_capacity(tail.len() + end.len());
                buf.extend_from_slice(tail);
                buf.extend_from_slice(end);
                self.write(&buf, "DATA", t.data).await?;
            } else {
                self.write_part(tail, "DATA", t.data).await?;
                self.write(end, "DATA", t.data).await?;
            }
            "end of DATA"
        };

        let mut usable = true;
        if self.remote.lmtp {
            for &i in &accepted {
                let reply = self.read_reply(end_phase, t.data).await?;
                outcomes[i] = Some(self.outcome(&reply, end_phase));
                usable &= !reply.closes_connection();
            }
        } else {
            let reply = self.read_reply(end_phase, t.data).await?;
            let o = self.outcome(&reply, end_phase);
            accepted.iter().for_each(|&i| outcomes[i] = Some(o.clone()));
            usable = !reply.closes_connection();
        }
        // Every reply of the transaction is in: the next one needs no RSET.
        self.needs_reset = false;
        Ok(usable)
    }
}

/// The name a server gives in the first line of its EHLO or HELO reply
/// (`250-mx.example.org Hello ...`): its first word, when there is one.
fn greeting_name(reply: &Reply) -> Option<String> {
    reply
        .lines
        .first()
        .and_then(|l| l.split_ascii_whitespace().next())
        .map(str::to_string)
}

/// Whether a failed STARTTLS may give way to plain text: only for
/// opportunistic TLS, and not when AUTH credentials would then be sent
/// over a connection an attacker may have downgraded (for such a route the
/// certificate is verified too, so a failed verification ends the attempt).
fn may_fall_back(peer: &Peer) -> bool {
    peer.tls.mode == TlsMode::Optional && !peer.tls.implicit && peer.auth.is_none()
}

/// The TLS handshake over `stream`, bounded by `t`.
async fn handshake(
    stream: Box<dyn Io>,
    peer: &Peer,
    config: &std::sync::Arc<rustls::ClientConfig>,
    t: Duration,
) -> Result<(Box<dyn Io>, String), SessionError> {
    let connector = TlsConnector::from(config.clone());
    let name = server_name(&peer.host, peer.addr.ip());
    match tokio::time::timeout(t, connector.connect(name, stream)).await {
        Err(_) => Err(SessionError::Tls("handshake timed out".into())),
        Ok(Err(e)) => Err(SessionError::Tls(e.to_string())),
        Ok(Ok(tls)) => {
            let version = tls
                .get_ref()
                .1
                .protocol_version()
                .map(version_name)
                .unwrap_or_else(|| "TLS".into());
            Ok((Box::new(tls), version))
        }
    }
}
