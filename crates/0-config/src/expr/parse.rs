//! Lexer and precedence-climbing parser for expressions. Names are resolved
//! and variable-free sub-trees are folded here, once, at load time.

use super::{BinOp, Cidr, ExprError, Func, MAX_DEPTH, Node, UnOp, Value, Var, eval};
use crate::suggest;
use crate::units::duration_from_parts;

/// Binding strength of unary operators: tighter than any binary operator.
pub(crate) const UNARY_PREC: u8 = 7;

/// Binding strength of binary operators, loosest first (C-like).
pub(crate) fn precedence(op: BinOp) -> u8 {
    match op {
        BinOp::Or => 1,
        BinOp::And => 2,
        BinOp::Eq | BinOp::Ne => 3,
        BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => 4,
        BinOp::Add | BinOp::Sub => 5,
        BinOp::Mul | BinOp::Div => 6,
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Int(i64),
    Duration(std::time::Duration),
    Str(String),
    Ident(String),
    Bin(BinOp),
    Not,
    Minus,
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
    End,
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Tok::Int(i) => format!("number {i}"),
            Tok::Duration(d) => format!("duration {}", Value::Duration(*d)),
            Tok::Str(s) => format!("string {}", Value::Str(s.clone())),
            Tok::Ident(s) => format!("'{s}'"),
            Tok::Bin(op) => format!("'{}'", op.symbol()),
            Tok::Not => "'!'".into(),
            Tok::Minus => "'-'".into(),
            Tok::LParen => "'('".into(),
            Tok::RParen => "')'".into(),
            Tok::LBracket => "'['".into(),
            Tok::RBracket => "']'".into(),
            Tok::Comma => "','".into(),
            Tok::End => "end of expression".into(),
        }
    }
}

/// A token and the 1-based character column it starts at.
struct Spanned {
    tok: Tok,
    column: usize,
}

fn err(column: usize, message: impl Into<String>) -> ExprError {
    ExprError {
        column,
        message: message.into(),
    }
}

fn lex(text: &str) -> Result<Vec<Spanned>, ExprError> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let column = i + 1;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let two: String = chars[i..chars.len().min(i + 2)].iter().collect();
        let (tok, len) = match (c, two.as_str()) {
            (_, "==") => (Tok::Bin(BinOp::Eq), 2),
            (_, "!=") => (Tok::Bin(BinOp::Ne), 2),
            (_, "<=") => (Tok::Bin(BinOp::Le), 2),
            (_, ">=") => (Tok::Bin(BinOp::Ge), 2),
            (_, "&&") => (Tok::Bin(BinOp::And), 2),
            (_, "||") => (Tok::Bin(BinOp::Or), 2),
            ('<', _) => (Tok::Bin(BinOp::Lt), 1),
            ('>', _) => (Tok::Bin(BinOp::Gt), 1),
            ('+', _) => (Tok::Bin(BinOp::Add), 1),
            ('*', _) => (Tok::Bin(BinOp::Mul), 1),
            ('/', _) => (Tok::Bin(BinOp::Div), 1),
            ('-', _) => (Tok::Minus, 1),
            ('!', _) => (Tok::Not, 1),
            ('(', _) => (Tok::LParen, 1),
            (')', _) => (Tok::RParen, 1),
            ('[', _) => (Tok::LBracket, 1),
            (']', _) => (Tok::RBracket, 1),
            (',', _) => (Tok::Comma, 1),
            ('=', _) => return Err(err(column, "'=' is not an operator; did you mean '=='?")),
            ('&', _) => return Err(err(column, "'&' is not an operator; did you mean '&&'?")),
            ('|', _) => return Err(err(column, "'|' is not an operator; did you mean '||'?")),
            ('\'' | '"', _) => {
                let mut s = String::new();
                let mut j = i + 1;
                loop {
                    match chars.get(j) {
                        None => return Err(err(column, "unterminated string")),
                        Some(&q) if q == c => break,
                        Some('\\') => {
                            let escaped = match chars.get(j + 1) {
                                Some('n') => '\n',
                                Some('t') => '\t',
                                Some(&e @ ('\\' | '\'' | '"')) => e,
                                Some(other) => {
                                    return Err(err(
                                        j + 1,
                                        format!("unknown escape '\\{other}' in string"),
                                    ));
                                }
                                None => return Err(err(column, "unterminated string")),
                            };
                            s.push(escaped);
                            j += 2;
                        }
                        Some(&other) => {
                            s.push(other);
                            j += 1;
                        }
                    }
                }
                (Tok::Str(s), j + 1 - i)
            }
            (d, _) if d.is_ascii_digit() => {
                let mut j = i;
                while j < chars.len() && chars[j].is_ascii_digit() {
                    j += 1;
                }
                let digits: String = chars[i..j].iter().collect();
                let mut k = j;
                while k < chars.len() && (chars[k].is_ascii_alphanumeric() || chars[k] == '_') {
                    k += 1;
                }
                if k > j {
                    let unit: String = chars[j..k].iter().collect();
                    let d = duration_from_parts(&digits, &unit).map_err(|e| {
                        err(column, format!("invalid duration '{digits}{unit}': {e}"))
                    })?;
                    (Tok::Duration(d), k - i)
                } else {
                    let n = digits
                        .parse::<i64>()
                        .map_err(|_| err(column, format!("number {digits} is too large")))?;
                    (Tok::Int(n), j - i)
                }
            }
            (a, _) if a.is_alphabetic() || a == '_' => {
                let mut j = i;
                while j < chars.len() && (chars[j].is_alphanumeric() || chars[j] == '_') {
                    j += 1;
                }
                (Tok::Ident(chars[i..j].iter().collect()), j - i)
            }
            (other, _) => return Err(err(column, format!("unexpected character '{other}'"))),
        };
        out.push(Spanned { tok, column });
        i += len;
    }
    out.push(Spanned {
        tok: Tok::End,
        column: chars.len() + 1,
    });
    Ok(out)
}

