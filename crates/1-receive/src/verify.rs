//! Sender authentication of received mail: SPF (RFC 7208) for the HELO
//! and MAIL FROM identities, DKIM signatures (RFC 6376) and the From
//! domain's DMARC policy (RFC 7489), set with Stalwart's keys
//! (`[auth.spf.verify] ehlo` and `mail-from`, `[auth.dkim] verify`,
//! `[auth.dmarc] verify`), each `disable`, `relaxed` or `strict`.
//!
//! When each check runs, so that nothing waits for the DNS that need not:
//! * the HELO check starts in the background at EHLO/HELO/LHLO, the MAIL
//!   FROM check at MAIL FROM; in `relaxed` mode their results are awaited
//!   only at the end of the message (for the Authentication-Results
//!   field), in `strict` mode at MAIL FROM, which a failure refuses;
//! * DKIM and DMARC run at the end of DATA (or BDAT LAST) over the bytes
//!   the client sent, before the reply and before the message is made
//!   durable, since `strict` may refuse it. DMARC needs the DKIM results
//!   and the MAIL FROM SPF result: with DMARC on, the signatures are
//!   checked even when `[auth.dkim] verify` is `disable` (and not
//!   reported), and SPF is looked up at the end of DATA when `mail-from`
//!   is `disable` (and neither reported nor enforced).
//!
//! Who is verified: mail from elsewhere. A session that authenticated
//! with AUTH, or a client `session.rcpt.relay` trusts (evaluated with no
//! recipient), is not verified at all: its mail is mail this server sends
//! out, a submitter's address is not in its domain's SPF record, and its
//! message is signed only after this point (Postfix's
//! `permit_sasl_authenticated` and `permit_mynetworks` before an SPF
//! policy service). The settings are expressions evaluated per session or
//! message (`local_port`, `remote_ip`, `helo_domain`, `sender_domain`...).
//!
//! What `strict` refuses, as Stalwart's does:
//! * SPF: any result but `pass` (not only `fail`): 550 5.7.23, `permerror`
//!   550 5.7.24, `temperror` 451 4.7.24 (RFC 7372 §3.2, RFC 7208 §8);
//! * DKIM: a message none of whose signatures passes, an unsigned one
//!   included: 550 5.7.20, or 451 4.7.20 when a key lookup failed (RFC
//!   7372 §3.1);
//! * DMARC: a message that fails when the domain's policy is `reject`:
//!   550 5.7.1 (451 4.7.1 when a mechanism failed temporarily, or when
//!   the policy record itself could not be read, where Stalwart accepts).
//!   `quarantine` and `none` are accepted with the result in the field.
//!
//! Lookups go through mail-auth's `MessageAuthenticator` (hickory's
//! caching resolver) over the `[resolver]` servers, the ones delivery and
//! the connection checks ask. The pure parts (result mapping, refusals)
//! are free functions tested here.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use ferrymail_config::{AuthChecks, Expr, Variables, VerifyMode};
use hickory_resolver::config::{ResolverConfig, ResolverOpts};
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{AuthenticatedMessage, MessageAuthenticator, SpfOutput};
use tokio::task::JoinHandle;

use crate::protocol::reply::{Reply, replies};

/// Longest an SPF evaluation may take (RFC 7208 §4.6.4 bounds it at 10
/// lookups; mail-auth stops starting lookups after 20 s); past it the
/// result is `temperror`.
pub const SPF_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest the DKIM and DMARC checks of one message may take together;
/// past it their results are `temperror`. Well inside the 10 minutes a
/// client waits for the end-of-data reply (RFC 5321 §4.5.3.2.6).
pub const MESSAGE_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------- pure parts

/// Which SPF identity a check is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Identity {
    /// The HELO/EHLO name (RFC 7208 §2.3).
    Helo,
    /// The MAIL FROM address (RFC 7208 §2.4).
    MailFrom,
}

impl Identity {
    /// As replies and logs name it.
    pub fn name(self) -> &'static str {
        match self {
            Identity::Helo => "HELO",
            Identity::MailFrom => "MAIL FROM",
        }
    }
}

