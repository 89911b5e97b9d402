//! Turns the TOML document into a [`Config`], section by section. Each
//! function lists the keys its section knows (for unknown-key errors), reads
//! them with defaults, and checks what can be checked at load time: ids that
//! reference each other, ranges, and the constant results of expressions.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::de::DeTable;

use crate::error::{ConfigError, Problem};
use crate::expr::{Expr, Value, Var};
use crate::model::*;
use crate::reader::{Reader, Section};
use crate::suggest;

/// Parses and checks a whole document. On failure, every error found, sorted by line.
pub(crate) fn build(text: &str, path: &Path) -> Result<Config, Vec<ConfigError>> {
    build_with(Reader::new(text, path), text, path)
}

/// [`build`] for a client command: values whose secrets cannot be read are
/// left out (see [`Reader::skip_unreadable`]).
pub(crate) fn build_for_client(text: &str, path: &Path) -> Result<Config, Vec<ConfigError>> {
    let mut r = Reader::new(text, path);
    r.skip_unreadable = true;
    build_with(r, text, path)
}

fn build_with(mut r: Reader, text: &str, path: &Path) -> Result<Config, Vec<ConfigError>> {
    let doc = match DeTable::parse(text) {
        Ok(doc) => doc,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            let message = e.message().trim().to_string();
            return Err(vec![r.located(&span, Problem::Syntax(message))]);
        }
    };
    let root = Section {
        name: String::new(),
        table: doc.get_ref(),
        span: 0..0,
    };
    r.check_keys(
        &root,
        &[
            "server",
            "auth",
            "certificate",
            "session",
            "store",
            "storage",
            "queue",
            "report",
            "signature",
            "resolver",
            "cluster",
            "directory",
        ],
        false,
    );

    let server = server(&mut r, &root);
    let certificates = certificates(&mut r, &root);
    let directories = directories(&mut r, &root);
    let signatures = signatures(&mut r, &root);
    let auth = auth(&mut r, &root, &signatures);
    let session = session(&mut r, &root, &certificates, &directories);
    let (stores, storage) = stores(&mut r, &root);
    let queue = queue(&mut r, &root);
    let report = report(&mut r, &root, &server.hostname, &signatures);
    let resolver = resolver(&mut r, &root);
    let cluster = cluster(&mut r, &root);

    if !r.errors.is_empty() {
        let mut errors = r.errors;
        errors.sort_by_key(|e| e.line);
        errors.dedup();
        return Err(errors);
    }
    let mut warnings = r.warnings;
    warnings.sort_by_key(|e| e.line);
    Ok(Config {
        source: Some(path.to_path_buf()),
        server,
        certificates,
        auth,
        session,
        stores,
        storage,
        queue,
        report,
        signatures,
        resolver,
        cluster,
        directories,
        warnings,
    })
}

/// Checks the values an expression is known to produce at load time.
/// `check` returns `Err(expected)` for a value of the wrong kind.
fn check_outcomes(
    r: &mut Reader,
    sec: &Section,
    key: &str,
    expr: &Expr,
    check: impl Fn(&Value) -> Result<(), String>,
) {
    for value in expr.constant_outcomes() {
        if let Err(expected) = check(value) {
            r.invalid(
                sec,
                key,
                format!(
                    "'{}' must give {expected}, but gives {value}",
                    sec.path(key)
                ),
            );
            return;
        }
    }
}

/// Reports a reference to an undefined id.
fn unknown_reference<'k>(
    r: &mut Reader,
    span: &Range<usize>,
    key: String,
    what: &'static str,
    id: &str,
    known: impl IntoIterator<Item = &'k String>,
) {
    let suggestion = suggest(id, known.into_iter().map(String::as_str)).map(str::to_string);
    r.error(
        span,
        Problem::UnknownReference {
            key,
            what,
            id: id.to_string(),
            suggestion,
        },
    );
}

fn looks_like_pem(text: &str) -> bool {
    text.contains("-----BEGIN ")
}

// ---------------------------------------------------------------- [server]

fn server(r: &mut Reader, root: &Section) -> Server {
    let mut out = Server::default();
    let Some(sec) = r.sub(root, "server") else {
        return out;
    };
    r.check_keys(
        &sec,
        &[
            "hostname",
            "node-id",
            "listener",
            "max-connections",
            "max-connections-per-ip",
            "shutdown-timeout",
        ],
        false,
    );
    if let Some(h) = r.nonempty_string(&sec, "hostname") {
        if h.chars().any(|c| c.is_whitespace() || c.is_control()) {
            r.invalid(
                &sec,
                "hostname",
                format!("'server.hostname' must be a host name without spaces, found '{h}'"),
            );
        } else {
            out.hostname = h;
        }
    }
    out.node_id = r.nonempty_string(&sec, "node-id");
    if let Some(n) = r.usize(&sec, "max-connections", 1) {
        out.max_connections = n;
    }
    if let Some(n) = r.usize(&sec, "max-connections-per-ip", 1) {
        out.max_connections_per_ip = n;
    }
    if let Some(d) = r.duration(&sec, "shutdown-timeout") {
        out.shutdown_grace = d;
    }
    if let Some(lsec) = r.sub(&sec, "listener") {
        r.check_keys(&lsec, &[], true);
        let children = r.children(&lsec, &[]);
        if children.is_empty() {
            r.error(
                &lsec.span,
                Problem::Invalid(
                    "[server.listener] defines no listener; add [server.listener.<id>] with bind and protocol"
                        .to_string(),
                ),
            );
        }
        let mut bound: HashMap<SocketAddr, String> = HashMap::new();
        out.listeners = children
            .into_iter()
            .filter_map(|(id, s)| {
                let l = listener(r, id, &s)?;
                for addr in &l.bind {
                    if let Some(other) = bound.insert(*addr, l.id.clone()) {
                        r.invalid(&s, "bind", format!(
                                "address {addr} of listener '{}' is already bound by listener '{other}'",
                                l.id
                            ));
                    }
                }
                Some(l)
            })
            .collect();
    }
    out
}

fn listener(r: &mut Reader, id: String, sec: &Section) -> Option<Listener> {
    r.check_keys(
        sec,
        &["bind", "protocol", "token", "submit-token", "tls"],
        false,
    );
    let protocol = r
        .choice(
            sec,
            "protocol",
            &[
                ("smtp", Protocol::Smtp),
                ("lmtp", Protocol::Lmtp),
                ("http", Protocol::Http),
            ],
        )
        .unwrap_or(Protocol::Smtp);
    let mut bind = Vec::new();
    if r.require(sec, "bind") {
        let items = r.strings(sec, "bind")?;
        if items.is_empty() {
            r.invalid(
                sec,
                "bind",
                format!("'{}' must list at least one address", sec.path("bind")),
            );
        }
        for (text, span) in items {
            match text.trim().parse::<SocketAddr>() {
                // RFC 2033 §5: "LMTP ... MUST NOT be used on TCP port 25."
                // Worth a warning rather than an error: nothing breaks, but
                // an SMTP client reaching it would be refused at HELO/EHLO.
                Ok(a) if protocol == Protocol::Lmtp && a.port() == 25 => {
                    r.warn(
                        &span,
                        format!(
                            "'{}': LMTP must not be used on port 25 (RFC 2033 §5), which SMTP clients expect to speak SMTP",
                            sec.path("bind")
                        ),
                    );
                    bind.push(a);
                }
                Ok(a) => bind.push(a),
                Err(_) => r.error(
                    &span,
                    Problem::BadAddress {
                        key: sec.path("bind"),
                        value: text,
                    },
                ),
            }
        }
    }
    // The one secret a client needs: unreadable, it is an error for a
    // client command too (a request without it would only get 401). With
    // a submit token, which is the one `sendmail` needs, the full token
    // may be kept from local users: a client that cannot read it leaves
    // it out, as it does the server's other secrets.
    let skip = std::mem::replace(&mut r.skip_unreadable, false);
    let submit_token = r.nonempty_string(sec, "submit-token");
    if sec.get("submit-token").is_some() {
        r.skip_unreadable = skip;
    }
    let token = r.nonempty_string(sec, "token");
    r.skip_unreadable = skip;
    for key in ["token", "submit-token"] {
        if sec.get(key).is_some() && protocol != Protocol::Http {
            let message = format!(
                "'{}' is only used by listeners with protocol = \"http\" (the management API)",
                sec.path(key)
            );
            r.invalid(sec, key, message);
        }
    }
    let (submit, full) = (sec.path("submit-token"), sec.path("token"));
    if submit_token.is_some() && sec.get("token").is_none() {
        let message = format!(
            "'{submit}' needs '{full}': without a token the whole API is open to loopback clients"
        );
        r.invalid(sec, "submit-token", message);
    }
    if submit_token.is_some() && submit_token == token {
        let message =
            format!("'{submit}' must differ from '{full}', or it grants everything the token does");
        r.invalid(sec, "submit-token", message);
    }
    let mut tls_implicit = false;
    if let Some(tls) = r.sub(sec, "tls") {
        r.check_keys(&tls, &["implicit"], false);
        // Every protocol: SMTP submission (RFC 8314 §3.3), LMTP, and the
        // management API over HTTPS.
        tls_implicit = r.bool(&tls, "implicit").unwrap_or(false);
    }
    // A token is what lets the API answer beyond loopback; over plain HTTP
    // it then crosses the network readable by anyone on the path.
    if sec.get("token").is_some()
        && !tls_implicit
        && bind.iter().any(|a| !a.ip().to_canonical().is_loopback())
    {
        let text = format!(
            "'{}': the management API takes its token in clear text on a non-loopback address; set tls.implicit = true (HTTPS)",
            sec.path("token")
        );
        r.warn_value(sec, "token", text);
    }
    Some(Listener {
        id,
        bind,
        protocol,
        token,
        submit_token,
        tls_implicit,
    })
}

