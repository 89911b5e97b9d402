//! The expression language that makes settings dynamic, as in Stalwart:
//! `retry = "[2m, 5m, 10m]"`, `relay = "in_network(remote_ip, '10.0.0.0/8')"`,
//! `route = "'dom-' + rcpt_domain"`.
//!
//! Expressions are parsed once, when the configuration loads: variables and
//! functions are resolved to enums then, so an unknown name is a configuration
//! error and evaluation never looks a name up. Sub-expressions without variables
//! are folded to constants at parse time, so `"[2m, 5m]"` evaluates by cloning
//! one list. Evaluation runs per recipient on the hot path; it never panics and
//! never fails: a type error (`'a' - 1`) yields [`Value::Null`].
//!
//! Grammar, loosest binding first:
//!
//! ```text
//! expr    := or
//! or      := and ('||' and)*
//! and     := eq ('&&' eq)*
//! eq      := rel (('==' | '!=') rel)*
//! rel     := add (('<' | '<=' | '>' | '>=') add)*
//! add     := mul (('+' | '-') mul)*
//! mul     := unary (('*' | '/') unary)*
//! unary   := ('!' | '-') unary | primary
//! primary := INT | DURATION | STRING | 'true' | 'false'
//!          | '(' expr ')' | '[' (expr (',' expr)* ','?)? ']'
//!          | VARIABLE | FUNCTION '(' (expr (',' expr)*)? ')'
//! ```
//!
//! Strings use single quotes (`'text'`) or double quotes (handy inside a TOML
//! literal string); `\\`, `\'`, `\"`, `\n` and `\t` are the escapes. Durations
//! are a whole number and one unit: `ms s m h d w`.

mod eval;
mod parse;
#[cfg(test)]
mod tests;

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::units::format_duration;

/// Deepest expression tree accepted. Parsing and evaluation recurse over the
/// tree, so a bound keeps a hostile or mistaken configuration (`((((...`,
/// `1+1+1+...`) from exhausting the stack.
pub const MAX_DEPTH: usize = 64;

/// A value an expression computes or a variable holds.
///
/// Why these variants: they are what mail settings need (names, counts, ages,
/// lists of retry intervals). IP addresses travel as strings and are parsed by
/// the functions that need them (`in_network`, `is_loopback`).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Value {
    /// Absent or not computable: an unset variable, a missing header, a type error.
    #[default]
    Null,
    /// `true` / `false`, and the result of comparisons.
    Bool(bool),
    /// Whole numbers: sizes, counts, priorities, ports.
    Int(i64),
    /// Text: addresses, domains, queue and route names. Compared case-sensitively.
    Str(String),
    /// Time spans: retry intervals, expiry, ages.
    Duration(Duration),
    /// Lists, e.g. retry schedules or DKIM signer names.
    List(Vec<Value>),
}

impl Value {
    /// Whether the value counts as true in a condition: `Null`, `false`, `0`,
    /// `""`, a zero duration and `[]` are false, everything else is true.
    pub fn is_truthy(&self) -> bool {
        match self {
            Value::Null => false,
            Value::Bool(b) => *b,
            Value::Int(i) => *i != 0,
            Value::Str(s) => !s.is_empty(),
            Value::Duration(d) => !d.is_zero(),
            Value::List(l) => !l.is_empty(),
        }
    }

    /// The type's name, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Int(_) => "integer",
            Value::Str(_) => "string",
            Value::Duration(_) => "duration",
            Value::List(_) => "list",
        }
    }

    /// The text, if this is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The integer, if this is one.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The duration, if this is one.
    pub fn as_duration(&self) -> Option<Duration> {
        match self {
            Value::Duration(d) => Some(*d),
            _ => None,
        }
    }
}