/// An SPF result (RFC 7208 §2.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spf {
    /// The client is authorized.
    Pass,
    /// The client is not authorized (`-all`).
    Fail,
    /// Probably not authorized (`~all`).
    SoftFail,
    /// The domain makes no assertion (`?all`).
    Neutral,
    /// No SPF record, or no valid domain to look one up for.
    None,
    /// A DNS error: the check may pass later.
    TempError,
    /// The record is broken.
    PermError,
}

impl Spf {
    /// The result as RFC 7208 and RFC 8601 spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Spf::Pass => "pass",
            Spf::Fail => "fail",
            Spf::SoftFail => "softfail",
            Spf::Neutral => "neutral",
            Spf::None => "none",
            Spf::TempError => "temperror",
            Spf::PermError => "permerror",
        }
    }
}

impl From<mail_auth::SpfResult> for Spf {
    fn from(r: mail_auth::SpfResult) -> Spf {
        use mail_auth::SpfResult as R;
        match r {
            R::Pass => Spf::Pass,
            R::Fail => Spf::Fail,
            R::SoftFail => Spf::SoftFail,
            R::Neutral => Spf::Neutral,
            R::None => Spf::None,
            R::TempError => Spf::TempError,
            R::PermError => Spf::PermError,
        }
    }
}

/// The reply that refuses MAIL FROM when an SPF check in `strict` mode did
/// not pass; `None` for a pass. Stalwart's strict demands a pass, so
/// `softfail`, `neutral` and `none` are refused too.
pub fn spf_refusal(identity: Identity, domain: &str, result: Spf) -> Option<Reply> {
    // The name comes from the client (its HELO, its sender); a reply line
    // holds at most 512 octets (RFC 5321 §4.5.3.1.5) and a domain name
    // 255 (RFC 1035 §2.3.4).
    let mut end = domain.len().min(255);
    while !domain.is_char_boundary(end) {
        end -= 1;
    }
    let domain = if domain.is_empty() {
        "(none)"
    } else {
        &domain[..end]
    };
    match result {
        Spf::Pass => None,
        Spf::TempError => Some(replies::spf_temporary(identity.name(), domain)),
        Spf::PermError => Some(replies::spf_error(identity.name(), domain)),
        other => Some(replies::spf_failed(identity.name(), domain, other.as_str())),
    }
}

/// What one SPF check found.
#[derive(Clone, Debug)]
pub struct SpfVerdict {
    /// The identity checked.
    pub identity: Identity,
    /// What Authentication-Results names: the HELO name, or the sender
    /// (`postmaster@` the HELO name for the null sender, RFC 7208 §2.4).
    pub checked: String,
    /// The domain whose record decided.
    pub domain: String,
    /// The result.
    pub result: Spf,
    /// mail-auth's own output, which DMARC reads.
    pub output: SpfOutput,
}

/// A DKIM result (RFC 8601 §2.7.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dkim {
    /// The signature verifies.
    Pass,
    /// It does not.
    Fail,
    /// It could not be checked (mail-auth's result for a changed body or
    /// an expired or malformed signature).
    Neutral,
    /// The key record is missing or broken.
    PermError,
    /// The key could not be fetched now.
    TempError,
    /// The message has no signature.
    None,
}

impl Dkim {
    /// The result as RFC 8601 spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Dkim::Pass => "pass",
            Dkim::Fail => "fail",
            Dkim::Neutral => "neutral",
            Dkim::PermError => "permerror",
            Dkim::TempError => "temperror",
            Dkim::None => "none",
        }
    }
}

/// What one DKIM signature's check found, owned (mail-auth's output
/// borrows the message).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DkimVerdict {
    /// The result.
    pub result: Dkim,
    /// Why it did not pass.
    pub reason: Option<String>,
    /// The signing domain (`d=`).
    pub domain: String,
    /// The selector (`s=`).
    pub selector: String,
    /// The first 8 characters of `b=` (RFC 6008 `header.b`).
    pub b: String,
}

impl DkimVerdict {
    /// The entry for a message without signatures (`dkim=none`).
    pub fn unsigned() -> DkimVerdict {
        DkimVerdict {
            result: Dkim::None,
            reason: None,
            domain: String::new(),
            selector: String::new(),
            b: String::new(),
        }
    }