// ---------------------------------------------------------------- [certificate]

fn certificates(r: &mut Reader, root: &Section) -> BTreeMap<String, Certificate> {
    let mut out = BTreeMap::new();
    let Some(sec) = r.sub(root, "certificate") else {
        return out;
    };
    r.check_keys(&sec, &[], true);
    for (id, c) in r.children(&sec, &[]) {
        r.check_keys(&c, &["cert", "private-key"], false);
        let cert = r.required_string(&c, "cert");
        let private_key = r.required_string(&c, "private-key");
        for (key, value) in [("cert", &cert), ("private-key", &private_key)] {
            if let Some(v) = value
                && !looks_like_pem(v)
            {
                r.invalid(
                    &c,
                    key,
                    format!(
                        "'{}' is not PEM (no '-----BEGIN' line); use %{{file:/path/to/file.pem}}%",
                        c.path(key)
                    ),
                );
            }
        }
        match (cert, private_key) {
            (Some(cert), Some(private_key)) => {
                out.insert(id, Certificate { cert, private_key });
            }
            // A client pins the certificate; the key is the server's.
            (Some(cert), None) if r.skip_unreadable => {
                let private_key = String::new();
                out.insert(id, Certificate { cert, private_key });
            }
            _ => {}
        }
    }
    out
}

// ---------------------------------------------------------------- [session]

fn session(
    r: &mut Reader,
    root: &Section,
    certificates: &BTreeMap<String, Certificate>,
    directories: &BTreeMap<String, Directory>,
) -> Session {
    let mut out = Session::default();
    let Some(sec) = r.sub(root, "session") else {
        return out;
    };
    r.check_keys(
        &sec,
        &[
            "connect",
            "timeout",
            "max-errors",
            "max-line-length",
            "data",
            "rcpt",
            "etrn",
            "tls",
            "auth",
        ],
        false,
    );
    if let Some(c) = r.sub(&sec, "connect") {
        out.connect = connect(r, &c);
    }
    if let Some(n) = r.int(&sec, "max-errors", 1, i64::from(u32::MAX)) {
        out.max_errors = u32::try_from(n).unwrap_or(u32::MAX);
    }
    if let Some(n) = r.usize(&sec, "max-line-length", MIN_MAX_LINE_LENGTH) {
        out.max_line_length = n;
    }
    if let Some(t) = r.sub(&sec, "timeout") {
        r.check_keys(&t, &["command", "data-block", "data-end"], false);
        for (key, slot) in [
            ("command", &mut out.timeout.command),
            ("data-block", &mut out.timeout.data_block),
            ("data-end", &mut out.timeout.data_end),
        ] {
            if let Some(d) = r.duration(&t, key) {
                if d.is_zero() {
                    r.invalid(&t, key, format!("'{}' must be longer than 0s", t.path(key)));
                } else {
                    *slot = d;
                }
            }
        }
    }
    if let Some(d) = r.sub(&sec, "data") {
        r.check_keys(
            &d,
            &["max-message-size", "max-received-headers", "max-memory"],
            false,
        );
        if let Some(n) = r.size(&d, "max-message-size") {
            out.data.max_message_size = n;
        }
        if let Some(n) = r.usize(&d, "max-received-headers", 1) {
            out.data.max_received_headers = n;
        }
        if let Some(n) = r.size(&d, "max-memory") {
            if n < out.data.max_message_size {
                r.invalid(&d, "max-memory", format!(
                        "'{}' ({n} bytes) is smaller than '{}' ({} bytes): a message of the largest size could never be received",
                        d.path("max-memory"),
                        d.path("max-message-size"),
                        out.data.max_message_size
                    ));
            } else {
                out.data.max_memory = Some(n);
            }
        }
    }
    if let Some(rc) = r.sub(&sec, "rcpt") {
        r.check_keys(
            &rc,
            &["relay", "local-domains", "max-recipients", "directory"],
            false,
        );
        out.rcpt.directory = directory_ref(r, &rc, directories);
        if let Some(e) = r.expr(&rc, "relay") {
            warn_unavailable(r, &rc, "relay", &e, Stage::Relay);
            out.rcpt.relay = e;
        }
        if let Some(domains) = r.strings(&rc, "local-domains") {
            out.rcpt.local_domains = domains
                .into_iter()
                .map(|(d, _)| d.trim().trim_end_matches('.').to_ascii_lowercase())
                .filter(|d| !d.is_empty())
                .collect();
        }
        if let Some(n) = r.usize(&rc, "max-recipients", 1) {
            out.rcpt.max_recipients = n;
        }
    }
    if let Some(e) = r.sub(&sec, "etrn") {
        r.check_keys(&e, &["allow"], false);
        if let Some(x) = r.expr(&e, "allow") {
            warn_unavailable(r, &e, "allow", &x, Stage::Etrn);
            out.etrn.allow = x;
        }
    }
    if let Some(t) = r.sub(&sec, "tls") {
        r.check_keys(&t, &["certificate", "starttls"], false);
        if let Some(id) = r.string(&t, "certificate") {
            if certificates.contains_key(&id) {
                out.tls.certificate = Some(id);
            } else {
                let span = r.value_span(&t, "certificate");
                unknown_reference(
                    r,
                    &span,
                    t.path("certificate"),
                    "certificate",
                    &id,
                    certificates.keys(),
                );
            }
        }
        if let Some(b) = r.bool(&t, "starttls") {
            out.tls.starttls = b;
        }
    }
    if let Some(a) = r.sub(&sec, "auth") {
        out.auth = session_auth(r, &a, directories);
    }
    out
}

/// `[session.auth]`.
/// The `directory` key of `sec`: the id of a `[directory.<id>]`, written
/// as Stalwart does, as an expression (`"'internal'"`), or as a plain id.
/// An id no directory has is an error naming the file and line.
fn directory_ref(
    r: &mut Reader,
    sec: &Section,
    directories: &BTreeMap<String, Directory>,
) -> Option<String> {
    let id = r.string(sec, "directory")?;
    let id = id.trim().trim_matches('\'').to_string();
    if directories.contains_key(&id) {
        return Some(id);
    }
    let span = r.value_span(sec, "directory");
    unknown_reference(
        r,
        &span,
        sec.path("directory"),
        "directory",
        &id,
        directories.keys(),
    );
    None
}

fn session_auth(
    r: &mut Reader,
    a: &Section,
    directories: &BTreeMap<String, Directory>,
) -> SessionAuth {
    let mut out = SessionAuth::default();
    r.check_keys(
        a,
        &[
            "directory",
            "mechanisms",
            "require",
            "allow-plain-text",
            "must-match-sender",
            "errors",
        ],
        false,
    );
    out.directory = directory_ref(r, a, directories);
    if let Some(list) = r.strings(a, "mechanisms") {
        let mut mechanisms = Vec::new();
        for (item, span) in list {
            // One name per item, or Stalwart's one string "[plain, login]".
            for name in item
                .trim_matches(|c| c == '[' || c == ']')
                .split(',')
                .map(|n| n.trim().trim_matches('\'').to_ascii_lowercase())
                .filter(|n| !n.is_empty())
            {
                match name.as_str() {
                    "plain" => mechanisms.push(AuthMechanism::Plain),
                    "login" => mechanisms.push(AuthMechanism::Login),
                    other => r.error(
                        &span,
                        Problem::Invalid(format!(
                            "'{}': mechanism '{other}' is not offered; use plain and/or login",
                            a.path("mechanisms")
                        )),
                    ),
                }
            }
        }
        mechanisms.dedup();
        out.mechanisms = mechanisms;
    }
    for (key, slot) in [
        ("require", &mut out.require),
        ("allow-plain-text", &mut out.allow_plain_text),
        ("must-match-sender", &mut out.must_match_sender),
    ] {
        if let Some(e) = r.expr(a, key) {
            check_outcomes(r, a, key, &e, |v| match v {
                Value::Bool(_) => Ok(()),
                _ => Err("true or false".into()),
            });
            *slot = e;
        }
    }
    if let Some(e) = r.sub(a, "errors") {
        r.check_keys(&e, &["total", "wait", "per-ip", "per-ip-window"], false);
        if let Some(n) = r.int(&e, "total", 1, 1000) {
            out.errors_total = u32::try_from(n).unwrap_or(3);
        }
        if let Some(d) = r.duration(&e, "wait") {
            out.errors_wait = d;
        }
        if let Some(n) = r.int(&e, "per-ip", 1, 1_000_000) {
            out.errors_per_ip = u32::try_from(n).unwrap_or(10);
        }
        if let Some(d) = r.duration(&e, "per-ip-window") {
            out.errors_per_ip_window = d;
        }
    }
    out
}