/// Written as an expression literal would be (`'text'`, `5`, `2m`, `[1, 2]`),
/// so error messages show values the way an operator types them.
impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("null"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Str(s) => {
                f.write_str("'")?;
                for c in s.chars() {
                    match c {
                        '\'' => f.write_str("\\'")?,
                        '\\' => f.write_str("\\\\")?,
                        '\n' => f.write_str("\\n")?,
                        '\t' => f.write_str("\\t")?,
                        c => write!(f, "{c}")?,
                    }
                }
                f.write_str("'")
            }
            Value::Duration(d) => f.write_str(&format_duration(*d)),
            Value::List(items) => {
                f.write_str("[")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{item}")?;
                }
                f.write_str("]")
            }
        }
    }
}

/// Lets [`Variables`] implementations write `"text".into()`.
impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Str(s.to_string())
    }
}

/// Lets [`Variables`] implementations write `string.into()`.
impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Str(s)
    }
}

/// Lets [`Variables`] implementations write `flag.into()`.
impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}

/// Lets [`Variables`] implementations write `count.into()`.
impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Int(i)
    }
}

/// Lets [`Variables`] implementations write `port.into()`.
impl From<u16> for Value {
    fn from(i: u16) -> Self {
        Value::Int(i64::from(i))
    }
}

/// Lets [`Variables`] implementations write `attempts.into()`.
impl From<u32> for Value {
    fn from(i: u32) -> Self {
        Value::Int(i64::from(i))
    }
}

/// Sizes are `u64`/`usize` in Rust; values past `i64::MAX` saturate.
impl From<u64> for Value {
    fn from(i: u64) -> Self {
        Value::Int(i64::try_from(i).unwrap_or(i64::MAX))
    }
}

/// Sizes are `u64`/`usize` in Rust; values past `i64::MAX` saturate.
impl From<usize> for Value {
    fn from(i: usize) -> Self {
        Value::Int(i64::try_from(i).unwrap_or(i64::MAX))
    }
}

/// Lets [`Variables`] implementations write `age.into()`.
impl From<Duration> for Value {
    fn from(d: Duration) -> Self {
        Value::Duration(d)
    }
}

/// `remote_ip` is a string in expressions; this writes it in the usual form.
impl From<IpAddr> for Value {
    fn from(ip: IpAddr) -> Self {
        Value::Str(ip.to_string())
    }
}

/// Absent values (no authenticated user, no MX yet) become `Null`.
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

/// Lets callers build lists from any iterator of convertible items.
impl<T: Into<Value>> From<Vec<T>> for Value {
    fn from(v: Vec<T>) -> Self {
        Value::List(v.into_iter().map(Into::into).collect())
    }
}