    fn temporary(reason: &str) -> DkimVerdict {
        DkimVerdict {
            result: Dkim::TempError,
            reason: Some(reason.to_string()),
            ..DkimVerdict::unsigned()
        }
    }
}

/// The reply that refuses a message in DKIM `strict` mode: when no
/// signature passes (an unsigned message too, as in Stalwart), 550
/// 5.7.20, or 451 4.7.20 when a key lookup failed and a retry may pass.
pub fn dkim_refusal(signatures: &[DkimVerdict]) -> Option<Reply> {
    if signatures.iter().any(|s| s.result == Dkim::Pass) {
        return None;
    }
    if signatures.iter().any(|s| s.result == Dkim::TempError) {
        Some(replies::dkim_temporary())
    } else {
        Some(replies::dkim_failed())
    }
}

/// A DMARC result (RFC 7489 §11.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dmarc {
    /// An aligned SPF or DKIM pass.
    Pass,
    /// Neither passes aligned.
    Fail,
    /// A DNS error.
    TempError,
    /// A broken record.
    PermError,
    /// No policy, or no single From domain to look one up for.
    None,
}

impl Dmarc {
    /// The result as RFC 7489 spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Dmarc::Pass => "pass",
            Dmarc::Fail => "fail",
            Dmarc::TempError => "temperror",
            Dmarc::PermError => "permerror",
            Dmarc::None => "none",
        }
    }
}

/// A DMARC policy (RFC 7489 §6.3 `p=`), as it applies to the message
/// (`sp=` for a subdomain, one level less in test mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DmarcPolicy {
    /// `none`: monitoring only.
    None,
    /// `quarantine`: treat as suspicious; accepted (with the result in
    /// the field, for the mailbox server's spam folder).
    Quarantine,
    /// `reject`: refused in `strict` mode.
    Reject,
}

impl DmarcPolicy {
    /// As the record spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            DmarcPolicy::None => "none",
            DmarcPolicy::Quarantine => "quarantine",
            DmarcPolicy::Reject => "reject",
        }
    }
}

/// What the DMARC check found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DmarcVerdict {
    /// The result.
    pub result: Dmarc,
    /// The RFC 5322.From domain; empty when there is no single one.
    pub from_domain: String,
    /// The policy that applies; `None` when no record was found (or it
    /// could not be read).
    pub policy: Option<DmarcPolicy>,
    /// The message names exactly one From domain. Without one DMARC has
    /// nothing to check, and a second From field (or an address with no
    /// domain) would let a forger's message pass under a domain the reader
    /// sees but DMARC never checked.
    pub single_from: bool,
}

/// The reply that refuses a message in DMARC `strict` mode: a failure
/// under a `reject` policy gets 550 5.7.1 (RFC 7489 §6.6.4), a temporary
/// failure under it or a policy that could not be read 451 4.7.1.
/// `quarantine` and `none` never refuse.
pub fn dmarc_refusal(v: &DmarcVerdict) -> Option<Reply> {
    // RFC 7489 §6.6.1: a message without exactly one author domain may be
    // rejected; RFC 5322 §3.6 allows one From field.
    if !v.single_from {
        return Some(replies::dmarc_no_single_from());
    }
    match (v.policy, v.result) {
        (_, Dmarc::Pass) => None,
        (Some(DmarcPolicy::Reject), Dmarc::TempError) | (None, Dmarc::TempError) => {
            Some(replies::dmarc_temporary(&v.from_domain))
        }
        (Some(DmarcPolicy::Reject), _) => Some(replies::dmarc_rejected(&v.from_domain)),
        _ => None,
    }
}