// ---------------------------------------------------------------- [directory]

/// `[directory.<id>]` of type `memory`, with `[[directory.<id>.principals]]`.
fn directories(r: &mut Reader, root: &Section) -> BTreeMap<String, Directory> {
    let mut out = BTreeMap::new();
    let Some(sec) = r.sub(root, "directory") else {
        return out;
    };
    r.check_keys(&sec, &[], true);
    for (id, d) in r.children(&sec, &[]) {
        r.check_keys(&d, &["type", "principals"], false);
        if let Some(t) = r.required_string(&d, "type")
            && t != "memory"
        {
            r.invalid(
                &d,
                "type",
                format!(
                    "'{}' is \"{t}\"; the directory type this release has is \"memory\"",
                    d.path("type")
                ),
            );
        }
        let mut principals: Vec<Principal> = Vec::new();
        for p in r.tables(&d, "principals") {
            // Stalwart's other principal keys are accepted and not used.
            r.check_keys(
                &p,
                &["name", "secret", "email", "class", "description", "quota"],
                false,
            );
            let name = r.nonempty_string(&p, "name");
            let secret = r.nonempty_string(&p, "secret");
            let emails = r
                .strings(&p, "email")
                .map(|v| v.into_iter().map(|(e, _)| e).collect())
                .unwrap_or_default();
            if let Some(s) = &secret
                && let Some(problem) = secret_problem(s)
            {
                r.invalid(&p, "secret", format!("'{}': {problem}", p.path("secret")));
            }
            if let Some(n) = &name
                && principals.iter().any(|q| &q.name == n)
            {
                r.invalid(
                    &p,
                    "name",
                    format!(
                        "'{}': principal '{n}' is listed twice in [directory.{id}]",
                        p.path("name")
                    ),
                );
            }
            if let (Some(name), Some(secret)) = (name, secret) {
                principals.push(Principal {
                    name,
                    secret,
                    emails,
                });
            }
        }
        out.insert(id.clone(), Directory { id, principals });
    }
    out
}

/// `[session.connect]`: DNSBL zones must be domain names, since each is
/// appended to the client's reversed address (RFC 5782 §2.1).
fn connect(r: &mut Reader, sec: &Section) -> ConnectPolicy {
    let mut out = ConnectPolicy::default();
    r.check_keys(sec, &["dnsbl"], false);
    for (text, span) in r.strings(sec, "dnsbl").unwrap_or_default() {
        let zone = text.trim().trim_end_matches('.').to_ascii_lowercase();
        let valid = !zone.is_empty()
            && zone.len() <= 200
            && zone.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if valid {
            if !out.dnsbl.contains(&zone) {
                out.dnsbl.push(zone);
            }
        } else {
            r.error(
                &span,
                Problem::Invalid(format!(
                    "invalid DNSBL zone '{text}' for '{}': write a domain name such as zen.spamhaus.org",
                    sec.path("dnsbl")
                )),
            );
        }
    }
    out
}

/// What is wrong with a secret that looks like a hash but is not one this
/// release can check (it would never match, silently).
fn secret_problem(s: &str) -> Option<String> {
    if let Some(rest) = s.strip_prefix('$') {
        let scheme = rest.split('$').next().unwrap_or("");
        let ok = match scheme {
            "argon2id" | "argon2i" | "argon2d" => rest.split('$').count() >= 5,
            "6" | "5" => rest.split('$').count() >= 3,
            _ => {
                return Some(format!(
                    "hash scheme '${scheme}$' is not supported; use $argon2id$, $6$ (SHA-512-crypt) or $5$ (SHA-256-crypt)"
                ));
            }
        };
        if !ok {
            return Some(format!("a '${scheme}$' hash with missing fields"));
        }
    }
    None
}

// ---------------------------------------------------------------- [auth]

fn auth(r: &mut Reader, root: &Section, signatures: &BTreeMap<String, Signature>) -> AuthChecks {
    let mut out = AuthChecks::default();
    let Some(sec) = r.sub(root, "auth") else {
        return out;
    };
    r.check_keys(&sec, &["iprev", "dkim", "spf", "dmarc"], false);
    if let Some(spf) = r.sub(&sec, "spf") {
        r.check_keys(&spf, &["verify"], false);
        if let Some(v) = r.sub(&spf, "verify") {
            r.check_keys(&v, &["ehlo", "mail-from"], false);
            if let Some(e) = verify_mode(r, &v, "ehlo", Stage::SpfEhlo) {
                out.spf_ehlo = e;
            }
            if let Some(e) = verify_mode(r, &v, "mail-from", Stage::SpfMailFrom) {
                out.spf_mail_from = e;
            }
        }
    }
    if let Some(dmarc) = r.sub(&sec, "dmarc") {
        r.check_keys(&dmarc, &["verify"], false);
        if let Some(e) = verify_mode(r, &dmarc, "verify", Stage::Verify) {
            out.dmarc_verify = e;
        }
    }
    if let Some(dkim) = r.sub(&sec, "dkim") {
        r.check_keys(&dkim, &["sign", "verify"], false);
        if let Some(e) = verify_mode(r, &dkim, "verify", Stage::Verify) {
            out.dkim_verify = e;
        }
        if let Some(e) = r.expr(&dkim, "sign") {
            check_outcomes(r, &dkim, "sign", &e, |v| match v {
                Value::Str(_) | Value::Bool(false) => Ok(()),
                Value::List(items) if items.iter().all(|i| matches!(i, Value::Str(_))) => Ok(()),
                _ => Err("a list of signature ids such as ['rsa'], or false".to_string()),
            });
            warn_unavailable(r, &dkim, "sign", &e, Stage::EndOfData);
            // A constant id that names no signer is a mistake, not a choice:
            // the mail would go out unsigned.
            for v in e.constant_outcomes() {
                let ids: Vec<&str> = match v {
                    Value::Str(s) => vec![s.as_str()],
                    Value::List(items) => items.iter().filter_map(Value::as_str).collect(),
                    _ => Vec::new(),
                };
                for id in ids {
                    if !signatures.contains_key(id) {
                        let span = r.value_span(&dkim, "sign");
                        let known: Vec<String> = signatures.keys().cloned().collect();
                        unknown_reference(r, &span, dkim.path("sign"), "signature", id, &known);
                    }
                }
            }
            out.dkim_sign = e;
        }
    }
    if let Some(iprev) = r.sub(&sec, "iprev") {
        r.check_keys(&iprev, &["verify"], false);
        if let Some(v) = r.choice(
            &iprev,
            "verify",
            &[
                ("disable", IprevVerify::Disable),
                ("relaxed", IprevVerify::Relaxed),
                ("strict", IprevVerify::Strict),
            ],
        ) {
            out.iprev = v;
        }
    }
    out
}

/// A `disable | relaxed | strict` setting of sender verification
/// (`auth.spf.verify.*`, `auth.dkim.verify`, `auth.dmarc.verify`): an
/// expression whose constant outcomes must name a [`VerifyMode`], with
/// Stalwart's bare words allowed, and a warning for each variable it reads
/// that `stage` never has.
fn verify_mode(r: &mut Reader, sec: &Section, key: &str, stage: Stage) -> Option<Expr> {
    let e = r.expr_words(sec, key, &VerifyMode::NAMES)?;
    let before = r.errors.len();
    check_outcomes(r, sec, key, &e, |v| match VerifyMode::from_value(v) {
        Some(_) => Ok(()),
        None => Err("one of 'disable', 'relaxed', 'strict'".to_string()),
    });
    if r.errors.len() > before {
        return None;
    }
    warn_unavailable(r, sec, key, &e, stage);
    Some(e)
}

// ---------------------------------------------------------------- [store], [storage]

