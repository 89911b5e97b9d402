//! Table-driven tests of the expression language.

use std::time::Duration;

use super::*;

/// Variables for tests: a recipient at `slow.example` from 10.1.2.3.
struct Env;

impl Variables for Env {
    fn var(&self, v: Var) -> Value {
        match v {
            Var::Sender => "alice@example.org".into(),
            Var::SenderDomain => "example.org".into(),
            Var::Rcpt => "Bob@Slow.Example".into(),
            Var::RcptDomain => "slow.example".into(),
            Var::RemoteIp => "10.1.2.3".into(),
            Var::LocalPort => Value::Int(25),
            Var::AuthenticatedAs => Value::Null,
            Var::HeloDomain => "client.example.net".into(),
            Var::Priority => Value::Int(5),
            Var::Size => Value::Int(2048),
            Var::Queue => "default".into(),
            Var::Source => "smtp".into(),
            Var::RetryNum => Value::Int(3),
            Var::NotifyNum => Value::Int(0),
            Var::ExpiresIn => Value::Duration(Duration::from_secs(3600)),
            Var::LastError => "451 4.7.1 try later".into(),
            Var::Mx => "mx1.slow.example".into(),
        }
    }

    fn header(&self, name: &str) -> Option<String> {
        name.eq_ignore_ascii_case("X-Priority")
            .then(|| "urgent".to_string())
    }
}

fn mins(m: u64) -> Value {
    Value::Duration(Duration::from_secs(m * 60))
}

fn eval(text: &str) -> Value {
    Expr::parse(text)
        .unwrap_or_else(|e| panic!("{text}: {e}"))
        .eval(&Env)
}

fn s(text: &str) -> Value {
    Value::Str(text.to_string())
}

#[test]
fn literals() {
    let table: Vec<(&str, Value)> = vec![
        ("42", Value::Int(42)),
        ("'text'", s("text")),
        ("\"double\"", s("double")),
        ("'it\\'s'", s("it's")),
        ("'a\\\\b'", s("a\\b")),
        ("true", Value::Bool(true)),
        ("false", Value::Bool(false)),
        ("30s", Value::Duration(Duration::from_secs(30))),
        ("2m", mins(2)),
        ("1h", mins(60)),
        ("3d", Value::Duration(Duration::from_secs(3 * 86400))),
        ("1w", Value::Duration(Duration::from_secs(7 * 86400))),
        ("250ms", Value::Duration(Duration::from_millis(250))),
        ("[]", Value::List(vec![])),
        ("[1, 'a']", Value::List(vec![Value::Int(1), s("a")])),
        ("[1, 2,]", Value::List(vec![Value::Int(1), Value::Int(2)])),
        (
            "[[1], []]",
            Value::List(vec![Value::List(vec![Value::Int(1)]), Value::List(vec![])]),
        ),
    ];
    for (text, want) in table {
        assert_eq!(eval(text), want, "{text}");
    }
}

#[test]
fn seed_schedule_values() {
    let retry = Expr::parse("[2m, 5m, 10m, 15m, 30m, 1h, 2h]").unwrap();
    let want: Vec<Duration> = [2, 5, 10, 15, 30, 60, 120]
        .iter()
        .map(|m| Duration::from_secs(m * 60))
        .collect();
    assert_eq!(retry.eval_durations(&()), want);
    assert!(retry.as_constant().is_some(), "constant lists fold");
    let notify = Expr::parse("[1d, 3d]").unwrap();
    assert_eq!(
        notify.eval_durations(&()),
        vec![Duration::from_secs(86400), Duration::from_secs(3 * 86400)]
    );
    let expire = Expr::parse("5d").unwrap();
    assert_eq!(
        expire.eval_duration(&()),
        Some(Duration::from_secs(5 * 86400))
    );
    assert_eq!(
        expire.eval_durations(&()),
        vec![Duration::from_secs(5 * 86400)],
        "a single duration is a one-element list"
    );
    assert_eq!(
        Expr::parse("['rsa']").unwrap().eval_strings(&()),
        vec!["rsa"]
    );
    assert_eq!(
        Expr::parse("'Mail Delivery Subsystem'")
            .unwrap()
            .eval_string(&())
            .as_deref(),
        Some("Mail Delivery Subsystem")
    );
}