fn dkim_verdict(o: &mail_auth::DkimOutput<'_>) -> DkimVerdict {
    use mail_auth::DkimResult as R;
    let (result, reason) = match o.result() {
        R::Pass => (Dkim::Pass, None),
        R::Fail(e) => (Dkim::Fail, Some(e.to_string())),
        R::Neutral(e) => (Dkim::Neutral, Some(e.to_string())),
        R::PermError(e) => (Dkim::PermError, Some(e.to_string())),
        R::TempError(e) => (Dkim::TempError, Some(e.to_string())),
        R::None => (Dkim::None, None),
    };
    let (domain, selector, b) = match o.signature() {
        Some(s) => (
            s.d.clone(),
            s.s.clone(),
            // Six bytes are exactly the first 8 base64 characters of b=.
            base64::engine::general_purpose::STANDARD.encode(&s.b[..s.b.len().min(6)]),
        ),
        None => Default::default(),
    };
    DkimVerdict {
        result,
        reason,
        domain,
        selector,
        b,
    }
}

fn dmarc_verdict(o: &mail_auth::DmarcOutput) -> DmarcVerdict {
    use mail_auth::DmarcResult as R;
    let result = match o.result() {
        R::Pass => Dmarc::Pass,
        R::Fail(_) => Dmarc::Fail,
        R::TempError(_) => Dmarc::TempError,
        R::PermError(_) => Dmarc::PermError,
        R::None => Dmarc::None,
    };
    let policy = o.dmarc_record().map(|_| match o.policy() {
        mail_auth::dmarc::Policy::Reject => DmarcPolicy::Reject,
        mail_auth::dmarc::Policy::Quarantine => DmarcPolicy::Quarantine,
        mail_auth::dmarc::Policy::None | mail_auth::dmarc::Policy::Unspecified => DmarcPolicy::None,
    });
    DmarcVerdict {
        result,
        from_domain: o.domain().to_string(),
        policy,
        single_from: true,
    }
}

/// Whether `m`'s From fields give exactly one domain, every address
/// having one (RFC 7489 §6.6.1).
fn single_from_domain(m: &AuthenticatedMessage<'_>) -> bool {
    let mut domains = std::collections::BTreeSet::new();
    for address in &m.from {
        match address.rsplit_once('@') {
            Some((_, d)) if !d.is_empty() => {
                domains.insert(d.to_ascii_lowercase());
            }
            _ => return false,
        }
    }
    domains.len() == 1
}

// ---------------------------------------------------------------- lookups

/// The sender checks of a server: the four settings, and mail-auth over
/// the `[resolver]` servers. Built once at start-up and shared by every
/// session.
pub struct Verifier {
    spf_ehlo: Expr,
    spf_mail_from: Expr,
    dkim: Expr,
    dmarc: Expr,
    /// This server's name, SPF's `%{r}` macro.
    hostname: String,
    /// All four settings are the constant `disable`.
    off: bool,
    /// The lookups; `Err` when they could not be set up (then every
    /// result is `temperror`) or nothing is verified.
    dns: Result<MessageAuthenticator, String>,
    /// Messages verified at once. Each holds a blocking thread for up to
    /// [`MESSAGE_TIMEOUT`] (its DNS waits included), and the domains it
    /// asks about are the sender's to choose: without a cap, slow name
    /// servers could take every blocking thread of the process.
    slots: tokio::sync::Semaphore,
}

/// How many messages are verified at once (see `Verifier::slots`); more
/// wait for a turn.
const MAX_CONCURRENT_VERIFICATIONS: usize = 64;

impl Verifier {
    /// The checks `auth` asks for, with the name servers of `[resolver]`
    /// (`setup` from `ferrymail_deliver::resolver_setup`, as the
    /// connection checks get it). With nothing to verify no resolver is
    /// built.
    pub fn new(
        auth: &AuthChecks,
        hostname: &str,
        setup: Result<(ResolverConfig, ResolverOpts), String>,
    ) -> Verifier {
        let off = auth.verifies_nothing();
        let dns = if off {
            Err("sender verification is off".to_string())
        } else {
            setup.and_then(|(config, options)| {
                MessageAuthenticator::new(config, options)
                    .map_err(|e| format!("cannot set up DNS: {e}"))
            })
        };
        if !off && let Err(e) = &dns {
            tracing::warn!(error = %e, "sender verification cannot use the DNS: SPF, DKIM and DMARC results will be temperror");
        }
        Verifier {
            spf_ehlo: auth.spf_ehlo.clone(),
            spf_mail_from: auth.spf_mail_from.clone(),
            dkim: auth.dkim_verify.clone(),
            dmarc: auth.dmarc_verify.clone(),
            hostname: hostname.to_string(),
            off,
            dns,
            slots: tokio::sync::Semaphore::new(MAX_CONCURRENT_VERIFICATIONS),
        }
    }