fn stores(r: &mut Reader, root: &Section) -> (BTreeMap<String, Store>, Storage) {
    let mut stores = BTreeMap::new();
    let mut store_span = None;
    // Where each `[store.<id>]` is named, for errors about the store as a whole.
    let mut store_spans = BTreeMap::new();
    if let Some(sec) = r.sub(root, "store") {
        r.check_keys(&sec, &[], true);
        store_span = Some(sec.span.clone());
        for (id, s) in r.children(&sec, &[]) {
            if let Some(kind) = store(r, &s) {
                store_spans.insert(id.clone(), s.span.clone());
                stores.insert(id.clone(), Store { id, kind });
            }
        }
    }
    let defined: Vec<String> = stores.keys().cloned().collect();

    let storage_sec = r.sub(root, "storage");
    if let Some(sec) = &storage_sec {
        r.check_keys(sec, &["data", "blob"], false);
    }
    // Each of data/blob: a configured store id, else a supported type (an
    // implicit store with default settings, id = the type name).
    let mut given = |r: &mut Reader, key: &str| -> Option<String> {
        let sec = storage_sec.as_ref()?;
        let v = r.nonempty_string(sec, key)?;
        if stores.contains_key(&v) {
            return Some(v);
        }
        if let Some(kind) = StoreKind::default_of(&v) {
            stores.entry(v.clone()).or_insert(Store {
                id: v.clone(),
                kind,
            });
            return Some(v);
        }
        let span = r.value_span(sec, key);
        r.error(
            &span,
            Problem::UnknownStore {
                key: sec.path(key),
                value: v,
                defined: defined.clone(),
                supported: STORE_TYPES.to_vec(),
            },
        );
        Some(String::new())
    };
    let data = given(r, "data");
    let blob = given(r, "blob");
    let storage = match (data, blob) {
        (Some(data), Some(blob)) => Storage { data, blob },
        // One given: the other goes to the same store.
        (Some(one), None) | (None, Some(one)) => Storage {
            data: one.clone(),
            blob: one,
        },
        (None, None) if defined.len() == 1 => Storage {
            data: defined[0].clone(),
            blob: defined[0].clone(),
        },
        (None, None) if defined.is_empty() => {
            let store = Store {
                id: "embedded".to_string(),
                kind: StoreKind::Embedded {
                    path: PathBuf::from(DEFAULT_DATA_PATH),
                },
            };
            stores.insert(store.id.clone(), store);
            Storage::default()
        }
        (None, None) => {
            let span = storage_sec
                .as_ref()
                .map(|s| s.span.clone())
                .or(store_span)
                .unwrap_or_default();
            r.error(
                &span,
                Problem::Invalid(format!(
                    "[storage] must say which store holds data and blob, because several are defined ({})",
                    defined.join(", ")
                )),
            );
            Storage::default()
        }
    };
    contents_only_store_holds_no_data(r, storage_sec.as_ref(), &stores, &store_spans, &storage);
    (stores, storage)
}

/// An `fs` store holds message contents only (`BlobStore`): queue data needs
/// leases, scans and atomic updates, which only `embedded` and `postgresql`
/// give. Refused here, so that `ferrymail check` and `serve` both say so, on
/// the line that put the data there: `[storage] data`, else `blob` (data
/// follows it when not given), else the only `[store.<id>]`.
fn contents_only_store_holds_no_data(
    r: &mut Reader,
    storage_sec: Option<&Section>,
    stores: &BTreeMap<String, Store>,
    store_spans: &BTreeMap<String, Range<usize>>,
    storage: &Storage,
) {
    let Some(store) = stores.get(&storage.data) else {
        return;
    };
    if !matches!(store.kind, StoreKind::Fs { .. }) {
        return;
    }
    let id = &store.id;
    let why =
        "an fs store holds message contents only; queue data needs an embedded or postgresql store";
    let given = |key: &str| storage_sec.filter(|sec| sec.has(key));
    let (span, message) = if let Some(sec) = given("data") {
        (
            r.value_span(sec, "data"),
            format!("'{}' = '{id}': {why}", sec.path("data")),
        )
    } else if let Some(sec) = given("blob") {
        (
            r.value_span(sec, "blob"),
            format!(
                "'{}' = '{id}' and [storage] data is not set, so queue data would go there too: {why}; set [storage] data",
                sec.path("blob")
            ),
        )
    } else {
        (
            store_spans.get(id).cloned().unwrap_or_default(),
            format!(
                "store '{id}' is the only store, so it would hold queue data: {why}; define one and name it in [storage] data"
            ),
        )
    };
    r.error(&span, Problem::Invalid(message));
}

fn store(r: &mut Reader, sec: &Section) -> Option<StoreKind> {
    if !r.require(sec, "type") {
        return None;
    }
    let kind = r.choice(
        sec,
        "type",
        &[
            ("embedded", "embedded"),
            ("postgresql", "postgresql"),
            ("fs", "fs"),
        ],
    )?;
    let mut out = StoreKind::default_of(kind)?;
    match &mut out {
        StoreKind::Embedded { path } | StoreKind::Fs { path } => {
            r.check_keys(sec, &["type", "path"], false);
            if let Some(p) = r.nonempty_string(sec, "path") {
                *path = PathBuf::from(p);
            }
        }
        StoreKind::PostgreSql {
            url,
            pool_size,
            tls,
        } => {
            r.check_keys(sec, &["type", "url", "pool-size", "tls"], false);
            if let Some(u) = r.nonempty_string(sec, "url") {
                if u.starts_with("postgresql://") || u.starts_with("postgres://") {
                    *url = u;
                } else {
                    r.invalid(
                        sec,
                        "url",
                        format!(
                            "'{}' must be a postgresql:// URL, e.g. postgresql://user@host:5432/db",
                            sec.path("url")
                        ),
                    );
                }
            }
            if let Some(n) = r.usize(sec, "pool-size", 1) {
                *pool_size = n;
            }
            if let Some(b) = r.bool(sec, "tls") {
                *tls = b;
            }
        }
    }
    Some(out)
}

// ---------------------------------------------------------------- [signature]

fn signatures(r: &mut Reader, root: &Section) -> BTreeMap<String, Signature> {
    let mut out = BTreeMap::new();
    let Some(sec) = r.sub(root, "signature") else {
        return out;
    };
    r.check_keys(&sec, &[], true);
    for (id, s) in r.children(&sec, &[]) {
        if let Some(sig) = signature(r, id.clone(), &s) {
            out.insert(id, sig);
        }
    }
    out
}

fn signature(r: &mut Reader, id: String, sec: &Section) -> Option<Signature> {
    r.check_keys(
        sec,
        &[
            "private-key",
            "domain",
            "selector",
            "algorithm",
            "canonicalization",
            "headers",
        ],
        false,
    );
    let private_key = r.required_string(sec, "private-key");
    if let Some(k) = &private_key
        && !looks_like_pem(k)
    {
        r.invalid(sec, "private-key", format!(
                "'{}' is not a PEM private key (no '-----BEGIN' line); use %{{file:/path/to/key.pem}}%",
                sec.path("private-key")
            ));
    }
    let domain = r.required_string(sec, "domain");
    let selector = r.required_string(sec, "selector");
    let algorithm = r
        .choice(
            sec,
            "algorithm",
            &[
                ("rsa-sha256", DkimAlgorithm::RsaSha256),
                ("ed25519-sha256", DkimAlgorithm::Ed25519Sha256),
            ],
        )
        .unwrap_or(DkimAlgorithm::RsaSha256);
    let mut canonicalization = Canonicalization {
        header: Canon::Relaxed,
        body: Canon::Relaxed,
    };
    if let Some(c) = r.string(sec, "canonicalization") {
        let word = |w: &str| match w.trim() {
            "simple" => Some(Canon::Simple),
            "relaxed" => Some(Canon::Relaxed),
            _ => None,
        };
        let parsed = match c.split_once('/') {
            Some((h, b)) => word(h).zip(word(b)),
            None => word(&c).map(|h| (h, Canon::Simple)),
        };
        match parsed {
            Some((header, body)) => canonicalization = Canonicalization { header, body },
            None => {
                r.invalid(sec, "canonicalization", format!(
                        "'{}' must be HEADER/BODY with each simple or relaxed, e.g. relaxed/relaxed; found '{c}'",
                        sec.path("canonicalization")
                    ));
            }
        }
    }
    let mut headers: Vec<String> = DEFAULT_SIGNED_HEADERS
        .iter()
        .map(|h| h.to_string())
        .collect();
    if let Some(list) = r.strings(sec, "headers") {
        headers = list
            .into_iter()
            .map(|(h, _)| h.trim().to_string())
            .collect();
        if !headers.iter().any(|h| h.eq_ignore_ascii_case("From")) {
            r.invalid(
                sec,
                "headers",
                format!("'{}' must include From (RFC 6376 5.4)", sec.path("headers")),
            );
        }
    }
    Some(Signature {
        id,
        private_key: private_key?,
        domain: domain?,
        selector: selector?,
        algorithm,
        canonicalization,
        headers,
    })
}