macro_rules! vars {
    ($($variant:ident => $name:literal : $doc:literal,)*) => {
        /// A variable an expression can read. Names are resolved to this enum
        /// when the configuration loads, so lookups at evaluation time are a
        /// `match`, not a string comparison, and a misspelt name is caught by
        /// `ferrymail check`. Which ones have a value depends on where the
        /// expression is evaluated; the others read as [`Value::Null`].
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Var {
            $(#[doc = $doc] $variant,)*
        }

        impl Var {
            /// Every variable, in documentation order.
            pub const ALL: &'static [Var] = &[$(Var::$variant,)*];

            /// The name used in expressions (`rcpt_domain`).
            pub fn name(self) -> &'static str {
                match self {
                    $(Var::$variant => $name,)*
                }
            }

            /// Looks a name up; `None` when no variable has that name.
            pub fn from_name(name: &str) -> Option<Var> {
                match name {
                    $($name => Some(Var::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

vars! {
    Sender => "sender": "Envelope sender (MAIL FROM), `''` for the null sender.",
    SenderDomain => "sender_domain": "Domain part of the envelope sender.",
    Rcpt => "rcpt": "Envelope recipient (RCPT TO).",
    RcptDomain => "rcpt_domain": "Domain part of the envelope recipient.",
    RemoteIp => "remote_ip": "IP address of the SMTP client, as a string.",
    LocalPort => "local_port": "Port the SMTP client connected to.",
    AuthenticatedAs => "authenticated_as": "SMTP AUTH identity, `Null` when not authenticated.",
    HeloDomain => "helo_domain": "Name given in EHLO/HELO/LHLO.",
    Priority => "priority": "Message priority (higher is delivered first).",
    Size => "size": "Message size in bytes.",
    Queue => "queue": "Name of the virtual queue the message is in.",
    Source => "source": "Where the message came from: `'smtp'`, `'dsn'` or `'local'`.",
    RetryNum => "retry_num": "Number of delivery attempts made so far.",
    NotifyNum => "notify_num": "Number of delay notifications sent so far.",
    ExpiresIn => "expires_in": "Time left before the message expires.",
    LastError => "last_error": "Text of the last delivery error.",
    Mx => "mx": "MX host currently being tried.",
}

impl fmt::Display for Var {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What an expression reads its variables from. The receive, queue and delivery
/// stages each implement it over their own state; evaluation asks only for the
/// variables the expression uses.
pub trait Variables {
    /// The current value of `v`, or [`Value::Null`] where it has no meaning.
    fn var(&self, v: Var) -> Value;

    /// The first value of message header `name` (case-insensitive), for
    /// `header('Name')`. Stages that have no message headers keep the default.
    fn header(&self, _name: &str) -> Option<String> {
        None
    }
}

/// For evaluating constant expressions, or where no variable has a value.
impl Variables for () {
    fn var(&self, _v: Var) -> Value {
        Value::Null
    }
}

/// A built-in function. Resolved at parse time like [`Var`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Func {
    Header,
    Contains,
    StartsWith,
    EndsWith,
    Lower,
    Upper,
    IsEmpty,
    InNetwork,
    IsLoopback,
}

impl Func {
    pub(crate) const ALL: &'static [Func] = &[
        Func::Header,
        Func::Contains,
        Func::StartsWith,
        Func::EndsWith,
        Func::Lower,
        Func::Upper,
        Func::IsEmpty,
        Func::InNetwork,
        Func::IsLoopback,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Func::Header => "header",
            Func::Contains => "contains",
            Func::StartsWith => "starts_with",
            Func::EndsWith => "ends_with",
            Func::Lower => "lower",
            Func::Upper => "upper",
            Func::IsEmpty => "is_empty",
            Func::InNetwork => "in_network",
            Func::IsLoopback => "is_loopback",
        }
    }

    pub(crate) fn arity(self) -> usize {
        match self {
            Func::Header | Func::Lower | Func::Upper | Func::IsEmpty | Func::IsLoopback => 1,
            Func::Contains | Func::StartsWith | Func::EndsWith | Func::InNetwork => 2,
        }
    }

    pub(crate) fn from_name(name: &str) -> Option<Func> {
        Func::ALL.iter().copied().find(|f| f.name() == name)
    }
}

/// Binary operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BinOp {
    Or,
    And,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Add,
    Sub,
    Mul,
    Div,
}

impl BinOp {
    fn symbol(self) -> &'static str {
        match self {
            BinOp::Or => "||",
            BinOp::And => "&&",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
        }
    }
}

/// Unary operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum UnOp {
    Not,
    Neg,
}

/// An IPv4 or IPv6 network, `10.0.0.0/8` or `2001:db8::/32`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `ADDR/PREFIX`, or a bare address meaning a single host.
    ///
    /// An IPv4-mapped IPv6 network (`::ffff:192.0.2.0/120`, how logs of a
    /// dual-stack listener show IPv4 clients) is the IPv4 network it maps
    /// (`192.0.2.0/24`): its prefix counts the 96 mapping bits, which an
    /// IPv4 mask must not (a /128 kept as a /128 against 32 bits once made
    /// every IPv4 client match).
    pub(crate) fn parse(text: &str) -> Option<Cidr> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = addr.trim().parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.trim().parse::<u8>().ok().filter(|p| *p <= max)?,
            None => max,
        };
        match (addr, addr.to_canonical()) {
            (IpAddr::V6(_), IpAddr::V4(v4)) => Some(Cidr {
                addr: IpAddr::V4(v4),
                // Shorter than the mapping prefix is no IPv4 network at all.
                prefix: prefix.checked_sub(96)?,
            }),
            _ => Some(Cidr { addr, prefix }),
        }
    }

    /// Whether `ip` is inside the network. IPv4-mapped IPv6 addresses
    /// (`::ffff:10.1.2.3`, as dual-stack sockets report them) match IPv4 networks.
    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = mask_bits::<32>(self.prefix) as u32;
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = mask_bits::<128>(self.prefix);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// The network mask of a `prefix` in a `WIDTH`-bit address, in the low bits:
/// all ones for the full width, none for 0 or a prefix beyond the width
/// (which [`Cidr::parse`] never makes).
fn mask_bits<const WIDTH: u32>(prefix: u8) -> u128 {
    let prefix = u32::from(prefix);
    if prefix == 0 || prefix > WIDTH {
        return 0;
    }
    let ones = u128::MAX >> (128 - WIDTH);
    // A shift by the full 128 bits (an IPv6 /128: one host) overflows: in a
    // release build it wrapped to a shift by 0, an empty mask, and `::1`
    // matched every IPv6 client, an open relay in a relay rule.
    ones & !ones.checked_shr(prefix).unwrap_or(0)
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The parsed tree. Private so the representation can change freely.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Node {
    Const(Value),
    Var(Var),
    List(Vec<Node>),
    Unary(UnOp, Box<Node>),
    Binary(BinOp, Box<Node>, Box<Node>),
    Call(Func, Vec<Node>),
    /// `in_network(ip, 'literal')` with the network parsed once, at load time.
    InNetwork(Box<Node>, Cidr),
    /// `[{if, then}, ..., {else}]`: the first true condition picks its value.
    Cond(Vec<(Node, Node)>, Box<Node>),
}

impl Node {
    /// Whether evaluating needs no [`Variables`] at all.
    fn is_const(&self) -> bool {
        matches!(self, Node::Const(_))
    }

    /// Appends every variable read to `out`, skipping ones already there.
    fn collect_vars(&self, out: &mut Vec<Var>) {
        match self {
            Node::Const(_) => {}
            Node::Var(v) => {
                if !out.contains(v) {
                    out.push(*v);
                }
            }
            Node::List(items) | Node::Call(_, items) => {
                items.iter().for_each(|n| n.collect_vars(out))
            }
            Node::Unary(_, n) | Node::InNetwork(n, _) => n.collect_vars(out),
            Node::Binary(_, l, r) => {
                l.collect_vars(out);
                r.collect_vars(out);
            }
            Node::Cond(branches, otherwise) => {
                for (c, t) in branches {
                    c.collect_vars(out);
                    t.collect_vars(out);
                }
                otherwise.collect_vars(out);
            }
        }
    }

    /// Tree depth, to enforce [`MAX_DEPTH`].
    fn depth(&self) -> usize {
        1 + match self {
            Node::Const(_) | Node::Var(_) => 0,
            Node::List(items) | Node::Call(_, items) => {
                items.iter().map(Node::depth).max().unwrap_or(0)
            }
            Node::Unary(_, n) | Node::InNetwork(n, _) => n.depth(),
            Node::Binary(_, l, r) => l.depth().max(r.depth()),
            Node::Cond(branches, otherwise) => branches
                .iter()
                .map(|(c, t)| c.depth().max(t.depth()))
                .max()
                .unwrap_or(0)
                .max(otherwise.depth()),
        }
    }

    fn fmt_prec(&self, f: &mut fmt::Formatter<'_>, parent: u8) -> fmt::Result {
        match self {
            Node::Const(v) => write!(f, "{v}"),
            Node::Var(v) => write!(f, "{v}"),
            Node::List(items) => {
                f.write_str("[")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    item.fmt_prec(f, 0)?;
                }
                f.write_str("]")
            }
            Node::Unary(op, n) => {
                f.write_str(match op {
                    UnOp::Not => "!",
                    UnOp::Neg => "-",
                })?;
                n.fmt_prec(f, parse::UNARY_PREC)
            }
            Node::Binary(op, l, r) => {
                let prec = parse::precedence(*op);
                if prec < parent {
                    f.write_str("(")?;
                }
                l.fmt_prec(f, prec)?;
                write!(f, " {} ", op.symbol())?;
                // Left-associative: a right operand of equal precedence needs parentheses.
                r.fmt_prec(f, prec + 1)?;
                if prec < parent {
                    f.write_str(")")?;
                }
                Ok(())
            }
            Node::Call(func, args) => {
                write!(f, "{}(", func.name())?;
                for (i, arg) in args.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    arg.fmt_prec(f, 0)?;
                }
                f.write_str(")")
            }
            Node::InNetwork(ip, net) => {
                f.write_str("in_network(")?;
                ip.fmt_prec(f, 0)?;
                write!(f, ", '{net}')")
            }
            Node::Cond(branches, otherwise) => {
                f.write_str("[")?;
                for (cond, then) in branches {
                    f.write_str("{ if = \"")?;
                    cond.fmt_prec(f, 0)?;
                    f.write_str("\", then = \"")?;
                    then.fmt_prec(f, 0)?;
                    f.write_str("\" }, ")?;
                }
                f.write_str("{ else = \"")?;
                otherwise.fmt_prec(f, 0)?;
                f.write_str("\" }]")
            }
        }
    }
}