    /// A verifier that checks nothing.
    pub fn off() -> Verifier {
        Verifier::new(&AuthChecks::default(), "", Err(String::new()))
    }

    /// Whether nothing is ever verified: sessions skip every step.
    pub fn is_off(&self) -> bool {
        self.off
    }

    /// `[auth.spf.verify] ehlo` for a session.
    pub fn helo_mode(&self, vars: &dyn Variables) -> VerifyMode {
        VerifyMode::eval(&self.spf_ehlo, vars)
    }

    /// `[auth.spf.verify] mail-from` for a transaction.
    pub fn mail_from_mode(&self, vars: &dyn Variables) -> VerifyMode {
        VerifyMode::eval(&self.spf_mail_from, vars)
    }

    /// `[auth.dkim] verify` and `[auth.dmarc] verify` for a message.
    /// The DKIM and DMARC modes for a message. They are decided once for
    /// all its recipients, so `rcpt` and `rcpt_domain` read as Null here,
    /// as `ferrymail check` warns.
    pub fn message_modes(&self, vars: &dyn Variables) -> (VerifyMode, VerifyMode) {
        let vars = NoRecipient(vars);
        (
            VerifyMode::eval(&self.dkim, &vars),
            VerifyMode::eval(&self.dmarc, &vars),
        )
    }

    /// Starts the SPF check of `identity` for a client at `ip` in the
    /// background; `sender` is the MAIL FROM address (empty for the null
    /// sender, or for the HELO check).
    pub fn check_spf(
        self: &Arc<Self>,
        mode: VerifyMode,
        identity: Identity,
        ip: IpAddr,
        helo: &str,
        sender: &str,
    ) -> SpfCheck {
        let ip = ip.to_canonical();
        let checked = match identity {
            Identity::Helo => helo.to_string(),
            Identity::MailFrom if sender.is_empty() => format!("postmaster@{helo}"),
            Identity::MailFrom => sender.to_string(),
        };
        let this = self.clone();
        let (helo, sender) = (helo.to_string(), sender.to_string());
        let task = tokio::spawn(async move { this.spf(identity, ip, &helo, &sender).await });
        SpfCheck {
            mode,
            identity,
            ip,
            checked,
            state: SpfState::Running(task),
        }
    }

    /// One SPF evaluation (RFC 7208 §4), bounded by [`SPF_TIMEOUT`].
    async fn spf(&self, identity: Identity, ip: IpAddr, helo: &str, sender: &str) -> SpfOutput {
        let params = match identity {
            Identity::Helo => SpfParameters::verify_ehlo(ip, helo, &self.hostname),
            Identity::MailFrom => SpfParameters::verify_mail_from(ip, helo, &self.hostname, sender),
        };
        let domain = match identity {
            Identity::MailFrom => sender.rsplit_once('@').map_or(helo, |(_, d)| d),
            Identity::Helo => helo,
        };
        let temporary =
            || SpfOutput::new(domain.to_string()).with_result(mail_auth::SpfResult::TempError);
        let Ok(dns) = &self.dns else {
            return temporary();
        };
        tokio::time::timeout(SPF_TIMEOUT, dns.verify_spf(params))
            .await
            .unwrap_or_else(|_| temporary())
    }