// ---------------------------------------------------------------- [queue]

/// The keys of a schedule; in `[queue.schedule]` anything else holding a
/// table is a named schedule.
const SCHEDULE_FIELDS: [&str; 4] = ["retry", "notify", "expire", "max-attempts"];

fn queue(r: &mut Reader, root: &Section) -> Queue {
    let mut out = Queue::default();
    let Some(sec) = r.sub(root, "queue") else {
        return out;
    };
    r.check_keys(
        &sec,
        &[
            "schedule",
            "virtual",
            "strategy",
            "route",
            "priority",
            "max-dynamic-queues",
            "outbound",
            "limiter",
        ],
        false,
    );
    if let Some(o) = r.sub(&sec, "outbound") {
        out.outbound = outbound(r, &o);
    }
    if let Some(l) = r.sub(&sec, "limiter") {
        out.inbound_limiters = inbound_limiters(r, &l);
    }
    if let Some(e) = r.expr(&sec, "priority") {
        warn_unavailable(r, &sec, "priority", &e, Stage::Routing);
        check_outcomes(r, &sec, "priority", &e, |v| match v {
            Value::Int(_) => Ok(()),
            _ => Err("an integer".to_string()),
        });
        out.priority = Some(e);
    }
    if let Some(n) = r.usize(&sec, "max-dynamic-queues", 0) {
        out.max_dynamic_queues = n;
    }

    // Schedules: the fields of [queue.schedule] are the `default` schedule;
    // its table-valued keys are named schedules, which inherit from it.
    if let Some(s) = r.sub(&sec, "schedule") {
        r.check_keys(&s, &SCHEDULE_FIELDS, true);
        let default = schedule(r, &s, &Schedule::default());
        // The bounce schedule is a copy of the default unless
        // [queue.schedule.bounce] (below) says otherwise.
        out.schedules
            .insert(BOUNCE_SCHEDULE.to_string(), default.clone());
        for (id, child) in r.children(&s, &SCHEDULE_FIELDS) {
            r.check_keys(&child, &SCHEDULE_FIELDS, false);
            let named = schedule(r, &child, &default);
            if id == DEFAULT_SCHEDULE {
                r.error(
                    &child.span,
                    Problem::Invalid(format!(
                        "schedule id '{DEFAULT_SCHEDULE}' is reserved for the keys of [queue.schedule] itself; pick another id"
                    )),
                );
                continue;
            }
            out.schedules.insert(id, named);
        }
        out.schedules.insert(DEFAULT_SCHEDULE.to_string(), default);
    }

    if let Some(rs) = r.sub(&sec, "route") {
        r.check_keys(&rs, &[], true);
        for (id, child) in r.children(&rs, &[]) {
            if let Some(route) = route(r, id.clone(), &child) {
                out.routes.insert(id, route);
            }
        }
    }

    if let Some(vs) = r.sub(&sec, "virtual") {
        r.check_keys(&vs, &[], true);
        for (name, child) in r.children(&vs, &[]) {
            if !is_valid_queue_name(&name) {
                r.error(
                    &child.span,
                    Problem::Invalid(format!(
                        "invalid virtual queue name '{name}': use 1 to {MAX_QUEUE_NAME_LEN} letters, digits or . _ - + = @ :"
                    )),
                );
                continue;
            }
            // Built-in queues (`bounce`) keep their built-in settings for
            // keys the file does not set.
            let base = out.virtual_queues.get(&name).cloned().unwrap_or_default();
            let q = virtual_queue(r, &child, &out.schedules, base);
            out.virtual_queues.insert(name, q);
        }
    }

    if let Some(st) = r.sub(&sec, "strategy") {
        r.check_keys(&st, &["queue", "schedule", "route"], false);
        if let Some(e) = r.expr(&st, "queue") {
            // The queue is what this expression decides, so it cannot read it.
            warn_unavailable(r, &st, "queue", &e, Stage::RoutingQueue);
            check_outcomes(r, &st, "queue", &e, |v| match v {
                Value::Str(s) if is_valid_queue_name(s) => Ok(()),
                _ => Err("a queue name".to_string()),
            });
            out.strategy.queue = e;
        }
        for (key, what, known) in [
            (
                "schedule",
                "schedule",
                out.schedules.keys().cloned().collect::<Vec<_>>(),
            ),
            (
                "route",
                "route",
                out.routes.keys().cloned().collect::<Vec<_>>(),
            ),
        ] {
            let Some(e) = r.expr(&st, key) else {
                continue;
            };
            warn_unavailable(r, &st, key, &e, Stage::Routing);
            check_outcomes(r, &st, key, &e, |v| match v {
                Value::Str(_) => Ok(()),
                _ => Err(format!("a {what} id")),
            });
            for v in e.constant_outcomes() {
                if let Value::Str(id) = v
                    && !known.contains(id)
                {
                    let span = r.value_span(&st, key);
                    unknown_reference(r, &span, st.path(key), what, id, &known);
                }
            }
            match key {
                "schedule" => out.strategy.schedule = e,
                _ => out.strategy.route = e,
            }
        }
    }
    out
}

/// An error when `sec` has both `ours` and `theirs` (Stalwart's spelling of
/// the same table): which one wins would be a guess.
fn both_spellings(r: &mut Reader, sec: &Section, ours: &str, theirs: &str) {
    if sec.get(ours).is_some() && sec.get(theirs).is_some() {
        r.invalid(
            sec,
            theirs,
            format!(
                "'{}' and '{}' are the same settings; keep one",
                sec.path(theirs),
                sec.path(ours)
            ),
        );
    }
}

/// Where an expression is evaluated, for [`warn_unavailable`]: which
/// variables have a value there, and why the others have none.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// `session.rcpt.relay`: the session's, before the message exists.
    Relay,
    /// `session.etrn.allow`: the same as relay.
    Etrn,
    /// `queue.limiter.inbound.*`: counted at RCPT TO, as relay.
    Limiter,
    /// `queue.outbound.hostname`, `source-ip.*`: per delivery, from the
    /// queued message and its queue entry.
    Connection,
    /// `queue.strategy.queue`: routing, before the queue is known.
    RoutingQueue,
    /// The other routing expressions (`queue.strategy.*`, `queue.priority`).
    Routing,
    /// `auth.dkim.sign`: the whole message, no single recipient.
    EndOfData,
    /// `auth.spf.verify.ehlo`: at EHLO, before any transaction.
    SpfEhlo,
    /// `auth.spf.verify.mail-from`: at MAIL FROM, before any recipient.
    SpfMailFrom,
    /// `auth.dkim.verify`, `auth.dmarc.verify`: the whole message, as
    /// [`Stage::EndOfData`].
    Verify,
}

impl Stage {
    /// Whether `v` has a value at this stage.
    fn has(self, v: Var) -> bool {
        use Var::*;
        // Mail from an authenticated session is never verified, so the
        // verification settings never see a login.
        let verifying = matches!(self, Stage::SpfEhlo | Stage::SpfMailFrom | Stage::Verify);
        match v {
            AuthenticatedAs => !verifying,
            // Not stored with the message.
            LocalPort => self != Stage::Connection,
            RemoteIp | HeloDomain | Source => true,
            Sender | SenderDomain | Priority => self != Stage::SpfEhlo,
            Rcpt | RcptDomain => !matches!(
                self,
                Stage::EndOfData | Stage::Verify | Stage::SpfEhlo | Stage::SpfMailFrom
            ),
            Size => !matches!(
                self,
                Stage::Relay | Stage::Etrn | Stage::Limiter | Stage::SpfEhlo | Stage::SpfMailFrom
            ),
            Queue => matches!(self, Stage::Routing | Stage::Connection),
            RetryNum | NotifyNum | ExpiresIn | LastError | Mx => false,
        }
    }

    /// Why `v` has none.
    fn when(self, v: Var) -> &'static str {
        if v == Var::AuthenticatedAs
            && matches!(self, Stage::SpfEhlo | Stage::SpfMailFrom | Stage::Verify)
        {
            return "mail from authenticated sessions is never verified";
        }
        match self {
            Stage::SpfEhlo => "the HELO name is checked at EHLO, before any transaction",
            Stage::SpfMailFrom => "the sender is checked at MAIL FROM, before any recipient",
            Stage::Verify => "the message is verified once it is complete, for all its recipients",
            Stage::Relay => "relay is decided at RCPT TO",
            Stage::Limiter => "rate limits are counted at RCPT TO",
            Stage::Connection => {
                "connections are made per delivery, from what is queued (no attempt counts, no local port)"
            }
            Stage::Etrn => "ETRN is decided in the session",
            Stage::RoutingQueue | Stage::Routing => {
                "each recipient is routed once, when the message is accepted"
            }
            Stage::EndOfData => {
                "signing happens once the message is complete, for all its recipients"
            }
        }
    }
}