#[test]
fn operators() {
    let table: Vec<(&str, Value)> = vec![
        // arithmetic
        ("1 + 2", Value::Int(3)),
        ("7 - 10", Value::Int(-3)),
        ("6 * 7", Value::Int(42)),
        ("7 / 2", Value::Int(3)),
        ("-5 + 2", Value::Int(-3)),
        ("--5", Value::Int(5)),
        ("1m + 30s", Value::Duration(Duration::from_secs(90))),
        ("1h - 30m", mins(30)),
        ("2m * 3", mins(6)),
        ("3 * 2m", mins(6)),
        ("1h / 4", mins(15)),
        ("'dom-' + rcpt_domain", s("dom-slow.example")),
        ("'attempt-' + retry_num", s("attempt-3")),
        ("[1] + [2]", Value::List(vec![Value::Int(1), Value::Int(2)])),
        // comparison
        ("1 == 1", Value::Bool(true)),
        ("1 != 1", Value::Bool(false)),
        ("1 < 2", Value::Bool(true)),
        ("2 <= 2", Value::Bool(true)),
        ("3 > 2", Value::Bool(true)),
        ("2 >= 3", Value::Bool(false)),
        ("'a' < 'b'", Value::Bool(true)),
        ("1h > 30m", Value::Bool(true)),
        ("expires_in <= 1h", Value::Bool(true)),
        ("'A' == 'a'", Value::Bool(false)),
        ("rcpt_domain == 'slow.example'", Value::Bool(true)),
        ("[1, 2] == [1, 2]", Value::Bool(true)),
        // logic
        ("true && false", Value::Bool(false)),
        ("true || false", Value::Bool(true)),
        ("!true", Value::Bool(false)),
        ("!0", Value::Bool(true)),
        ("!''", Value::Bool(true)),
        ("![]", Value::Bool(true)),
        ("!authenticated_as", Value::Bool(true)),
        ("1 && 'x'", Value::Bool(true)),
        ("0 || ''", Value::Bool(false)),
    ];
    for (text, want) in table {
        assert_eq!(eval(text), want, "{text}");
    }
}

#[test]
fn precedence() {
    let table: Vec<(&str, Value)> = vec![
        ("1 + 2 * 3", Value::Int(7)),
        ("(1 + 2) * 3", Value::Int(9)),
        ("10 - 4 - 3", Value::Int(3)),
        ("100 / 10 / 5", Value::Int(2)),
        ("2 * 3 + 4 * 5", Value::Int(26)),
        ("1 + 2 == 3", Value::Bool(true)),
        ("1 < 2 == true", Value::Bool(true)),
        ("true || false && false", Value::Bool(true)),
        ("(true || false) && false", Value::Bool(false)),
        ("!false && false", Value::Bool(false)),
        ("!(false && false)", Value::Bool(true)),
        ("-2 * 3", Value::Int(-6)),
        (
            "size > 1000 && rcpt_domain == 'slow.example'",
            Value::Bool(true),
        ),
        ("priority > 3 || size > 1000000 && false", Value::Bool(true)),
    ];
    for (text, want) in table {
        assert_eq!(eval(text), want, "{text}");
    }
}