    /// Verifies the DKIM signatures and the DMARC policy of a complete
    /// message (`check.contents[check.from..]`, the client's bytes) and
    /// hands the contents back with what was found. The parsing, body
    /// hashes and signature checks are CPU work of a millisecond or more
    /// per message, so all of it runs off the session's worker. `None`
    /// when that task failed (the contents went with it).
    pub async fn verify_message(
        self: &Arc<Self>,
        check: MessageCheck,
    ) -> Option<(Vec<u8>, MessageVerdict)> {
        let Ok(_slot) = self.slots.acquire().await else {
            return None;
        };
        let this = self.clone();
        let runtime = tokio::runtime::Handle::current();
        let done = tokio::task::spawn_blocking(move || {
            let verdict = {
                let client = check.contents.get(check.from..).unwrap_or_default();
                let message = AuthenticatedMessage::parse(client);
                runtime.block_on(async {
                    tokio::time::timeout(
                        MESSAGE_TIMEOUT,
                        this.verify_parsed(message.as_ref(), &check),
                    )
                    .await
                    .unwrap_or_else(|_| MessageVerdict::temporary(&check, "timed out"))
                })
            };
            (check.contents, verdict)
        })
        .await;
        match done {
            Ok(done) => Some(done),
            Err(e) => {
                tracing::error!(error = %e, "message verification task failed");
                None
            }
        }
    }

    async fn verify_parsed(
        &self,
        message: Option<&AuthenticatedMessage<'_>>,
        check: &MessageCheck,
    ) -> MessageVerdict {
        let dns = match &self.dns {
            Ok(d) => d,
            Err(e) => return MessageVerdict::temporary(check, e),
        };
        let outputs = match message {
            Some(m) => dns.verify_dkim(m).await,
            None => Vec::new(),
        };
        let dkim = (check.dkim != VerifyMode::Disable).then(|| {
            if outputs.is_empty() {
                vec![DkimVerdict::unsigned()]
            } else {
                outputs.iter().map(dkim_verdict).collect()
            }
        });
        let dmarc = if check.dmarc == VerifyMode::Disable {
            None
        } else if let Some(m) = message.filter(|m| single_from_domain(m)) {
            let spf = match &check.spf {
                Some(o) => o.clone(),
                None => {
                    self.spf(Identity::MailFrom, check.ip, &check.helo, &check.sender)
                        .await
                }
            };
            // RFC 7489 §3.1.2 aligns SPF on the MAIL FROM domain, the HELO
            // name for the null sender (RFC 7208 §2.4).
            let mail_from_domain = check
                .sender
                .rsplit_once('@')
                .map_or(check.helo.as_str(), |(_, d)| d);
            let output = dns
                .verify_dmarc(DmarcParameters::new(m, &outputs, mail_from_domain, &spf))
                .await;
            Some(dmarc_verdict(&output))
        } else {
            // Unparseable, or not exactly one From domain.
            Some(DmarcVerdict {
                result: Dmarc::PermError,
                from_domain: String::new(),
                policy: None,
                single_from: false,
            })
        };
        MessageVerdict { dkim, dmarc }
    }
}

/// A message's variables with no recipient: see
/// [`Verifier::message_modes`].
struct NoRecipient<'a>(&'a dyn Variables);

impl Variables for NoRecipient<'_> {
    fn var(&self, v: ferrymail_config::expr::Var) -> ferrymail_config::expr::Value {
        use ferrymail_config::expr::{Value, Var};
        match v {
            Var::Rcpt | Var::RcptDomain => Value::Null,
            _ => self.0.var(v),
        }
    }
}

/// What [`Verifier::verify_message`] needs about one message.
pub struct MessageCheck {
    /// The whole contents, our Received field first.
    pub contents: Vec<u8>,
    /// Where the client's bytes start in `contents`.
    pub from: usize,
    /// `[auth.dkim] verify` for this message.
    pub dkim: VerifyMode,
    /// `[auth.dmarc] verify` for this message.
    pub dmarc: VerifyMode,
    /// The MAIL FROM SPF result, when it was checked; DMARC checks it
    /// itself otherwise.
    pub spf: Option<SpfOutput>,
    /// The client's address.
    pub ip: IpAddr,
    /// The HELO name.
    pub helo: String,
    /// The envelope sender, empty for the null sender.
    pub sender: String,
}

/// What the checks at the end of DATA found.
#[derive(Clone, Debug, Default)]
pub struct MessageVerdict {
    /// One per signature (one `none` for an unsigned message); `None`
    /// when DKIM is not verified.
    pub dkim: Option<Vec<DkimVerdict>>,
    /// `None` when DMARC is not verified.
    pub dmarc: Option<DmarcVerdict>,
}

