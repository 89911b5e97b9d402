//! Typed access to a span-preserving TOML document. Every getter records a
//! located [`ConfigError`] instead of returning early, so one run reports every
//! problem in the file, and every accessed key is checked against the keys its
//! section knows, with a did-you-mean for the near misses.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeString, DeTable, DeValue};

use crate::error::{ConfigError, Problem};
use crate::expr::{Expr, Value};
use crate::{macros, suggest, units};

/// A TOML value with its byte span.
pub(crate) type Val<'i> = Spanned<DeValue<'i>>;

/// One table of the document, named by its dotted path.
pub(crate) struct Section<'a, 'i> {
    /// Dotted path (`queue.schedule`); empty for the top level.
    pub name: String,
    /// The table.
    pub table: &'a DeTable<'i>,
    /// Span of the key naming the table (in its `[header]`), for errors about
    /// the table as a whole.
    pub span: Range<usize>,
}

impl<'a, 'i> Section<'a, 'i> {
    /// How the section is named in messages: `[queue.schedule]`.
    pub fn display(&self) -> String {
        if self.name.is_empty() {
            "the top-level table".to_string()
        } else {
            format!("[{}]", self.name)
        }
    }

    /// The full dotted path of `key` in this section.
    pub fn path(&self, key: &str) -> String {
        if self.name.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.name)
        }
    }

    /// The key (with its span) and value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<(&'a Spanned<DeString<'i>>, &'a Val<'i>)> {
        self.table.get_key_value(key)
    }

    /// Whether `key` is present.
    pub fn has(&self, key: &str) -> bool {
        self.table.contains_key(key)
    }

    /// The sub-table under `key` as a section, without checks (see [`Reader::sub`]).
    fn child(&self, key: &'a Spanned<DeString<'i>>, table: &'a DeTable<'i>) -> Section<'a, 'i> {
        Section {
            name: self.path(&quote_key(key.get_ref())),
            table,
            span: key.span(),
        }
    }
}

/// Writes a key as TOML would need it in a dotted path (`"a.b"` for ids with dots).
fn quote_key(key: &str) -> String {
    if !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        key.to_string()
    } else {
        format!("{key:?}")
    }
}

/// How a TOML value's type is named in messages.
pub(crate) fn describe(v: &DeValue<'_>) -> String {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
    .to_string()
}

/// Accumulates errors while reading one document.
pub(crate) struct Reader {
    path: PathBuf,
    base_dir: PathBuf,
    line_starts: Vec<usize>,
    /// Errors found so far, in discovery order.
    pub errors: Vec<ConfigError>,
    /// Warnings found so far.
    pub warnings: Vec<ConfigError>,
    /// A `%{file:}%` that cannot be read or an `%{env:}%` that is not set
    /// leaves its value out instead of being an error: what a client command
    /// needs, run by a user who may not read the server's secrets (see
    /// [`crate::load_for_client`]).
    pub skip_unreadable: bool,
}

impl Reader {
    pub fn new(text: &str, path: &Path) -> Reader {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        let base_dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        Reader {
            path: path.to_path_buf(),
            base_dir,
            line_starts,
            errors: Vec::new(),
            warnings: Vec::new(),
            skip_unreadable: false,
        }
    }

    /// 1-based line of a byte offset.
    pub fn line(&self, offset: usize) -> usize {
        self.line_starts.partition_point(|&start| start <= offset)
    }

    /// A located error.
    pub fn located(&self, span: &Range<usize>, problem: Problem) -> ConfigError {
        ConfigError {
            path: self.path.clone(),
            line: self.line(span.start).max(1),
            problem: Box::new(problem),
        }
    }

    /// Records an error at `span`.
    pub fn error(&mut self, span: &Range<usize>, problem: Problem) {
        let e = self.located(span, problem);
        self.errors.push(e);
    }

    /// Records that `sec`'s `key` has a value that is not allowed, `why`
    /// saying what is wrong, at the value's line.
    pub fn invalid(&mut self, sec: &Section, key: &str, why: String) {
        let span = self.value_span(sec, key);
        self.error(&span, Problem::Invalid(why));
    }