#[test]
fn type_errors_are_null_or_false_never_panics() {
    let table: Vec<(&str, Value)> = vec![
        ("'a' - 1", Value::Null),
        ("'a' * 2", Value::Null),
        ("1 / 0", Value::Null),
        ("9223372036854775807 + 1", Value::Null),
        ("-9223372036854775807 - 2", Value::Null),
        ("1m - 2m", Value::Null),
        ("1m / 0", Value::Null),
        ("1m * -1", Value::Null),
        ("'a' < 1", Value::Null),
        ("'1' == 1", Value::Bool(false)),
        ("'1' != 1", Value::Bool(true)),
        ("1m == 60", Value::Bool(false)),
        ("-'a'", Value::Null),
        ("lower(5)", Value::Null),
        ("starts_with(1, 'a')", Value::Null),
        ("in_network(5, '10.0.0.0/8')", Value::Null),
        ("in_network(remote_ip, rcpt)", Value::Null),
        ("is_loopback('not an ip')", Value::Null),
        ("header(5)", Value::Null),
    ];
    for (text, want) in table {
        assert_eq!(eval(text), want, "{text}");
    }
}

#[test]
fn functions() {
    let table: Vec<(&str, Value)> = vec![
        ("header('X-Priority')", s("urgent")),
        ("header('x-priority') == 'urgent'", Value::Bool(true)),
        ("header('Missing')", Value::Null),
        ("contains(rcpt, 'Slow')", Value::Bool(true)),
        ("contains(rcpt, 'slow')", Value::Bool(false)),
        ("contains(['a', 'b'], 'b')", Value::Bool(true)),
        ("contains(['a', 'b'], 'c')", Value::Bool(false)),
        ("contains([1, 2], 2)", Value::Bool(true)),
        ("starts_with(sender, 'alice@')", Value::Bool(true)),
        ("starts_with(sender, 'bob@')", Value::Bool(false)),
        ("ends_with(rcpt_domain, '.example')", Value::Bool(true)),
        ("ends_with(rcpt_domain, '.org')", Value::Bool(false)),
        ("lower(rcpt)", s("bob@slow.example")),
        ("upper('MiXed')", s("MIXED")),
        ("is_empty('')", Value::Bool(true)),
        ("is_empty([])", Value::Bool(true)),
        ("is_empty(authenticated_as)", Value::Bool(true)),
        ("is_empty(sender)", Value::Bool(false)),
        ("is_empty(0)", Value::Bool(false)),
        ("in_network(remote_ip, '10.0.0.0/8')", Value::Bool(true)),
        ("in_network(remote_ip, '10.1.2.0/24')", Value::Bool(true)),
        ("in_network(remote_ip, '10.1.3.0/24')", Value::Bool(false)),
        (
            "in_network(remote_ip, '192.168.0.0/16')",
            Value::Bool(false),
        ),
        ("in_network(remote_ip, '0.0.0.0/0')", Value::Bool(true)),
        ("in_network(remote_ip, '10.1.2.3')", Value::Bool(true)),
        (
            "in_network('2001:db8::1', '2001:db8::/32')",
            Value::Bool(true),
        ),
        (
            "in_network('2001:db9::1', '2001:db8::/32')",
            Value::Bool(false),
        ),
        ("in_network('::1', '::/0')", Value::Bool(true)),
        // One IPv6 host: a /128 mask is all 128 bits (it overflowed to none).
        ("in_network('::1', '::1')", Value::Bool(true)),
        ("in_network('2001:db8::9', '::1')", Value::Bool(false)),
        (
            "in_network('2001:db8::5', '2001:db8::5/128')",
            Value::Bool(true),
        ),
        (
            "in_network('2001:db8::4', '2001:db8::5/128')",
            Value::Bool(false),
        ),
        (
            "in_network('2001:db8::4', '2001:db8::5/127')",
            Value::Bool(true),
        ),
        (
            "in_network('2001:db8::6', '2001:db8::5/127')",
            Value::Bool(false),
        ),
        (
            "in_network('10.1.2.3', '2001:db8::/32')",
            Value::Bool(false),
        ),
        (
            "in_network('::ffff:10.1.2.3', '10.0.0.0/8')",
            Value::Bool(true),
        ),
        // An IPv4-mapped network is the IPv4 network it maps: a bare
        // mapped address is one host, not every IPv4 client.
        (
            "in_network('192.0.2.99', '::ffff:10.1.2.3')",
            Value::Bool(false),
        ),
        (
            "in_network(remote_ip, '::ffff:10.1.2.3')",
            Value::Bool(true),
        ),
        (
            "in_network('::ffff:10.1.2.4', '::ffff:10.1.2.3/128')",
            Value::Bool(false),
        ),
        (
            "in_network('10.200.0.1', '::ffff:10.0.0.0/104')",
            Value::Bool(true),
        ),
        (
            "in_network('11.0.0.1', '::ffff:10.0.0.0/104')",
            Value::Bool(false),
        ),
        ("in_network('192.0.2.1', '::/0')", Value::Bool(false)),
        (
            "in_network(remote_ip, '10.0.0.0/' + '8')",
            Value::Bool(true),
        ),
        ("is_loopback('127.0.0.1')", Value::Bool(true)),
        ("is_loopback('127.8.9.10')", Value::Bool(true)),
        ("is_loopback('::1')", Value::Bool(true)),
        ("is_loopback('::ffff:127.0.0.1')", Value::Bool(true)),
        ("is_loopback(remote_ip)", Value::Bool(false)),
    ];
    for (text, want) in table {
        assert_eq!(eval(text), want, "{text}");
    }
}