impl MessageVerdict {
    /// `temperror` for every check `check` asks for.
    fn temporary(check: &MessageCheck, reason: &str) -> MessageVerdict {
        MessageVerdict {
            dkim: (check.dkim != VerifyMode::Disable).then(|| vec![DkimVerdict::temporary(reason)]),
            dmarc: (check.dmarc != VerifyMode::Disable).then(|| DmarcVerdict {
                result: Dmarc::TempError,
                from_domain: String::new(),
                policy: None,
                single_from: true,
            }),
        }
    }
}

/// One SPF check, running in the background or done. Dropping it (RSET, a
/// new EHLO, the session's end) stops the lookups.
pub struct SpfCheck {
    /// `relaxed` or `strict`.
    pub mode: VerifyMode,
    /// The identity checked.
    pub identity: Identity,
    ip: IpAddr,
    checked: String,
    state: SpfState,
}

enum SpfState {
    Running(JoinHandle<SpfOutput>),
    Done(SpfVerdict),
}

impl SpfCheck {
    /// Waits for the result (bounded by [`SPF_TIMEOUT`]) and logs it the
    /// first time.
    pub async fn verdict(&mut self) -> &SpfVerdict {
        if let SpfState::Running(task) = &mut self.state {
            let output = task.await.unwrap_or_else(|e| {
                tracing::warn!(error = %e, "SPF check task failed");
                SpfOutput::new(String::new()).with_result(mail_auth::SpfResult::TempError)
            });
            let v = SpfVerdict {
                identity: self.identity,
                checked: self.checked.clone(),
                domain: output.domain().to_string(),
                result: output.result().into(),
                output,
            };
            tracing::info!(
                remote = %self.ip,
                identity = self.identity.name(),
                checked = %v.checked,
                domain = %v.domain,
                result = v.result.as_str(),
                mode = self.mode.as_str(),
                "spf"
            );
            self.state = SpfState::Done(v);
        }
        match &self.state {
            SpfState::Done(v) => v,
            SpfState::Running(_) => unreachable!("set just above"),
        }
    }

    /// The refusal in `strict` mode, once [`SpfCheck::verdict`] has been
    /// awaited.
    pub fn refusal(&self) -> Option<Reply> {
        match (&self.state, self.mode) {
            (SpfState::Done(v), VerifyMode::Strict) => spf_refusal(v.identity, &v.domain, v.result),
            _ => None,
        }
    }
}

