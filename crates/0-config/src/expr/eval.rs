//! Evaluation. Total by construction: every operator and function has an
//! answer for every input, `Null` when the types make no sense, and there is
//! no indexing or unchecked arithmetic that could panic.

use std::cmp::Ordering;
use std::net::IpAddr;

use super::{BinOp, Cidr, Func, Node, UnOp, Value, Variables};

pub(crate) fn eval(node: &Node, vars: &dyn Variables) -> Value {
    match node {
        Node::Const(v) => v.clone(),
        Node::Var(v) => vars.var(*v),
        Node::List(items) => Value::List(items.iter().map(|n| eval(n, vars)).collect()),
        Node::Unary(UnOp::Not, n) => Value::Bool(!eval(n, vars).is_truthy()),
        Node::Unary(UnOp::Neg, n) => match eval(n, vars) {
            Value::Int(i) => i.checked_neg().map_or(Value::Null, Value::Int),
            _ => Value::Null,
        },
        Node::Binary(BinOp::And, l, r) => {
            Value::Bool(eval(l, vars).is_truthy() && eval(r, vars).is_truthy())
        }
        Node::Binary(BinOp::Or, l, r) => {
            Value::Bool(eval(l, vars).is_truthy() || eval(r, vars).is_truthy())
        }
        Node::Binary(op, l, r) => binary(*op, eval(l, vars), eval(r, vars)),
        Node::Call(Func::Header, args) => match args.first().map(|a| eval(a, vars)) {
            Some(Value::Str(name)) => vars.header(&name).map_or(Value::Null, Value::Str),
            _ => Value::Null,
        },
        Node::Call(func, args) => {
            let mut values = args.iter().map(|a| eval(a, vars));
            let a = values.next().unwrap_or_default();
            let b = values.next().unwrap_or_default();
            call(*func, a, b)
        }
        Node::InNetwork(ip, net) => in_network(&eval(ip, vars), net),
        Node::Cond(branches, otherwise) => {
            for (cond, then) in branches {
                if eval(cond, vars).is_truthy() {
                    return eval(then, vars);
                }
            }
            eval(otherwise, vars)
        }
    }
}

fn binary(op: BinOp, l: Value, r: Value) -> Value {
    use Value::*;
    match op {
        BinOp::Eq => Bool(l == r),
        BinOp::Ne => Bool(l != r),
        BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => {
            let ord = match (&l, &r) {
                (Int(a), Int(b)) => a.cmp(b),
                (Duration(a), Duration(b)) => a.cmp(b),
                (Str(a), Str(b)) => a.cmp(b),
                _ => return Null,
            };
            Bool(match op {
                BinOp::Lt => ord == Ordering::Less,
                BinOp::Le => ord != Ordering::Greater,
                BinOp::Gt => ord == Ordering::Greater,
                _ => ord != Ordering::Less,
            })
        }
        BinOp::Add => match (l, r) {
            (Int(a), Int(b)) => a.checked_add(b).map_or(Null, Int),
            (Duration(a), Duration(b)) => a.checked_add(b).map_or(Null, Duration),
            (Str(mut a), Str(b)) => {
                a.push_str(&b);
                Str(a)
            }
            // `'attempt-' + retry_num`: scalars are written out.
            (Str(mut a), b @ (Int(_) | Bool(_))) => {
                a.push_str(&b.to_string());
                Str(a)
            }
            (a @ (Int(_) | Bool(_)), Str(b)) => Str(format!("{a}{b}")),
            (List(mut a), List(b)) => {
                a.extend(b);
                List(a)
            }
            _ => Null,
        },
        BinOp::Sub => match (l, r) {
            (Int(a), Int(b)) => a.checked_sub(b).map_or(Null, Int),
            (Duration(a), Duration(b)) => a.checked_sub(b).map_or(Null, Duration),
            _ => Null,
        },
        BinOp::Mul => match (l, r) {
            (Int(a), Int(b)) => a.checked_mul(b).map_or(Null, Int),
            (Duration(d), Int(n)) | (Int(n), Duration(d)) => u32::try_from(n)
                .ok()
                .and_then(|n| d.checked_mul(n))
                .map_or(Null, Duration),
            _ => Null,
        },
        BinOp::Div => match (l, r) {
            (Int(a), Int(b)) => a.checked_div(b).map_or(Null, Int),
            (Duration(d), Int(n)) => u32::try_from(n)
                .ok()
                .and_then(|n| d.checked_div(n))
                .map_or(Null, Duration),
            _ => Null,
        },
        // Short-circuit operators are handled in `eval`.
        BinOp::And => Bool(l.is_truthy() && r.is_truthy()),
        BinOp::Or => Bool(l.is_truthy() || r.is_truthy()),
    }
}

fn call(func: Func, a: Value, b: Value) -> Value {
    use Value::*;
    match (func, a, b) {
        (Func::Contains, List(items), needle) => Bool(items.contains(&needle)),
        (Func::Contains, Str(hay), Str(needle)) => Bool(hay.contains(needle.as_str())),
        (Func::StartsWith, Str(s), Str(p)) => Bool(s.starts_with(p.as_str())),
        (Func::EndsWith, Str(s), Str(p)) => Bool(s.ends_with(p.as_str())),
        (Func::Lower, Str(s), _) => Str(s.to_lowercase()),
        (Func::Upper, Str(s), _) => Str(s.to_uppercase()),
        (Func::IsEmpty, v, _) => Bool(match v {
            Null => true,
            Str(s) => s.is_empty(),
            List(l) => l.is_empty(),
            _ => false,
        }),
        (Func::InNetwork, ip, Str(net)) => match Cidr::parse(&net) {
            Some(net) => in_network(&ip, &net),
            None => Null,
        },
        (Func::IsLoopback, Str(ip), _) => match ip.trim().parse::<IpAddr>() {
            Ok(ip) => Bool(ip.to_canonical().is_loopback()),
            Err(_) => Null,
        },
        _ => Null,
    }
}

fn in_network(ip: &Value, net: &Cidr) -> Value {
    match ip {
        Value::Str(ip) => match ip.trim().parse::<IpAddr>() {
            Ok(ip) => Value::Bool(net.contains(ip)),
            Err(_) => Value::Null,
        },
        _ => Value::Null,
    }
}