/// Warns (with the key's file and line) about each variable `e` reads that
/// is always Null where `key` is evaluated: a condition on it would never
/// match, and nothing else would say so.
fn warn_unavailable(r: &mut Reader, sec: &Section, key: &str, e: &Expr, stage: Stage) {
    for v in e.variables() {
        if !stage.has(v) {
            r.warn_value(
                sec,
                key,
                format!(
                    "'{}' reads '{v}', which has no value there ({}), so it is always Null",
                    sec.path(key),
                    stage.when(v)
                ),
            );
        }
    }
}

/// `[queue.limiter]`: Stalwart's rate limiters. Only `inbound` is
/// supported; `outbound` (Stalwart's per-destination throttles) is an
/// error naming what does that here (`[queue.virtual.<q>] rate` and
/// `destination.concurrency`).
fn inbound_limiters(r: &mut Reader, sec: &Section) -> Vec<InboundLimiter> {
    r.check_keys(sec, &["inbound", "outbound"], false);
    if sec.get("outbound").is_some() {
        r.invalid(sec, "outbound", format!(
                "'{}' is not supported: limit deliveries with [queue.virtual.<name>] rate and destination.concurrency",
                sec.path("outbound")
            ));
    }
    let Some(inbound) = r.sub(sec, "inbound") else {
        return Vec::new();
    };
    r.check_keys(&inbound, &[], true);
    let mut out = Vec::new();
    for (id, l) in r.children(&inbound, &[]) {
        r.check_keys(&l, &["key", "rate", "match", "enable"], false);
        let enable = r.bool(&l, "enable").unwrap_or(true);
        let mut key = Vec::new();
        for (name, span) in r.strings(&l, "key").unwrap_or_default() {
            match Var::from_name(name.trim()) {
                Some(v) if Stage::Limiter.has(v) => key.push(v),
                Some(v) => r.error(
                    &span,
                    Problem::Invalid(format!(
                        "'{}' names '{v}', which has no value there ({})",
                        l.path("key"),
                        Stage::Limiter.when(v)
                    )),
                ),
                None => r.error(
                    &span,
                    Problem::Invalid(format!(
                        "'{}' names '{name}', which is not a variable{}",
                        l.path("key"),
                        suggest(name.trim(), Var::ALL.iter().map(|v| v.name()))
                            .map(|s| format!("; did you mean '{s}'?"))
                            .unwrap_or_default()
                    )),
                ),
            }
        }
        if l.get("rate").is_none() {
            r.error(
                &l.span,
                Problem::Invalid(format!("'{}' is required", l.path("rate"))),
            );
        }
        let rate = rate_key(r, &l, "rate");
        let when = match r.expr(&l, "match") {
            Some(e) => {
                warn_unavailable(r, &l, "match", &e, Stage::Limiter);
                e
            }
            None => Expr::constant(Value::Bool(true)),
        };
        if let (true, Some(rate)) = (enable, rate) {
            out.push(InboundLimiter {
                id,
                key,
                rate,
                when,
            });
        }
    }
    out
}

/// `[queue.outbound]`: the delivery client's settings.
///
/// Stalwart's spellings are accepted beside Ferrymail's, so that a
/// Stalwart queue configuration loads as it is: `[queue.outbound.timeouts]`
/// with `mail-from`/`rcpt-to`, `[queue.outbound.limits] mx`/`multihomed`,
/// and `ip-strategy` values with underscores (`ipv4_then_ipv6`).
fn outbound(r: &mut Reader, sec: &Section) -> Outbound {
    let mut out = Outbound::default();
    r.check_keys(
        sec,
        &[
            "timeout",
            "timeouts",
            "max-mx",
            "max-multihomed",
            "limits",
            "ip-strategy",
            "max-messages-per-connection",
            "idle-timeout",
            "delivery-log",
            "hostname",
            "ehlo-hostname",
            "source-ip",
            "tls",
        ],
        false,
    );
    if let Some(t) = r.sub(sec, "tls") {
        r.check_keys(&t, &["mta-sts", "dane"], false);
        if let Some(e) = r.expr_words(&t, "mta-sts", &["optional", "require", "disable"]) {
            warn_unavailable(r, &t, "mta-sts", &e, Stage::Connection);
            check_outcomes(r, &t, "mta-sts", &e, |v| match v {
                Value::Str(s) if matches!(s.as_str(), "optional" | "require" | "disable") => Ok(()),
                _ => Err("one of 'optional', 'require', 'disable'".to_string()),
            });
            out.mta_sts = Some(e);
        }
        if t.get("dane").is_some() {
            r.warn_value(
                &t,
                "dane",
                format!(
                    "'{}' is ignored: Ferrymail does not do DANE (RFC 7672); MTA-STS is '{}'",
                    t.path("dane"),
                    t.path("mta-sts")
                ),
            );
        }
    }
    both_spellings(r, sec, "hostname", "ehlo-hostname");
    for key in ["hostname", "ehlo-hostname"] {
        if let Some(e) = r.expr(sec, key) {
            warn_unavailable(r, sec, key, &e, Stage::Connection);
            check_outcomes(r, sec, key, &e, |v| match v {
                Value::Str(s) if !s.is_empty() && !s.contains(char::is_whitespace) => Ok(()),
                _ => Err("a host name".to_string()),
            });
            out.hostname = Some(e);
        }
    }
    if let Some(src) = r.sub(sec, "source-ip") {
        r.check_keys(&src, &["v4", "v6"], false);
        for (key, v6) in [("v4", false), ("v6", true)] {
            let Some(e) = r.expr(&src, key) else {
                continue;
            };
            warn_unavailable(r, &src, key, &e, Stage::Connection);
            check_outcomes(r, &src, key, &e, |v| {
                let family = if v6 { "IPv6" } else { "IPv4" };
                let items = match v {
                    Value::List(items) => items.as_slice(),
                    one => std::slice::from_ref(one),
                };
                for item in items {
                    let ok = match item {
                        Value::Str(s) => s
                            .parse::<std::net::IpAddr>()
                            .is_ok_and(|ip| ip.is_ipv6() == v6),
                        _ => false,
                    };
                    if !ok {
                        return Err(format!("a list of {family} addresses"));
                    }
                }
                Ok(())
            });
            if v6 {
                out.source_ip_v6 = Some(e);
            } else {
                out.source_ip_v4 = Some(e);
            }
        }
    }
    // (table, key in it, Ferrymail's name for the setting)
    const TIMEOUTS: [(&str, &str, &str); 16] = [
        ("timeout", "connect", "connect"),
        ("timeout", "greeting", "greeting"),
        ("timeout", "tls", "tls"),
        ("timeout", "ehlo", "ehlo"),
        ("timeout", "mail", "mail"),
        ("timeout", "rcpt", "rcpt"),
        ("timeout", "data", "data"),
        ("timeout", "mta-sts", "mta-sts"),
        ("timeouts", "connect", "connect"),
        ("timeouts", "greeting", "greeting"),
        ("timeouts", "tls", "tls"),
        ("timeouts", "ehlo", "ehlo"),
        ("timeouts", "mail-from", "mail"),
        ("timeouts", "rcpt-to", "rcpt"),
        ("timeouts", "data", "data"),
        ("timeouts", "mta-sts", "mta-sts"),
    ];
    both_spellings(r, sec, "timeout", "timeouts");
    for table in ["timeout", "timeouts"] {
        let Some(t) = r.sub(sec, table) else {
            continue;
        };
        let keys: Vec<&str> = TIMEOUTS
            .iter()
            .filter(|(tab, ..)| *tab == table)
            .map(|(_, key, _)| *key)
            .collect();
        r.check_keys(&t, &keys, false);
        let timeouts = &mut out.timeout;
        for (_, key, name) in TIMEOUTS.iter().filter(|(tab, ..)| *tab == table) {
            let slot = match *name {
                "connect" => &mut timeouts.connect,
                "greeting" => &mut timeouts.greeting,
                "tls" => &mut timeouts.tls,
                "ehlo" => &mut timeouts.ehlo,
                "mail" => &mut timeouts.mail,
                "rcpt" => &mut timeouts.rcpt,
                "mta-sts" => &mut timeouts.mta_sts,
                _ => &mut timeouts.data,
            };
            if let Some(d) = r.duration(&t, key) {
                if d.is_zero() {
                    r.invalid(&t, key, format!("'{}' must be longer than 0s", t.path(key)));
                } else {
                    *slot = d;
                }
            }
        }
    }
    if let Some(n) = r.usize(sec, "max-mx", 1) {
        out.max_mx = n;
    }
    if let Some(n) = r.usize(sec, "max-multihomed", 1) {
        out.max_multihomed = n;
    }
    if let Some(l) = r.sub(sec, "limits") {
        r.check_keys(&l, &["mx", "multihomed"], false);
        for (key, ours) in [("mx", "max-mx"), ("multihomed", "max-multihomed")] {
            if sec.get(ours).is_some() && l.get(key).is_some() {
                r.invalid(
                    &l,
                    key,
                    format!(
                        "'{}' and '{}' are the same setting; keep one",
                        l.path(key),
                        sec.path(ours)
                    ),
                );
            }
        }
        if let Some(n) = r.usize(&l, "mx", 1) {
            out.max_mx = n;
        }
        if let Some(n) = r.usize(&l, "multihomed", 1) {
            out.max_multihomed = n;
        }
    }
    if let Some(s) = r.choice(
        sec,
        "ip-strategy",
        &[
            ("ipv4-then-ipv6", IpStrategy::Ipv4ThenIpv6),
            ("ipv6-then-ipv4", IpStrategy::Ipv6ThenIpv4),
            ("ipv4-only", IpStrategy::Ipv4Only),
            ("ipv6-only", IpStrategy::Ipv6Only),
            // Stalwart's spellings.
            ("ipv4_then_ipv6", IpStrategy::Ipv4ThenIpv6),
            ("ipv6_then_ipv4", IpStrategy::Ipv6ThenIpv4),
            ("ipv4_only", IpStrategy::Ipv4Only),
            ("ipv6_only", IpStrategy::Ipv6Only),
        ],
    ) {
        out.ip_strategy = s;
    }
    if let Some(n) = r.usize(sec, "max-messages-per-connection", 1) {
        out.max_messages_per_connection = n;
    }
    if let Some(d) = r.duration(sec, "idle-timeout") {
        out.idle_timeout = d;
    }
    if let Some(p) = r.nonempty_string(sec, "delivery-log") {
        out.delivery_log = Some(PathBuf::from(p));
    }
    out
}