struct Parser {
    toks: Vec<Spanned>,
    pos: usize,
    depth: usize,
}

/// Parses a whole expression; see the grammar in the module documentation.
pub(crate) fn parse(text: &str) -> Result<Node, ExprError> {
    let toks = lex(text)?;
    if toks.len() == 1 {
        return Err(err(1, "empty expression"));
    }
    let mut p = Parser {
        toks,
        pos: 0,
        depth: 0,
    };
    let node = p.binary(0)?;
    let next = p.peek();
    if next.tok != Tok::End {
        return Err(err(
            next.column,
            format!(
                "unexpected {} after a complete expression",
                next.tok.describe()
            ),
        ));
    }
    Ok(node)
}

impl Parser {
    fn peek(&self) -> &Spanned {
        &self.toks[self.pos.min(self.toks.len() - 1)]
    }

    fn next(&mut self) -> (Tok, usize) {
        let t = self.peek();
        let out = (t.tok.clone(), t.column);
        if self.pos < self.toks.len() - 1 {
            self.pos += 1;
        }
        out
    }

    fn expect(&mut self, want: Tok, context: &str) -> Result<(), ExprError> {
        let (tok, column) = self.next();
        if tok == want {
            Ok(())
        } else {
            Err(err(
                column,
                format!(
                    "expected {} {context}, found {}",
                    want.describe(),
                    tok.describe()
                ),
            ))
        }
    }