impl Drop for SpfCheck {
    fn drop(&mut self) {
        if let SpfState::Running(task) = &self.state {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_spf_demands_a_pass() {
        assert_eq!(
            spf_refusal(Identity::MailFrom, "example.org", Spf::Pass),
            None
        );
        assert_eq!(
            spf_refusal(Identity::MailFrom, "example.org", Spf::Fail)
                .unwrap()
                .to_line(),
            "550 5.7.23 SPF validation of the MAIL FROM identity example.org failed: fail"
        );
        // Stalwart's strict refuses whatever is not a pass.
        for r in [Spf::SoftFail, Spf::Neutral, Spf::None] {
            let reply = spf_refusal(Identity::Helo, "mx.example.org", r).unwrap();
            assert_eq!((reply.code, reply.status), (550, "5.7.23"), "{r:?}");
            assert!(reply.to_line().ends_with(r.as_str()), "{}", reply.to_line());
        }
        let e = spf_refusal(Identity::MailFrom, "example.org", Spf::PermError).unwrap();
        assert_eq!(
            (e.code, e.status),
            (550, "5.7.24"),
            "RFC 7372: an SPF error"
        );
        let t = spf_refusal(Identity::MailFrom, "example.org", Spf::TempError).unwrap();
        assert_eq!(
            t.to_line(),
            "451 4.7.24 SPF validation of the MAIL FROM identity example.org failed temporarily, try again later"
        );
        assert!(
            spf_refusal(Identity::Helo, "", Spf::None)
                .unwrap()
                .to_line()
                .contains("identity (none) failed"),
            "a HELO name that is no domain"
        );
        let long = "é".repeat(300);
        assert!(
            spf_refusal(Identity::Helo, &long, Spf::Fail)
                .unwrap()
                .to_line()
                .len()
                < 512,
            "a client's long name is cut short"
        );
    }

    #[test]
    fn spf_results_map_one_to_one() {
        use mail_auth::SpfResult as R;
        for (theirs, ours, text) in [
            (R::Pass, Spf::Pass, "pass"),
            (R::Fail, Spf::Fail, "fail"),
            (R::SoftFail, Spf::SoftFail, "softfail"),
            (R::Neutral, Spf::Neutral, "neutral"),
            (R::None, Spf::None, "none"),
            (R::TempError, Spf::TempError, "temperror"),
            (R::PermError, Spf::PermError, "permerror"),
        ] {
            assert_eq!(Spf::from(theirs), ours);
            assert_eq!(ours.as_str(), text);
        }
    }

    fn sig(result: Dkim) -> DkimVerdict {
        DkimVerdict {
            result,
            ..DkimVerdict::unsigned()
        }
    }

    #[test]
    fn strict_dkim_needs_one_passing_signature() {
        assert_eq!(dkim_refusal(&[sig(Dkim::Fail), sig(Dkim::Pass)]), None);
        assert_eq!(
            dkim_refusal(&[sig(Dkim::Fail), sig(Dkim::Neutral)])
                .unwrap()
                .to_line(),
            "550 5.7.20 No passing DKIM signature found"
        );
        // Unsigned mail has no passing signature either (Stalwart).
        assert_eq!(dkim_refusal(&[DkimVerdict::unsigned()]).unwrap().code, 550);
        assert_eq!(dkim_refusal(&[]).unwrap().code, 550);
        let t = dkim_refusal(&[sig(Dkim::Fail), sig(Dkim::TempError)]).unwrap();
        assert_eq!((t.code, t.status), (451, "4.7.20"), "a retry may pass");
    }

    fn dmarc(result: Dmarc, policy: Option<DmarcPolicy>) -> DmarcVerdict {
        DmarcVerdict {
            result,
            from_domain: "example.org".into(),
            policy,
            single_from: true,
        }
    }

    #[test]
    fn strict_dmarc_refuses_a_message_without_one_from_domain() {
        let v = DmarcVerdict {
            result: Dmarc::PermError,
            from_domain: String::new(),
            policy: None,
            single_from: false,
        };
        let r = dmarc_refusal(&v).unwrap();
        assert_eq!((r.code, r.status), (550, "5.7.1"));
    }

    #[test]
    fn strict_dmarc_refuses_only_what_the_domain_rejects() {
        use DmarcPolicy::{Quarantine, Reject};
        assert_eq!(
            dmarc_refusal(&dmarc(Dmarc::Fail, Some(Reject)))
                .unwrap()
                .to_line(),
            "550 5.7.1 Rejected per the DMARC policy of example.org"
        );
        assert_eq!(dmarc_refusal(&dmarc(Dmarc::Pass, Some(Reject))), None);
        assert_eq!(
            dmarc_refusal(&dmarc(Dmarc::Fail, Some(Quarantine))),
            None,
            "quarantine is accepted"
        );
        assert_eq!(
            dmarc_refusal(&dmarc(Dmarc::Fail, Some(DmarcPolicy::None))),
            None
        );
        assert_eq!(dmarc_refusal(&dmarc(Dmarc::None, Option::None)), None);
        let t = dmarc_refusal(&dmarc(Dmarc::TempError, Some(Reject))).unwrap();
        assert_eq!((t.code, t.status), (451, "4.7.1"));
        let t = dmarc_refusal(&dmarc(Dmarc::TempError, Option::None)).unwrap();
        assert_eq!(
            t.to_line(),
            "451 4.7.1 DMARC policy of example.org could not be evaluated now, try again later",
            "the policy could not be read"
        );
        assert_eq!(
            dmarc_refusal(&dmarc(Dmarc::TempError, Some(DmarcPolicy::None))),
            None,
            "a known p=none never refuses"
        );
    }
}