#[test]
fn every_variable_resolves() {
    for v in Var::ALL {
        let e = Expr::parse(v.name()).unwrap();
        assert_eq!(e.eval(&Env), Env.var(*v), "{v}");
        assert_eq!(Var::from_name(v.name()), Some(*v));
        assert_eq!(e.eval(&()), Value::Null, "() gives Null for {v}");
    }
    assert_eq!(Var::ALL.len(), 17);
}

#[test]
fn conditional() {
    let e = Expr::conditional(
        vec![
            (
                Expr::parse("rcpt_domain == 'fast.example'").unwrap(),
                Expr::parse("[1m]").unwrap(),
            ),
            (
                Expr::parse("rcpt_domain == 'slow.example'").unwrap(),
                Expr::parse("[10m, 1h]").unwrap(),
            ),
            (Expr::parse("true").unwrap(), Expr::parse("[5m]").unwrap()),
        ],
        Expr::parse("[2m, 5m, 10m]").unwrap(),
    )
    .unwrap();
    assert_eq!(
        e.eval_durations(&Env),
        vec![Duration::from_secs(600), Duration::from_secs(3600)],
        "first match wins"
    );
    assert_eq!(
        e.eval_durations(&()),
        vec![Duration::from_secs(300)],
        "later branches when earlier are false"
    );
    let only_else = Expr::conditional(vec![], Expr::parse("7").unwrap()).unwrap();
    assert_eq!(only_else.eval_int(&Env), Some(7));
    let e = Expr::conditional(
        vec![(Expr::parse("false").unwrap(), Expr::parse("1").unwrap())],
        Expr::parse("2").unwrap(),
    )
    .unwrap();
    assert_eq!(e.eval_int(&Env), Some(2), "else when nothing matches");
}

#[test]
fn helpers() {
    assert!(Expr::parse("1").unwrap().eval_bool(&()));
    assert!(!Expr::parse("''").unwrap().eval_bool(&()));
    assert_eq!(Expr::parse("42").unwrap().eval_int(&()), Some(42));
    assert_eq!(Expr::parse("'x'").unwrap().eval_int(&()), None);
    assert_eq!(
        Expr::parse("42").unwrap().eval_string(&()).as_deref(),
        Some("42")
    );
    assert_eq!(
        Expr::parse("[1m]").unwrap().eval_duration(&()),
        Some(Duration::from_secs(60))
    );
    assert_eq!(Expr::parse("'x'").unwrap().eval_duration(&()), None);
    assert_eq!(Expr::parse("'x'").unwrap().eval_durations(&()), vec![]);
    assert_eq!(
        Expr::parse("[1m, 'x', 2m]").unwrap().eval_durations(&()),
        vec![Duration::from_secs(60), Duration::from_secs(120)]
    );
    assert_eq!(Expr::constant(Value::Int(3)).eval(&()), Value::Int(3));
    assert_eq!(Expr::parse("'a'").unwrap().eval_strings(&()), vec!["a"]);
}