    /// Guards recursion and the size of the resulting tree.
    fn enter(&mut self, column: usize) -> Result<(), ExprError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(err(
                column,
                format!("expression nests deeper than {MAX_DEPTH} levels"),
            ));
        }
        Ok(())
    }

    fn checked(node: Node, column: usize) -> Result<Node, ExprError> {
        if node.depth() > MAX_DEPTH {
            return Err(err(
                column,
                format!("expression nests deeper than {MAX_DEPTH} levels"),
            ));
        }
        Ok(fold(node))
    }

    /// Precedence climbing over binary operators binding at least as tightly
    /// as `min_prec`; the right operand takes `prec + 1`, so operators of one
    /// level associate to the left.
    fn binary(&mut self, min_prec: u8) -> Result<Node, ExprError> {
        let mut left = self.unary()?;
        loop {
            let (op, column) = match &self.peek().tok {
                Tok::Bin(op) => (*op, self.peek().column),
                Tok::Minus => (BinOp::Sub, self.peek().column),
                _ => break,
            };
            let prec = precedence(op);
            if prec < min_prec {
                break;
            }
            self.next();
            let right = self.binary(prec + 1)?;
            left = Self::checked(Node::Binary(op, Box::new(left), Box::new(right)), column)?;
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Node, ExprError> {
        let column = self.peek().column;
        let op = match self.peek().tok {
            Tok::Not => UnOp::Not,
            Tok::Minus => UnOp::Neg,
            _ => return self.primary(),
        };
        self.next();
        self.enter(column)?;
        let inner = self.unary()?;
        self.depth -= 1;
        Self::checked(Node::Unary(op, Box::new(inner)), column)
    }

    fn primary(&mut self) -> Result<Node, ExprError> {
        let (tok, column) = self.next();
        match tok {
            Tok::Int(i) => Ok(Node::Const(Value::Int(i))),
            Tok::Duration(d) => Ok(Node::Const(Value::Duration(d))),
            Tok::Str(s) => Ok(Node::Const(Value::Str(s))),
            Tok::LParen => {
                self.enter(column)?;
                let inner = self.binary(0)?;
                self.depth -= 1;
                self.expect(Tok::RParen, "to close '('")?;
                Ok(inner)
            }
            Tok::LBracket => {
                self.enter(column)?;
                let items = self.sequence(Tok::RBracket, "in list")?;
                self.depth -= 1;
                Self::checked(Node::List(items), column)
            }
            Tok::Ident(name) => match name.as_str() {
                "true" => Ok(Node::Const(Value::Bool(true))),
                "false" => Ok(Node::Const(Value::Bool(false))),
                _ if self.peek().tok == Tok::LParen => {
                    self.next();
                    self.call(&name, column)
                }
                _ => match Var::from_name(&name) {
                    Some(v) => Ok(Node::Var(v)),
                    None => {
                        let mut message = format!("unknown variable '{name}'");
                        if let Some(s) = suggest(
                            &name,
                            Var::ALL.iter().map(|v| v.name()).chain(["true", "false"]),
                        ) {
                            message.push_str(&format!("; did you mean '{s}'?"));
                        } else if Func::from_name(&name).is_some() {
                            message.push_str(&format!(
                                "; '{name}' is a function: call it as {name}(...)"
                            ));
                        } else {
                            message.push_str("; text must be quoted, e.g. 'example.org'");
                        }
                        Err(err(column, message))
                    }
                },
            },
            other => Err(err(
                column,
                format!("expected a value, found {}", other.describe()),
            )),
        }
    }

    /// Comma-separated expressions up to `close` (a trailing comma is allowed).
    fn sequence(&mut self, close: Tok, context: &str) -> Result<Vec<Node>, ExprError> {
        let mut items = Vec::new();
        loop {
            if self.peek().tok == close {
                self.next();
                return Ok(items);
            }
            items.push(self.binary(0)?);
            let (tok, column) = self.next();
            if tok == close {
                return Ok(items);
            }
            if tok != Tok::Comma {
                return Err(err(
                    column,
                    format!(
                        "expected ',' or {} {context}, found {}",
                        close.describe(),
                        tok.describe()
                    ),
                ));
            }
        }
    }

    fn call(&mut self, name: &str, column: usize) -> Result<Node, ExprError> {
        let Some(func) = Func::from_name(name) else {
            let mut message = format!("unknown function '{name}'");
            if let Some(s) = suggest(name, Func::ALL.iter().map(|f| f.name())) {
                message.push_str(&format!("; did you mean '{s}'?"));
            } else {
                let names: Vec<_> = Func::ALL.iter().map(|f| f.name()).collect();
                message.push_str(&format!("; functions are {}", names.join(", ")));
            }
            return Err(err(column, message));
        };
        self.enter(column)?;
        let mut args = self.sequence(Tok::RParen, &format!("in call to {name}"))?;
        self.depth -= 1;
        if args.len() != func.arity() {
            return Err(err(
                column,
                format!(
                    "{name}() takes {} argument{}, found {}",
                    func.arity(),
                    if func.arity() == 1 { "" } else { "s" },
                    args.len()
                ),
            ));
        }
        if func == Func::InNetwork
            && let Node::Const(net) = &args[1]
        {
            let Some(cidr) = net.as_str().and_then(Cidr::parse) else {
                return Err(err(
                    column,
                    format!(
                        "in_network(): {net} is not a network; write e.g. '10.0.0.0/8' or '2001:db8::/32'"
                    ),
                ));
            };
            let ip = args.swap_remove(0);
            return Self::checked(Node::InNetwork(Box::new(ip), cidr), column);
        }
        Self::checked(Node::Call(func, args), column)
    }
}

/// Replaces a node whose children are all constants by its value, except
/// `header()`, which reads the message.
pub(crate) fn fold(node: Node) -> Node {
    let foldable = match &node {
        Node::Const(_) | Node::Var(_) | Node::Cond(..) => false,
        Node::List(items) => items.iter().all(Node::is_const),
        Node::Unary(_, n) | Node::InNetwork(n, _) => n.is_const(),
        Node::Binary(_, l, r) => l.is_const() && r.is_const(),
        Node::Call(func, args) => *func != Func::Header && args.iter().all(Node::is_const),
    };
    if foldable {
        Node::Const(eval::eval(&node, &()))
    } else {
        node
    }
}