/// Why an expression did not parse, and where (1-based character column).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message} (column {column})")]
pub struct ExprError {
    /// 1-based character position in the expression text where the problem starts.
    pub column: usize,
    /// What is wrong, with a suggestion where one is known.
    pub message: String,
}

/// A parsed expression: a constant, a formula over [`Var`]s, or an
/// `if/then/else` list. Cheap to clone (shared tree) and safe to share between
/// threads, so the configuration can hand it to every worker.
#[derive(Clone, PartialEq)]
pub struct Expr {
    node: Arc<Node>,
}

impl Expr {
    /// Parses expression text such as `"[2m, 5m]"` or `"rcpt_domain == 'x'"`.
    pub fn parse(text: &str) -> Result<Expr, ExprError> {
        parse::parse(text).map(Expr::from_node)
    }

    /// An expression that always yields `value`: built-in defaults, and bare
    /// TOML integers or booleans used where an expression is expected.
    pub fn constant(value: Value) -> Expr {
        Expr::from_node(Node::Const(value))
    }

    /// The conditional form: the value of the first branch whose condition is
    /// true, else `otherwise`. This is what
    /// `[ { if = "c", then = "a" }, { else = "b" } ]` in TOML becomes.
    /// Fails only when the combined tree would exceed [`MAX_DEPTH`].
    pub fn conditional(branches: Vec<(Expr, Expr)>, otherwise: Expr) -> Result<Expr, ExprError> {
        let node = Node::Cond(
            branches
                .into_iter()
                .map(|(c, t)| (Arc::unwrap_or_clone(c.node), Arc::unwrap_or_clone(t.node)))
                .collect(),
            Box::new(Arc::unwrap_or_clone(otherwise.node)),
        );
        if node.depth() > MAX_DEPTH {
            return Err(ExprError {
                column: 1,
                message: format!("expression nests deeper than {MAX_DEPTH} levels"),
            });
        }
        Ok(Expr::from_node(node))
    }