#[test]
fn folding() {
    assert_eq!(
        Expr::parse("1 + 2 * 3").unwrap().as_constant(),
        Some(&Value::Int(7))
    );
    assert_eq!(
        Expr::parse("lower('ABC')").unwrap().as_constant(),
        Some(&s("abc"))
    );
    assert!(Expr::parse("rcpt + 'x'").unwrap().as_constant().is_none());
    assert!(
        Expr::parse("header('X')").unwrap().as_constant().is_none(),
        "header() reads the message and never folds"
    );
}

#[test]
fn display_round_trips() {
    for text in [
        "rcpt_domain == 'slow.example'",
        "(1 + rcpt) * size",
        "size - (priority - 1)",
        "!(sender == '') && is_loopback(remote_ip)",
        "in_network(remote_ip, '10.0.0.0/8')",
        "[rcpt, 2m, 'a\\'b']",
        "contains(lower(rcpt), header('X'))",
        "-size",
    ] {
        let e = Expr::parse(text).unwrap();
        let again = Expr::parse(&e.to_string()).unwrap_or_else(|err| panic!("{e}: {err}"));
        assert_eq!(e, again, "{text} -> {e}");
    }
    assert_eq!(
        Expr::parse("(a_b)").err().map(|e| e.column),
        Some(2),
        "column of the unknown name"
    );
}

#[test]
fn parse_errors() {
    let table: Vec<(&str, &str)> = vec![
        ("", "empty expression (column 1)"),
        ("   ", "empty expression (column 1)"),
        (
            "rcpt_domian == 'x'",
            "unknown variable 'rcpt_domian'; did you mean 'rcpt_domain'? (column 1)",
        ),
        (
            "1 + sendr",
            "unknown variable 'sendr'; did you mean 'sender'? (column 5)",
        ),
        (
            "example",
            "unknown variable 'example'; text must be quoted, e.g. 'example.org' (column 1)",
        ),
        (
            "lowr(rcpt)",
            "unknown function 'lowr'; did you mean 'lower'? (column 1)",
        ),
        (
            "frobnicate(rcpt)",
            "unknown function 'frobnicate'; functions are header, contains, starts_with, ends_with, lower, upper, is_empty, in_network, is_loopback (column 1)",
        ),
        (
            "lower",
            "unknown variable 'lower'; 'lower' is a function: call it as lower(...) (column 1)",
        ),
        (
            "lower(rcpt, sender)",
            "lower() takes 1 argument, found 2 (column 1)",
        ),
        (
            "contains(rcpt)",
            "contains() takes 2 arguments, found 1 (column 1)",
        ),
        (
            "in_network(remote_ip, '10.0.0.0/33')",
            "in_network(): '10.0.0.0/33' is not a network; write e.g. '10.0.0.0/8' or '2001:db8::/32' (column 1)",
        ),
        (
            "in_network(remote_ip, '::ffff:0:0/95')",
            "in_network(): '::ffff:0:0/95' is not a network; write e.g. '10.0.0.0/8' or '2001:db8::/32' (column 1)",
        ),
        (
            "in_network(remote_ip, 5)",
            "in_network(): 5 is not a network; write e.g. '10.0.0.0/8' or '2001:db8::/32' (column 1)",
        ),
        (
            "rcpt = 'x'",
            "'=' is not an operator; did you mean '=='? (column 6)",
        ),
        (
            "a & b",
            "'&' is not an operator; did you mean '&&'? (column 3)",
        ),
        ("'open", "unterminated string (column 1)"),
        ("'bad \\q'", "unknown escape '\\q' in string (column 6)"),
        (
            "5x",
            "invalid duration '5x': unknown unit 'x'; use a number followed by ms, s, m, h, d or w, e.g. 30s (column 1)",
        ),
        (
            "(1 + 2",
            "expected ')' to close '(', found end of expression (column 7)",
        ),
        (
            "[1, 2",
            "expected ',' or ']' in list, found end of expression (column 6)",
        ),
        (
            "1 2",
            "unexpected number 2 after a complete expression (column 3)",
        ),
        (
            "1 +",
            "expected a value, found end of expression (column 4)",
        ),
        ("#", "unexpected character '#' (column 1)"),
        (
            "99999999999999999999",
            "number 99999999999999999999 is too large (column 1)",
        ),
    ];
    for (text, want) in table {
        let got = Expr::parse(text).map(|e| e.to_string());
        assert_eq!(
            got.map_err(|e| e.to_string()),
            Err(want.to_string()),
            "{text}"
        );
    }
}