    /// Records a warning about `sec`'s `key`, at the value's line.
    pub fn warn_value(&mut self, sec: &Section, key: &str, text: String) {
        let span = self.value_span(sec, key);
        self.warn(&span, text);
    }

    /// Records a warning at `span`.
    pub fn warn(&mut self, span: &Range<usize>, text: String) {
        let e = self.located(span, Problem::Invalid(text));
        self.warnings.push(e);
    }

    fn wrong_type(&mut self, sec: &Section, key: &str, v: &Val, expected: &'static str) {
        self.error(
            &v.span(),
            Problem::WrongType {
                key: sec.path(key),
                expected,
                found: describe(v.get_ref()),
            },
        );
    }

    /// Reports every key of `sec` that is not in `fields`. With
    /// `named_children`, keys holding tables are named children (`[queue.route.<id>]`)
    /// and are accepted; a plain value that is not a field is still unknown.
    pub fn check_keys(&mut self, sec: &Section, fields: &[&str], named_children: bool) {
        for (key, value) in sec.table.iter() {
            let name = key.get_ref().as_ref();
            if fields.contains(&name) {
                continue;
            }
            let is_table = matches!(value.get_ref(), DeValue::Table(_));
            if named_children && is_table {
                continue;
            }
            if named_children && fields.is_empty() {
                self.error(
                    &key.span(),
                    Problem::WrongType {
                        key: sec.path(name),
                        expected: "a table",
                        found: describe(value.get_ref()),
                    },
                );
                continue;
            }
            self.error(
                &key.span(),
                Problem::UnknownKey {
                    key: name.to_string(),
                    section: sec.display(),
                    suggestion: suggest(name, fields.iter().copied()).map(str::to_string),
                },
            );
        }
    }

    /// The named children of a section that mixes fields and `<id>` tables:
    /// every key not in `fields` whose value is a table, in file order.
    pub fn children<'a, 'i>(
        &mut self,
        sec: &Section<'a, 'i>,
        fields: &[&str],
    ) -> Vec<(String, Section<'a, 'i>)> {
        let mut out: Vec<_> = sec
            .table
            .iter()
            .filter(|(k, _)| !fields.contains(&k.get_ref().as_ref()))
            .filter_map(|(k, v)| match v.get_ref() {
                DeValue::Table(t) => Some((k.get_ref().to_string(), sec.child(k, t))),
                _ => None,
            })
            .collect();
        out.sort_by_key(|(_, s)| s.span.start);
        out
    }

    /// The sub-table `key`, or `None` if absent or not a table (an error).
    pub fn sub<'a, 'i>(&mut self, sec: &Section<'a, 'i>, key: &str) -> Option<Section<'a, 'i>> {
        let (k, v) = sec.get(key)?;
        match v.get_ref() {
            DeValue::Table(t) => Some(sec.child(k, t)),
            _ => {
                self.wrong_type(sec, key, v, "a table");
                None
            }
        }
    }

    /// An array of tables (`[[sec.key]]`), each as a section named
    /// `sec.key[i]`; a wrong type is recorded and gives none.
    pub fn tables<'a, 'i>(&mut self, sec: &Section<'a, 'i>, key: &str) -> Vec<Section<'a, 'i>> {
        let Some((k, v)) = sec.get(key) else {
            return Vec::new();
        };
        let DeValue::Array(items) = v.get_ref() else {
            self.wrong_type(sec, key, v, "an array of tables ([[...]])");
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            match item.get_ref() {
                DeValue::Table(t) => out.push(Section {
                    name: format!("{}[{i}]", sec.path(&quote_key(k.get_ref()))),
                    table: t,
                    span: item.span(),
                }),
                _ => self.wrong_type(sec, key, item, "a table (in this array)"),
            }
        }
        out
    }

    /// Records a missing-key error when `key` is absent; for required keys.
    pub fn require(&mut self, sec: &Section, key: &str) -> bool {
        if sec.has(key) {
            return true;
        }
        self.error(
            &sec.span,
            Problem::Missing {
                key: key.to_string(),
                section: sec.display(),
            },
        );
        false
    }