    /// A list whose items are expressions, for a TOML array of expression
    /// strings (`retry = ["2m", "5m"]`). Folded to a constant when it can be.
    pub(crate) fn list(items: Vec<Expr>) -> Result<Expr, ExprError> {
        let node = Node::List(
            items
                .into_iter()
                .map(|e| Arc::unwrap_or_clone(e.node))
                .collect(),
        );
        if node.depth() > MAX_DEPTH {
            return Err(ExprError {
                column: 1,
                message: format!("expression nests deeper than {MAX_DEPTH} levels"),
            });
        }
        Ok(Expr::from_node(parse::fold(node)))
    }

    fn from_node(node: Node) -> Expr {
        Expr {
            node: Arc::new(node),
        }
    }

    /// The value, when the expression reads no variable and no header; lets
    /// callers skip per-message evaluation and lets the loader check ids.
    pub fn as_constant(&self) -> Option<&Value> {
        match &*self.node {
            Node::Const(v) => Some(v),
            _ => None,
        }
    }

    /// Values this expression can produce that are known at load time: the
    /// constant itself, or the constant results of a conditional's branches.
    /// The loader uses it to check ids and types without evaluating.
    pub(crate) fn constant_outcomes(&self) -> Vec<&Value> {
        match &*self.node {
            Node::Const(v) => vec![v],
            Node::Cond(branches, otherwise) => branches
                .iter()
                .map(|(_, then)| then)
                .chain(std::iter::once(&**otherwise))
                .filter_map(|n| match n {
                    Node::Const(v) => Some(v),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The variables the expression reads, each once, in order of first
    /// use. The loader uses it to warn about a variable that a stage never
    /// has a value for (such an `if` would silently never match).
    pub fn variables(&self) -> Vec<Var> {
        let mut out = Vec::new();
        self.node.collect_vars(&mut out);
        out
    }

    /// Evaluates against `vars`. Never panics; type errors give [`Value::Null`].
    pub fn eval(&self, vars: &dyn Variables) -> Value {
        eval::eval(&self.node, vars)
    }

    /// Evaluates as a condition (see [`Value::is_truthy`]).
    pub fn eval_bool(&self, vars: &dyn Variables) -> bool {
        match &*self.node {
            Node::Const(v) => v.is_truthy(),
            node => eval::eval(node, vars).is_truthy(),
        }
    }

    /// Evaluates to text: strings as they are, integers and booleans written
    /// out; `None` for anything else (a route or queue name must be text).
    pub fn eval_string(&self, vars: &dyn Variables) -> Option<String> {
        match self.eval(vars) {
            Value::Str(s) => Some(s),
            Value::Int(i) => Some(i.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }

    /// Evaluates to a list of strings (e.g. DKIM signer names): a string gives
    /// a one-element list, non-string list items are skipped.
    pub fn eval_strings(&self, vars: &dyn Variables) -> Vec<String> {
        match self.eval(vars) {
            Value::Str(s) => vec![s],
            Value::List(items) => items
                .into_iter()
                .filter_map(|v| match v {
                    Value::Str(s) => Some(s),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Evaluates to one duration (e.g. `expire`); a one-element list counts.
    pub fn eval_duration(&self, vars: &dyn Variables) -> Option<Duration> {
        match self.eval(vars) {
            Value::Duration(d) => Some(d),
            Value::List(items) if items.len() == 1 => items[0].as_duration(),
            _ => None,
        }
    }

    /// Evaluates to a list of durations (e.g. `retry`, `notify`): a single
    /// duration gives a one-element list, non-duration items are skipped.
    pub fn eval_durations(&self, vars: &dyn Variables) -> Vec<Duration> {
        let collect = |v: &Value| match v {
            Value::Duration(d) => vec![*d],
            Value::List(items) => items.iter().filter_map(Value::as_duration).collect(),
            _ => Vec::new(),
        };
        match &*self.node {
            Node::Const(v) => collect(v),
            node => collect(&eval::eval(node, vars)),
        }
    }

    /// Evaluates to an integer (e.g. `max-attempts`, `priority`).
    pub fn eval_int(&self, vars: &dyn Variables) -> Option<i64> {
        match &*self.node {
            Node::Const(v) => v.as_int(),
            node => eval::eval(node, vars).as_int(),
        }
    }
}

/// Writes the expression back in source form (normalised spacing and
/// parentheses), so logs and `ferrymail check` can show what was understood.
impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.node.fmt_prec(f, 0)
    }
}

impl fmt::Debug for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Expr({self})")
    }
}