#[test]
fn nesting_is_bounded() {
    let deep = format!("{}1{}", "(".repeat(1000), ")".repeat(1000));
    assert!(
        Expr::parse(&deep)
            .unwrap_err()
            .message
            .contains("nests deeper")
    );
    let deep = format!("{}1{}", "[".repeat(1000), "]".repeat(1000));
    assert!(Expr::parse(&deep).is_err());
    let nots = format!("{}rcpt", "!".repeat(1000));
    assert!(Expr::parse(&nots).is_err());
    let fine = format!("{}1{}", "(".repeat(30), ")".repeat(30));
    assert_eq!(Expr::parse(&fine).unwrap().eval(&()), Value::Int(1));
    // Long flat chains fold or stay shallow enough to evaluate.
    let chain = vec!["1"; 5000].join(" + ");
    assert_eq!(Expr::parse(&chain).unwrap().eval(&()), Value::Int(5000));
    let chain = vec!["size"; 50].join(" + ");
    assert_eq!(
        Expr::parse(&chain).unwrap().eval(&Env),
        Value::Int(50 * 2048)
    );
    let chain = vec!["size"; 500].join(" + ");
    assert!(
        Expr::parse(&chain).is_err(),
        "deep variable chains are refused"
    );
}

/// Fuzz-ish property: no input makes the parser (or evaluation of what it
/// accepts) panic. Inputs are every string of up to three tokens from an
/// alphabet of expression fragments, plus random byte soup from a fixed-seed
/// generator.
#[test]
fn parsing_never_panics() {
    let alphabet = [
        "",
        " ",
        "1",
        "0",
        "-",
        "+",
        "*",
        "/",
        "!",
        "=",
        "==",
        "!=",
        "<",
        ">=",
        "&&",
        "||",
        "(",
        ")",
        "[",
        "]",
        ",",
        "'",
        "\"",
        "\\",
        "'a'",
        "2m",
        "5d",
        "9999999999999999999",
        "ms",
        "rcpt",
        "remote_ip",
        "header(",
        "in_network(",
        "lower(",
        "contains(",
        "is_empty",
        "true",
        "é",
        "%",
        "\u{0}",
    ];
    let mut count = 0;
    for a in alphabet {
        for b in alphabet {
            for c in alphabet {
                let text = format!("{a}{b}{c}");
                if let Ok(e) = Expr::parse(&text) {
                    let _ = e.eval(&Env);
                    let _ = e.eval(&());
                    let _ = e.to_string();
                }
                count += 1;
            }
        }
    }
    // xorshift soup from printable ASCII and a few multibyte characters.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let chars: Vec<char> = "abcdefghijklmnopqrstuvwxyz_0123456789 '\"\\()[],+-*/!=<>&|.%{}:éß€"
        .chars()
        .collect();
    for _ in 0..20_000 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let len = (seed % 24) as usize;
        let text: String = (0..len)
            .map(|i| chars[((seed >> (i % 8 * 8)) as usize + i * 7) % chars.len()])
            .collect();
        if let Ok(e) = Expr::parse(&text) {
            let _ = e.eval(&Env);
        }
        count += 1;
    }
    assert!(count > 80_000);
}