fn schedule(r: &mut Reader, sec: &Section, base: &Schedule) -> Schedule {
    let mut out = base.clone();
    if let Some(e) = r.expr(sec, "retry") {
        check_outcomes(r, sec, "retry", &e, |v| durations(v, false));
        out.retry = e;
    }
    if let Some(e) = r.expr(sec, "notify") {
        check_outcomes(r, sec, "notify", &e, |v| durations(v, true));
        out.notify = e;
    }
    let expire = r.expr(sec, "expire");
    let max_attempts = r.expr(sec, "max-attempts");
    if sec.has("expire") && sec.has("max-attempts") {
        let span = sec
            .get("max-attempts")
            .map(|(k, _)| k.span())
            .unwrap_or_default();
        r.error(
            &span,
            Problem::Invalid(format!(
                "'{}' and 'expire' are alternatives; set only one of them in {}",
                sec.path("max-attempts"),
                sec.display()
            )),
        );
    }
    if let Some(e) = &expire {
        check_outcomes(r, sec, "expire", e, |v| match v {
            Value::Duration(d) if !d.is_zero() => Ok(()),
            _ => Err("a duration longer than 0s".to_string()),
        });
    }
    if let Some(e) = &max_attempts {
        check_outcomes(r, sec, "max-attempts", e, |v| match v {
            Value::Int(n) if *n >= 1 => Ok(()),
            _ => Err("a number of attempts of at least 1".to_string()),
        });
    }
    if sec.has("expire") || sec.has("max-attempts") {
        out.expire = expire;
        out.max_attempts = max_attempts;
    }
    out
}

/// A duration or a list of durations, none zero; `allow_empty` for `notify`.
fn durations(v: &Value, allow_empty: bool) -> Result<(), String> {
    let what = || {
        if allow_empty {
            "a list of durations such as [1d, 3d]".to_string()
        } else {
            "a non-empty list of durations longer than 0s, such as [2m, 5m, 1h]".to_string()
        }
    };
    match v {
        Value::Duration(d) if !d.is_zero() => Ok(()),
        Value::List(items)
            if (allow_empty || !items.is_empty())
                && items
                    .iter()
                    .all(|i| matches!(i, Value::Duration(d) if !d.is_zero())) =>
        {
            Ok(())
        }
        _ => Err(what()),
    }
}

fn virtual_queue(
    r: &mut Reader,
    sec: &Section,
    schedules: &BTreeMap<String, Schedule>,
    base: VirtualQueue,
) -> VirtualQueue {
    let mut out = base;
    r.check_keys(
        sec,
        &["concurrency", "rate", "schedule", "destination"],
        false,
    );
    if let Some(n) = r.usize(sec, "concurrency", 1) {
        out.concurrency = n;
    }
    if let Some(d) = r.sub(sec, "destination") {
        r.check_keys(
            &d,
            &["concurrency", "rate", "failure-limit", "suspend"],
            false,
        );
        if let Some(n) = r.usize(&d, "concurrency", 1) {
            out.destination.concurrency = n;
        }
        if let Some(rate) = rate_key(r, &d, "rate") {
            out.destination.rate = Some(rate);
        }
        if let Some(n) = r.int(&d, "failure-limit", 1, i64::from(u32::MAX)) {
            out.destination.failure_limit = u32::try_from(n).unwrap_or(u32::MAX);
        }
        if let Some(t) = r.duration(&d, "suspend") {
            if t.is_zero() {
                r.invalid(
                    &d,
                    "suspend",
                    format!("'{}' must be longer than 0s", d.path("suspend")),
                );
            } else {
                out.destination.suspend = t;
            }
        }
    }
    if let Some(rate) = rate_key(r, sec, "rate") {
        out.rate = Some(rate);
    }
    if let Some(id) = r.string(sec, "schedule") {
        if schedules.contains_key(&id) {
            out.schedule = Some(id);
        } else {
            let span = r.value_span(sec, "schedule");
            unknown_reference(
                r,
                &span,
                sec.path("schedule"),
                "schedule",
                &id,
                schedules.keys(),
            );
        }
    }
    out
}

/// `COUNT/PERIOD`, e.g. `500/1s`, `10/1m`; a bare unit means one (`500/s`).
/// The rate at `key` (`COUNT/PERIOD`), or `None` when absent or invalid
/// (an error naming the key).
fn rate_key(r: &mut Reader, sec: &Section, key: &str) -> Option<Rate> {
    let text = r.string(sec, key)?;
    match parse_rate(&text) {
        Ok(rate) => Some(rate),
        Err(why) => {
            r.invalid(
                sec,
                key,
                format!("invalid rate '{text}' for '{}': {why}", sec.path(key)),
            );
            None
        }
    }
}

pub(crate) fn parse_rate(text: &str) -> Result<Rate, String> {
    const HINT: &str = "write COUNT/PERIOD, e.g. 500/1s";
    let (count, period) = text.split_once('/').ok_or_else(|| HINT.to_string())?;
    let count: u64 = count
        .trim()
        .parse()
        .map_err(|_| format!("'{}' is not a whole number; {HINT}", count.trim()))?;
    if count == 0 {
        return Err("the count must be at least 1".to_string());
    }
    let period = period.trim();
    let period = if period.starts_with(|c: char| c.is_ascii_digit()) {
        crate::units::parse_duration(period)?
    } else {
        crate::units::parse_duration(&format!("1{period}"))?
    };
    if period.is_zero() {
        return Err("the period must be longer than 0s".to_string());
    }
    Ok(Rate { count, period })
}