    /// Expands macros in a string value.
    pub fn expand(&mut self, s: &str, span: &Range<usize>) -> Option<String> {
        match macros::expand(s, &self.base_dir) {
            Ok(v) => Some(v.into_owned()),
            Err(Problem::MacroFile { .. } | Problem::EnvMissing { .. }) if self.skip_unreadable => {
                None
            }
            Err(problem) => {
                self.error(span, problem);
                None
            }
        }
    }

    /// A string value, macros expanded.
    pub fn string(&mut self, sec: &Section, key: &str) -> Option<String> {
        let (_, v) = sec.get(key)?;
        match v.get_ref() {
            DeValue::String(s) => self.expand(s, &v.span()),
            _ => {
                self.wrong_type(sec, key, v, "a string");
                None
            }
        }
    }

    /// A string value that must be present.
    pub fn required_string(&mut self, sec: &Section, key: &str) -> Option<String> {
        if !self.require(sec, key) {
            return None;
        }
        self.string(sec, key)
    }

    /// A string that must not be empty after macro expansion.
    pub fn nonempty_string(&mut self, sec: &Section, key: &str) -> Option<String> {
        let s = self.string(sec, key)?;
        if s.trim().is_empty() {
            let span = self.value_span(sec, key);
            self.error(
                &span,
                Problem::Invalid(format!("'{}' must not be empty", sec.path(key))),
            );
            return None;
        }
        Some(s)
    }

    /// Span of `key`'s value (or of the section if absent).
    pub fn value_span(&self, sec: &Section, key: &str) -> Range<usize> {
        sec.get(key).map_or(sec.span.clone(), |(_, v)| v.span())
    }

    /// One string or an array of strings, each with its span.
    pub fn strings(&mut self, sec: &Section, key: &str) -> Option<Vec<(String, Range<usize>)>> {
        let (_, v) = sec.get(key)?;
        match v.get_ref() {
            DeValue::String(s) => {
                let s = self.expand(s, &v.span())?;
                Some(vec![(s, v.span())])
            }
            DeValue::Array(items) => {
                let mut out = Vec::new();
                let mut ok = true;
                for item in items.iter() {
                    match item.get_ref() {
                        DeValue::String(s) => match self.expand(s, &item.span()) {
                            Some(s) => out.push((s, item.span())),
                            None => ok = false,
                        },
                        _ => {
                            self.wrong_type(sec, key, item, "a string (in this array)");
                            ok = false;
                        }
                    }
                }
                ok.then_some(out)
            }
            _ => {
                self.wrong_type(sec, key, v, "a string or an array of strings");
                None
            }
        }
    }