#[test]
fn expr_is_shareable() {
    fn assert_traits<T: Clone + std::fmt::Debug + Send + Sync + 'static>() {}
    assert_traits::<Expr>();
    assert_traits::<Value>();
    let e = Expr::parse("rcpt_domain == 'slow.example'").unwrap();
    assert_eq!(format!("{e:?}"), "Expr(rcpt_domain == 'slow.example')");
}

#[test]
fn value_display_and_truthiness() {
    assert_eq!(
        Value::List(vec![
            s("it's"),
            Value::Int(1),
            mins(90),
            Value::Bool(true),
            Value::Null
        ])
        .to_string(),
        "['it\\'s', 1, 90m, true, null]"
    );
    for falsy in [
        Value::Null,
        Value::Bool(false),
        Value::Int(0),
        s(""),
        Value::List(vec![]),
        Value::Duration(Duration::ZERO),
    ] {
        assert!(!falsy.is_truthy(), "{falsy}");
    }
    for truthy in [
        Value::Bool(true),
        Value::Int(-1),
        s("x"),
        Value::List(vec![Value::Null]),
        mins(1),
    ] {
        assert!(truthy.is_truthy(), "{truthy}");
    }
    assert_eq!(Value::from(Some("x")), s("x"));
    assert_eq!(Value::from(None::<String>), Value::Null);
    assert_eq!(
        Value::from("127.0.0.1".parse::<std::net::IpAddr>().unwrap()),
        s("127.0.0.1")
    );
}

/// Every prefix length of both families against a bit-by-bit reference:
/// an address is in a network when its first `prefix` bits are the
/// network's. (A /128 once overflowed the mask and matched everything.)
#[test]
fn in_network_agrees_with_a_bit_by_bit_reference_at_every_prefix() {
    fn bits(ip: IpAddr) -> Vec<bool> {
        let bytes = match ip {
            IpAddr::V4(v4) => v4.octets().to_vec(),
            IpAddr::V6(v6) => v6.octets().to_vec(),
        };
        bytes
            .iter()
            .flat_map(|b| (0..8).rev().map(move |i| b >> i & 1 == 1))
            .collect()
    }
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for round in 0..2_000 {
        let v6 = round % 2 == 1;
        let random_ip = |next: &mut dyn FnMut() -> u64| -> IpAddr {
            if v6 {
                IpAddr::V6(((u128::from(next()) << 64) | u128::from(next())).into())
            } else {
                IpAddr::V4((next() as u32).into())
            }
        };
        let net = random_ip(&mut next);
        let width = if v6 { 128 } else { 32 };
        let prefix = (next() % (width + 1)) as u8;
        // Half the candidates share the network's leading bits, so that
        // matches are tested as often as mismatches.
        let mut ip = random_ip(&mut next);
        if next() % 2 == 0 {
            let (n, i) = (bits(net), bits(ip));
            let keep = prefix as usize + (next() % 3) as usize;
            let merged: Vec<bool> = (0..n.len())
                .map(|k| if k < keep { n[k] } else { i[k] })
                .collect();
            let mut bytes = merged
                .chunks(8)
                .map(|c| c.iter().fold(0u8, |b, bit| b << 1 | u8::from(*bit)));
            ip = if v6 {
                IpAddr::V6(std::array::from_fn::<u8, 16, _>(|_| bytes.next().unwrap()).into())
            } else {
                IpAddr::V4(std::array::from_fn::<u8, 4, _>(|_| bytes.next().unwrap()).into())
            };
        }
        let cidr = Cidr::parse(&format!("{net}/{prefix}")).unwrap();
        let expected = bits(net)[..prefix as usize] == bits(ip)[..prefix as usize];
        assert_eq!(cidr.contains(ip), expected, "{ip} in {net}/{prefix}");
    }
}