fn route(r: &mut Reader, id: String, sec: &Section) -> Option<Route> {
    r.check_keys(
        sec,
        &["type", "address", "port", "protocol", "tls", "auth"],
        false,
    );
    let is_relay = if r.require(sec, "type") {
        r.choice(sec, "type", &[("mx", false), ("relay", true)])?
    } else {
        return None;
    };
    let address = r.nonempty_string(sec, "address");
    let kind = match (is_relay, address) {
        (true, Some(address)) => RouteKind::Relay {
            address: address.trim().to_string(),
        },
        (true, None) => {
            if !sec.has("address") {
                r.error(
                    &sec.span,
                    Problem::Missing {
                        key: "address".to_string(),
                        section: format!("{} (type = \"relay\")", sec.display()),
                    },
                );
            }
            return None;
        }
        (false, address) => {
            if address.is_some() {
                let span = sec
                    .get("address")
                    .map(|(k, _)| k.span())
                    .unwrap_or_default();
                r.error(
                    &span,
                    Problem::Invalid(format!(
                        "'{}' is only used by relay routes; an mx route looks the host up in DNS",
                        sec.path("address")
                    )),
                );
            }
            RouteKind::Mx
        }
    };
    let mut out = Route::mx();
    out.id = id;
    out.kind = kind;
    if let Some(p) = r.int(sec, "port", 1, 65535) {
        out.port = u16::try_from(p).unwrap_or(25);
    }
    if let Some(p) = r.choice(
        sec,
        "protocol",
        &[
            ("smtp", DeliveryProtocol::Smtp),
            ("lmtp", DeliveryProtocol::Lmtp),
        ],
    ) {
        out.protocol = p;
    }
    if let Some(tls) = r.sub(sec, "tls") {
        r.check_keys(
            &tls,
            &["implicit", "mode", "allow-invalid-certs", "ca"],
            false,
        );
        if let Some(b) = r.bool(&tls, "implicit") {
            out.tls.implicit = b;
        }
        if let Some(pem) = r.string(&tls, "ca") {
            if pem.contains("-----BEGIN CERTIFICATE-----") {
                out.tls_ca = Some(pem);
            } else {
                r.invalid(
                    &tls,
                    "ca",
                    format!(
                        "'{}' holds no PEM certificate (write \"%{{file:/path/ca.pem}}%\")",
                        tls.path("ca")
                    ),
                );
            }
        }
        if let Some(m) = r.choice(
            &tls,
            "mode",
            &[
                ("optional", TlsMode::Optional),
                ("require", TlsMode::Require),
                ("disable", TlsMode::Disable),
            ],
        ) {
            out.tls.mode = m;
        }
        if let Some(b) = r.bool(&tls, "allow-invalid-certs") {
            out.tls.allow_invalid_certs = b;
        }
        if out.tls.implicit && out.tls.mode == TlsMode::Disable {
            r.invalid(
                &tls,
                "mode",
                format!(
                    "'{}' = \"disable\" contradicts '{}' = true",
                    tls.path("mode"),
                    tls.path("implicit")
                ),
            );
        }
    }
    if let Some(auth) = r.sub(sec, "auth") {
        r.check_keys(&auth, &["username", "secret"], false);
        let username = r.required_string(&auth, "username");
        let secret = r.required_string(&auth, "secret");
        if !is_relay {
            r.error(
                &auth.span,
                Problem::Invalid(format!(
                    "'{}' is only used by relay routes",
                    sec.path("auth")
                )),
            );
        }
        out.auth = Some(RouteAuth {
            username: username?,
            secret: secret?,
        });
    }
    Some(out)
}

// ---------------------------------------------------------------- [report]

fn report(
    r: &mut Reader,
    root: &Section,
    hostname: &str,
    signatures: &BTreeMap<String, Signature>,
) -> Report {
    let mut dsn = DsnConfig::for_hostname(hostname);
    let Some(sec) = r.sub(root, "report") else {
        return Report { dsn };
    };
    r.check_keys(&sec, &["dsn"], false);
    if let Some(d) = r.sub(&sec, "dsn") {
        r.check_keys(
            &d,
            &[
                "from-name",
                "from-address",
                "sign",
                "max-returned-size",
                "double-bounce",
                "batch-quiet",
                "batch-max-hold",
            ],
            false,
        );
        if let Some(d) = r.duration(&d, "batch-quiet") {
            dsn.batch_quiet = d;
        }
        if let Some(d) = r.duration(&d, "batch-max-hold") {
            dsn.batch_max_hold = d;
        }
        if let Some(n) = r.size(&d, "max-returned-size") {
            dsn.max_returned_size = n;
        }
        if let Some(a) = r.nonempty_string(&d, "double-bounce") {
            let a = a
                .trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_string();
            if a.contains('@') && !a.contains(char::is_whitespace) {
                dsn.double_bounce = Some(a);
            } else {
                r.invalid(
                    &d,
                    "double-bounce",
                    format!(
                        "'{}' must be an address such as 'postmaster@example.org', found '{a}'",
                        d.path("double-bounce")
                    ),
                );
            }
        }
        if let Some(e) = r.expr(&d, "from-name") {
            check_outcomes(r, &d, "from-name", &e, |v| match v {
                Value::Str(_) => Ok(()),
                _ => Err("a string such as 'Mail Delivery Subsystem'".to_string()),
            });
            dsn.from_name = e;
        }
        if let Some(e) = r.expr(&d, "from-address") {
            check_outcomes(r, &d, "from-address", &e, |v| match v {
                Value::Str(s) if s.contains('@') => Ok(()),
                _ => Err("an address such as 'MAILER-DAEMON@example.org'".to_string()),
            });
            dsn.from_address = e;
        }
        if let Some(e) = r.expr(&d, "sign") {
            check_outcomes(r, &d, "sign", &e, |v| match v {
                Value::Str(_) => Ok(()),
                Value::List(items) if items.iter().all(|i| matches!(i, Value::Str(_))) => Ok(()),
                _ => Err("a list of signature ids such as ['rsa']".to_string()),
            });
            let mut missing = Vec::new();
            for v in e.constant_outcomes() {
                let ids: Vec<&str> = match v {
                    Value::Str(s) => vec![s.as_str()],
                    Value::List(items) => items.iter().filter_map(Value::as_str).collect(),
                    _ => Vec::new(),
                };
                missing.extend(
                    ids.into_iter()
                        .filter(|id| !signatures.contains_key(*id))
                        .map(str::to_string),
                );
            }
            missing.dedup();
            for id in missing {
                r.warn_value(&d, "sign", format!(
                        "'report.dsn.sign' names signature '{id}', which is not defined under [signature.{id}]; DSNs will not be signed with it"
                    ));
            }
            dsn.sign = e;
        }
    }
    Report { dsn }
}

// ---------------------------------------------------------------- [cluster]

fn cluster(r: &mut Reader, root: &Section) -> Cluster {
    let mut out = Cluster::default();
    let Some(sec) = r.sub(root, "cluster") else {
        return out;
    };
    r.check_keys(&sec, &["lease", "poll-interval"], false);
    if let Some(d) = r.duration(&sec, "lease") {
        if d < MIN_LEASE || d > std::time::Duration::from_secs(86_400) {
            r.invalid(
                &sec,
                "lease",
                format!(
                    "'cluster.lease' must be between {}s and 1d, found {d:?}",
                    MIN_LEASE.as_secs()
                ),
            );
        } else {
            out.lease = d;
        }
    }
    if let Some(d) = r.duration(&sec, "poll-interval") {
        if d < std::time::Duration::from_millis(50) || d > std::time::Duration::from_secs(60) {
            r.invalid(
                &sec,
                "poll-interval",
                format!("'cluster.poll-interval' must be between 50ms and 1m, found {d:?}"),
            );
        } else {
            out.poll_interval = d;
        }
    }
    if out.poll_interval >= out.lease {
        r.invalid(&sec, "poll-interval", format!(
                "'cluster.poll-interval' ({:?}) must be shorter than 'cluster.lease' ({:?}): a node must hear of other nodes' changes before their leases run out",
                out.poll_interval, out.lease
            ));
    }
    out
}

// ---------------------------------------------------------------- [resolver]

fn resolver(r: &mut Reader, root: &Section) -> Resolver {
    let mut out = Resolver::default();
    let Some(sec) = r.sub(root, "resolver") else {
        return out;
    };
    r.check_keys(&sec, &["type", "custom"], false);
    if let Some(k) = r.choice(
        &sec,
        "type",
        &[
            ("system", ResolverKind::System),
            ("custom", ResolverKind::Custom),
        ],
    ) {
        out.kind = k;
    }
    if let Some(list) = r.strings(&sec, "custom") {
        for (text, span) in list {
            match parse_name_server(&text) {
                Some(ns) => {
                    out.servers.push(ns);
                    out.custom.push(text);
                }
                None => r.error(
                    &span,
                    Problem::Invalid(format!(
                        "invalid name server '{text}' for 'resolver.custom': write udp://IP[:PORT], tcp://IP[:PORT], IP or IP:PORT"
                    )),
                ),
            }
        }
    }
    if out.kind == ResolverKind::Custom && out.custom.is_empty() && !sec.has("custom") {
        r.invalid(
            &sec,
            "type",
            "'resolver.type' = \"custom\" needs 'resolver.custom', a list of name servers"
                .to_string(),
        );
    }
    out
}

/// `udp://IP[:PORT]`, `tcp://IP[:PORT]`, `IP`, `IP:PORT` or `[IPv6]:PORT`.
fn parse_name_server(text: &str) -> Option<NameServer> {
    let text = text.trim();
    let (transport, rest) = if let Some(rest) = text.strip_prefix("udp://") {
        (DnsTransport::Udp, rest)
    } else if let Some(rest) = text.strip_prefix("tcp://") {
        (DnsTransport::Tcp, rest)
    } else {
        (DnsTransport::Udp, text)
    };
    let rest = rest.trim_end_matches('/');
    let addr = match rest.parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => {
            let bare = rest.trim_start_matches('[').trim_end_matches(']');
            SocketAddr::new(bare.parse::<IpAddr>().ok()?, 53)
        }
    };
    Some(NameServer { transport, addr })
}