    /// A boolean value.
    pub fn bool(&mut self, sec: &Section, key: &str) -> Option<bool> {
        let (_, v) = sec.get(key)?;
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            _ => {
                self.wrong_type(sec, key, v, "a boolean (true or false)");
                None
            }
        }
    }

    /// An integer within `min..=max`.
    pub fn int(&mut self, sec: &Section, key: &str, min: i64, max: i64) -> Option<i64> {
        let (_, v) = sec.get(key)?;
        let DeValue::Integer(i) = v.get_ref() else {
            self.wrong_type(sec, key, v, "an integer");
            return None;
        };
        match i64::from_str_radix(i.as_str(), i.radix()) {
            Ok(n) if (min..=max).contains(&n) => Some(n),
            _ => {
                let range = if max == i64::MAX {
                    format!("at least {min}")
                } else {
                    format!("between {min} and {max}")
                };
                self.error(
                    &v.span(),
                    Problem::Invalid(format!(
                        "'{}' must be {range}, found {}",
                        sec.path(key),
                        i.as_str()
                    )),
                );
                None
            }
        }
    }

    /// A non-negative integer of at least `min`, as `usize`.
    pub fn usize(&mut self, sec: &Section, key: &str, min: usize) -> Option<usize> {
        let min = i64::try_from(min).unwrap_or(i64::MAX);
        self.int(sec, key, min, i64::MAX)
            .and_then(|n| usize::try_from(n).ok())
    }

    /// A duration string such as `"30s"`.
    pub fn duration(&mut self, sec: &Section, key: &str) -> Option<Duration> {
        let (_, v) = sec.get(key)?;
        let DeValue::String(s) = v.get_ref() else {
            self.wrong_type(sec, key, v, "a duration string such as \"30s\"");
            return None;
        };
        let s = self.expand(s, &v.span())?;
        match units::parse_duration(&s) {
            Ok(d) => Some(d),
            Err(reason) => {
                self.error(
                    &v.span(),
                    Problem::BadDuration {
                        key: sec.path(key),
                        value: s,
                        reason,
                    },
                );
                None
            }
        }
    }

    /// A byte size: an integer, or a string such as `"50M"`.
    pub fn size(&mut self, sec: &Section, key: &str) -> Option<u64> {
        let (_, v) = sec.get(key)?;
        let parsed = match v.get_ref() {
            DeValue::Integer(_) => {
                return self
                    .int(sec, key, 0, i64::MAX)
                    .and_then(|n| u64::try_from(n).ok());
            }
            DeValue::String(s) => {
                let s = self.expand(s, &v.span())?;
                units::parse_size(&s).map_err(|e| (s, e))
            }
            _ => {
                self.wrong_type(sec, key, v, "a size (bytes, or a string such as \"50M\")");
                return None;
            }
        };
        match parsed {
            Ok(n) => Some(n),
            Err((s, e)) => {
                self.error(
                    &v.span(),
                    Problem::Invalid(format!("invalid size '{s}' for '{}': {e}", sec.path(key))),
                );
                None
            }
        }
    }

    /// A string that must be one of `choices`' names.
    pub fn choice<T: Copy>(
        &mut self,
        sec: &Section,
        key: &str,
        choices: &[(&'static str, T)],
    ) -> Option<T> {
        let s = self.string(sec, key)?;
        if let Some((_, t)) = choices.iter().find(|(name, _)| *name == s) {
            return Some(*t);
        }
        let span = self.value_span(sec, key);
        let allowed: Vec<&'static str> = choices.iter().map(|(n, _)| *n).collect();
        self.error(
            &span,
            Problem::BadChoice {
                key: sec.path(key),
                suggestion: suggest(&s, allowed.iter().copied()).map(str::to_string),
                value: s,
                allowed,
            },
        );
        None
    }

    /// An expression: a string, a bare integer or boolean, an array of those
    /// (a list), or an `if/then/else` array of tables.
    pub fn expr(&mut self, sec: &Section, key: &str) -> Option<Expr> {
        let (_, v) = sec.get(key)?;
        self.expr_value(&sec.path(key), v, &[])
    }

    /// An expression whose values may also be written as bare `words`, as
    /// Stalwart writes its constants (`verify = "relaxed"`, `then =
    /// "strict"`): a value that is exactly one of them is that string.
    /// Conditions (`if`) are ordinary expressions. A bare word that is
    /// neither one of `words` nor a variable is refused as a bad choice,
    /// with a did-you-mean, rather than as an unknown variable.
    pub fn expr_words(&mut self, sec: &Section, key: &str, words: &[&'static str]) -> Option<Expr> {
        let (_, v) = sec.get(key)?;
        self.expr_value(&sec.path(key), v, words)
    }

    fn expr_value(&mut self, key: &str, v: &Val, words: &[&'static str]) -> Option<Expr> {
        match v.get_ref() {
            DeValue::String(s) => {
                let s = self.expand(s, &v.span())?;
                let bare = s.trim();
                if words.contains(&bare) {
                    return Some(Expr::constant(Value::Str(bare.to_string())));
                }
                let word_like = !bare.is_empty()
                    && bare
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b == b'-' || b == b'_');
                if !words.is_empty()
                    && word_like
                    && crate::expr::Var::from_name(bare).is_none()
                    && bare != "true"
                    && bare != "false"
                {
                    self.error(
                        &v.span(),
                        Problem::BadChoice {
                            key: key.to_string(),
                            suggestion: suggest(bare, words.iter().copied()).map(str::to_string),
                            value: bare.to_string(),
                            allowed: words.to_vec(),
                        },
                    );
                    return None;
                }
                match Expr::parse(&s) {
                    Ok(e) => Some(e),
                    Err(error) => {
                        self.error(
                            &v.span(),
                            Problem::BadExpr {
                                key: key.to_string(),
                                error,
                            },
                        );
                        None
                    }
                }
            }
            DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
                Ok(n) => Some(Expr::constant(Value::Int(n))),
                Err(_) => {
                    self.error(
                        &v.span(),
                        Problem::Invalid(format!(
                            "integer {} for '{key}' is too large",
                            i.as_str()
                        )),
                    );
                    None
                }
            },
            DeValue::Boolean(b) => Some(Expr::constant(Value::Bool(*b))),
            DeValue::Array(items)
                if !items.is_empty()
                    && items
                        .iter()
                        .all(|i| matches!(i.get_ref(), DeValue::Table(_))) =>
            {
                self.conditional(key, v, items, words)
            }
            DeValue::Array(items)
                if items
                    .iter()
                    .all(|i| !matches!(i.get_ref(), DeValue::Table(_))) =>
            {
                let mut out = Vec::with_capacity(items.len());
                for item in items.iter() {
                    out.push(self.expr_value(key, item, words));
                }
                let out: Option<Vec<Expr>> = out.into_iter().collect();
                self.lift(key, &v.span(), Expr::list(out?))
            }
            DeValue::Array(_) => {
                self.error(
                    &v.span(),
                    Problem::Invalid(format!(
                        "'{key}' mixes tables and values; an if/then/else array holds only tables"
                    )),
                );
                None
            }
            other => {
                self.error(
                    &v.span(),
                    Problem::WrongType {
                        key: key.to_string(),
                        expected: "an expression (a string, integer or boolean) or an if/then/else array",
                        found: describe(other),
                    },
                );
                None
            }
        }
    }

    fn lift(
        &mut self,
        key: &str,
        span: &Range<usize>,
        r: Result<Expr, crate::expr::ExprError>,
    ) -> Option<Expr> {
        match r {
            Ok(e) => Some(e),
            Err(error) => {
                self.error(
                    span,
                    Problem::BadExpr {
                        key: key.to_string(),
                        error,
                    },
                );
                None
            }
        }
    }

    /// `[ { if = "c", then = "a" }, ..., { else = "b" } ]`.
    fn conditional(
        &mut self,
        key: &str,
        whole: &Val,
        items: &[Val],
        words: &[&'static str],
    ) -> Option<Expr> {
        let mut branches = Vec::new();
        let mut otherwise = None;
        let mut ok = true;
        for (n, item) in items.iter().enumerate() {
            let DeValue::Table(t) = item.get_ref() else {
                continue;
            };
            let last = n + 1 == items.len();
            let sec = Section {
                name: format!("{key}[{n}]"),
                table: t,
                span: item.span(),
            };
            if let Some((k, _)) = sec.get("else") {
                if !last {
                    self.error(
                        &k.span(),
                        Problem::Invalid(format!(
                            "'else' in '{key}' must be in the last element of the array"
                        )),
                    );
                    ok = false;
                    continue;
                }
                self.check_keys(&sec, &["else"], false);
                let value = sec.get("else").map(|(_, v)| v)?;
                otherwise = self.expr_value(key, value, words);
                ok &= otherwise.is_some();
                continue;
            }
            self.check_keys(&sec, &["if", "then", "else"], false);
            let cond = sec.get("if").map(|(_, v)| v);
            let then = sec.get("then").map(|(_, v)| v);
            let (Some(cond), Some(then)) = (cond, then) else {
                self.error(
                    &item.span(),
                    Problem::Invalid(format!(
                        "each element of '{key}' needs both 'if' and 'then', except the last, which is {{ else = \"...\" }}"
                    )),
                );
                ok = false;
                continue;
            };
            let c = self.expr_value(key, cond, &[]);
            let t = self.expr_value(key, then, words);
            match (c, t) {
                (Some(c), Some(t)) => branches.push((c, t)),
                _ => ok = false,
            }
            if last {
                self.error(
                    &item.span(),
                    Problem::Invalid(format!(
                        "'{key}' must end with {{ else = \"...\" }}, the value when no condition holds"
                    )),
                );
                ok = false;
            }
        }
        if !ok {
            return None;
        }
        let otherwise = otherwise?;
        self.lift(key, &whole.span(), Expr::conditional(branches, otherwise))
    }
}
