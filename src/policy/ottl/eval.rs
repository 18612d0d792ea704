//! Evaluating parsed conditions against one span (or one span event) with OTTL's semantics.
//!
//! - Attribute values take OTTL's types: string, int, double, bool, bytes, map, slice; a missing
//!   attribute or an empty value is `nil`.
//! - Comparisons follow OTTL's `compare`: numbers compare across int and double; strings and
//!   bytes compare bytewise; booleans order `false < true`; `nil` equals only `nil`. Values of
//!   different types are never equal and never ordered, so `!=` is true and the rest false.
//! - Arithmetic is defined on int and double (int with int stays int, wrapping like Go); anything
//!   else, and division by zero, is an evaluation error.
//! - `and` / `or` stop at the first operand that decides them, so a later operand's error does not
//!   surface, as in OTTL.
//! - `IsMatch` turns its target into a string the way OTTL's `StringLikeGetter` does (ints and
//!   doubles formatted like Go's `strconv`, bytes as lowercase hex) and is false for `nil`.

use std::borrow::Cow;

use crate::otlp::attributes::{
    find_attribute, scope_name_version, AnyValue, EventFields, SpanFields, EVENT_ATTRIBUTES,
    RESOURCE_ATTRIBUTES, SCOPE_ATTRIBUTES, SPAN_ATTRIBUTES,
};
use crate::otlp::WireError;
use crate::policy::trace_state;
use crate::policy::SpanRecord;

use super::parse::{CmpOp, Cond, Expr, Lit, MathOp, Path};

/// What a condition reads from: a span, and for span event conditions one of its events.
pub struct Scope<'a> {
    pub span: &'a SpanRecord<'a>,
    pub fields: SpanFields<'a>,
    pub event: Option<(&'a [u8], EventFields<'a>)>,
}

/// Why evaluation failed.
#[derive(Debug)]
pub enum EvalError {
    /// The span's bytes are malformed: not a condition error, reported whatever the error mode.
    Wire(WireError),
    /// The condition failed (OTTL would return an error): subject to `error_mode`.
    Ottl(String),
}

impl From<WireError> for EvalError {
    fn from(e: WireError) -> Self {
        EvalError::Wire(e)
    }
}

/// A runtime value.
#[derive(Debug, Clone, PartialEq)]
pub enum V<'a> {
    Nil,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Cow<'a, [u8]>),
    Bytes(&'a [u8]),
    Map,
    Slice,
}

impl V<'_> {
    fn type_name(&self) -> &'static str {
        match self {
            V::Nil => "nil",
            V::Bool(_) => "bool",
            V::Int(_) => "int",
            V::Float(_) => "double",
            V::Str(_) => "string",
            V::Bytes(_) => "bytes",
            V::Map => "map",
            V::Slice => "slice",
        }
    }
}

impl<'a> From<AnyValue<'a>> for V<'a> {
    fn from(v: AnyValue<'a>) -> Self {
        match v {
            AnyValue::Empty => V::Nil,
            AnyValue::Str(s) => V::Str(Cow::Borrowed(s)),
            AnyValue::Bool(b) => V::Bool(b),
            AnyValue::Int(i) => V::Int(i),
            AnyValue::Double(d) => V::Float(d),
            AnyValue::Bytes(b) => V::Bytes(b),
            AnyValue::Array(_) => V::Slice,
            AnyValue::KvList(_) => V::Map,
        }
    }
}

pub fn eval_cond(cond: &Cond, scope: &Scope<'_>) -> Result<bool, EvalError> {
    Ok(match cond {
        Cond::Or(terms) => {
            for t in terms {
                if eval_cond(t, scope)? {
                    return Ok(true);
                }
            }
            false
        }
        Cond::And(terms) => {
            for t in terms {
                if !eval_cond(t, scope)? {
                    return Ok(false);
                }
            }
            true
        }
        Cond::Not(inner) => !eval_cond(inner, scope)?,
        Cond::Const(b) => *b,
        Cond::Compare(left, op, right) => {
            let l = eval(left, scope)?;
            let r = eval(right, scope)?;
            compare(&l, *op, &r)
        }
        Cond::Bool(expr) => match eval(expr, scope)? {
            V::Bool(b) => b,
            other => {
                return Err(EvalError::Ottl(format!(
                    "expected a bool, got {}",
                    other.type_name()
                )))
            }
        },
    })
}

fn eval<'a>(expr: &'a Expr, scope: &Scope<'a>) -> Result<V<'a>, EvalError> {
    match expr {
        Expr::Lit(lit) => Ok(match lit {
            Lit::Nil => V::Nil,
            Lit::Bool(b) => V::Bool(*b),
            Lit::Int(i) => V::Int(*i),
            Lit::Float(f) => V::Float(*f),
            Lit::Str(s) => V::Str(Cow::Borrowed(s)),
            Lit::Bytes(b) => V::Bytes(b),
        }),
        Expr::Path(path) => read(path, scope),
        Expr::Math(left, op, right) => {
            let l = eval(left, scope)?;
            let r = eval(right, scope)?;
            math(l, *op, r).map_err(EvalError::Ottl)
        }
        Expr::IsMatch(target, regex) => {
            let value = eval(target, scope)?;
            let text: Cow<'_, str> = match &value {
                V::Nil => return Ok(V::Bool(false)),
                V::Str(s) => String::from_utf8_lossy(s),
                V::Int(i) => Cow::Owned(i.to_string()),
                V::Float(f) => Cow::Owned(go_format_float(*f)),
                V::Bool(b) => Cow::Borrowed(if *b { "true" } else { "false" }),
                V::Bytes(b) => Cow::Owned(b.iter().map(|x| format!("{x:02x}")).collect()),
                V::Map | V::Slice => {
                    return Err(EvalError::Ottl(format!(
                        "IsMatch on a {} value is not supported by tailgate",
                        value.type_name()
                    )))
                }
            };
            Ok(V::Bool(regex.is_match(&text)))
        }
    }
}

/// Go's `strconv.FormatFloat(f, 'f', -1, 64)`.
fn go_format_float(f: f64) -> String {
    if f.is_nan() {
        "NaN".into()
    } else if f.is_infinite() {
        if f > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        // Rust's Display is the shortest round-trip form without an exponent, as Go's 'f', -1.
        format!("{f}")
    }
}

fn attribute<'a>(msg: &'a [u8], field: u32, key: &[u8]) -> Result<V<'a>, EvalError> {
    Ok(find_attribute(msg, field, key)?.map_or(V::Nil, V::from))
}

fn str_value(s: &[u8]) -> V<'_> {
    V::Str(Cow::Borrowed(s))
}

fn read<'a>(path: &'a Path, scope: &Scope<'a>) -> Result<V<'a>, EvalError> {
    let span = scope.span;
    let fields = &scope.fields;
    Ok(match path {
        Path::SpanName => str_value(fields.name),
        Path::SpanKind => V::Int(i64::from(fields.kind)),
        Path::SpanKindString => str_value(kind_name(fields.kind).0.as_bytes()),
        Path::SpanKindDeprecatedString => str_value(kind_name(fields.kind).1.as_bytes()),
        Path::StatusCode => V::Int(i64::from(span.info.status_code)),
        Path::StatusMessage => str_value(fields.status_message),
        Path::TraceState => str_value(fields.trace_state),
        Path::TraceStateKey(key) => match trace_state::get(fields.trace_state, key) {
            Ok(value) => str_value(value.unwrap_or(b"")),
            Err(()) => V::Nil,
        },
        Path::StartTimeUnixNano => V::Int(span.info.start_unix_nano as i64),
        Path::EndTimeUnixNano => V::Int(span.info.end_unix_nano as i64),
        Path::SpanAttribute(key) => attribute(span.bytes, SPAN_ATTRIBUTES, key)?,
        Path::ResourceAttribute(key) => match &span.origin.resource {
            Some(resource) => attribute(resource, RESOURCE_ATTRIBUTES, key)?,
            None => V::Nil,
        },
        Path::ScopeName | Path::ScopeVersion => {
            let (name, version) = match &span.origin.scope {
                Some(scope) => scope_name_version(scope)?,
                None => (&b""[..], &b""[..]),
            };
            str_value(if *path == Path::ScopeName {
                name
            } else {
                version
            })
        }
        Path::ScopeAttribute(key) => match &span.origin.scope {
            Some(s) => attribute(s, SCOPE_ATTRIBUTES, key)?,
            None => V::Nil,
        },
        Path::EventName | Path::EventTimeUnixNano | Path::EventAttribute(_) => {
            let Some((event, event_fields)) = scope.event else {
                return Err(EvalError::Ottl("no span event in a span condition".into()));
            };
            match path {
                Path::EventName => str_value(event_fields.name),
                Path::EventTimeUnixNano => V::Int(event_fields.time_unix_nano as i64),
                Path::EventAttribute(key) => attribute(event, EVENT_ATTRIBUTES, key)?,
                _ => unreachable!("event paths only"),
            }
        }
    })
}

/// pdata's `SpanKind.String()` and OTTL's `kind.deprecated_string`.
fn kind_name(kind: i32) -> (&'static str, &'static str) {
    match kind {
        0 => ("Unspecified", "SPAN_KIND_UNSPECIFIED"),
        1 => ("Internal", "SPAN_KIND_INTERNAL"),
        2 => ("Server", "SPAN_KIND_SERVER"),
        3 => ("Client", "SPAN_KIND_CLIENT"),
        4 => ("Producer", "SPAN_KIND_PRODUCER"),
        5 => ("Consumer", "SPAN_KIND_CONSUMER"),
        _ => ("", ""),
    }
}

fn math<'a>(l: V<'a>, op: MathOp, r: V<'a>) -> Result<V<'a>, String> {
    let float = |a: f64, b: f64| -> Result<V<'a>, String> {
        Ok(V::Float(match op {
            MathOp::Add => a + b,
            MathOp::Sub => a - b,
            MathOp::Mul => a * b,
            MathOp::Div if b == 0.0 => return Err("attempted to divide by zero".into()),
            MathOp::Div => a / b,
        }))
    };
    match (&l, &r) {
        (V::Int(a), V::Int(b)) => Ok(V::Int(match op {
            MathOp::Add => a.wrapping_add(*b),
            MathOp::Sub => a.wrapping_sub(*b),
            MathOp::Mul => a.wrapping_mul(*b),
            MathOp::Div if *b == 0 => return Err("attempted to divide by zero".into()),
            MathOp::Div => a.wrapping_div(*b),
        })),
        (V::Int(a), V::Float(b)) => float(*a as f64, *b),
        (V::Float(a), V::Int(b)) => float(*a, *b as f64),
        (V::Float(a), V::Float(b)) => float(*a, *b),
        _ => Err(format!(
            "arithmetic on {} and {} is not defined",
            l.type_name(),
            r.type_name()
        )),
    }
}

fn ordered<T: PartialOrd>(a: T, b: T, op: CmpOp) -> bool {
    match op {
        CmpOp::Eq => a == b,
        CmpOp::Ne => a != b,
        CmpOp::Lt => a < b,
        CmpOp::Le => a <= b,
        CmpOp::Gt => a > b,
        CmpOp::Ge => a >= b,
    }
}

/// OTTL's `compare`.
pub fn compare(l: &V<'_>, op: CmpOp, r: &V<'_>) -> bool {
    let mismatch = op == CmpOp::Ne;
    match (l, r) {
        (V::Nil, V::Nil) => matches!(op, CmpOp::Eq | CmpOp::Le | CmpOp::Ge),
        (V::Nil, _) | (_, V::Nil) => mismatch,
        (V::Bool(a), V::Bool(b)) => ordered(a, b, op),
        (V::Int(a), V::Int(b)) => ordered(a, b, op),
        (V::Int(a), V::Float(b)) => ordered(*a as f64, *b, op),
        (V::Float(a), V::Int(b)) => ordered(*a, *b as f64, op),
        (V::Float(a), V::Float(b)) => ordered(a, b, op),
        (V::Str(a), V::Str(b)) => ordered(a.as_ref(), b.as_ref(), op),
        (V::Bytes(a), V::Bytes(b)) => ordered(a, b, op),
        // Maps and slices are never equal to anything (OTTL compares them by identity).
        _ => mismatch,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: &str) -> V<'_> {
        V::Str(Cow::Borrowed(x.as_bytes()))
    }

    #[test]
    fn comparisons_follow_ottl() {
        use CmpOp::*;
        let cases: Vec<(V, CmpOp, V, bool)> = vec![
            (V::Int(5), Eq, V::Float(5.0), true),
            (V::Float(4.5), Lt, V::Int(5), true),
            (V::Int(500), Ge, V::Int(500), true),
            (s("b"), Gt, s("a"), true),
            (s("5"), Eq, V::Int(5), false),
            (s("5"), Ne, V::Int(5), true),
            (s("5"), Lt, V::Int(6), false),
            (V::Nil, Eq, V::Nil, true),
            (V::Nil, Le, V::Nil, true),
            (V::Nil, Lt, V::Nil, false),
            (V::Nil, Eq, s(""), false),
            (V::Nil, Ne, s(""), true),
            (V::Int(0), Eq, V::Nil, false),
            (V::Bool(false), Lt, V::Bool(true), true),
            (V::Bool(true), Eq, V::Int(1), false),
            (V::Bytes(b"\x01"), Lt, V::Bytes(b"\x02"), true),
            (V::Map, Eq, V::Map, false),
            (V::Slice, Ne, V::Nil, true),
            // Each operator on equal and on ordered values.
            (V::Int(5), Lt, V::Int(5), false),
            (V::Int(5), Le, V::Int(5), true),
            (V::Int(4), Le, V::Int(5), true),
            (V::Int(6), Le, V::Int(5), false),
            (V::Int(5), Gt, V::Int(5), false),
            (V::Int(5), Ge, V::Int(5), true),
            (V::Int(4), Ge, V::Int(5), false),
            (V::Int(5), Ne, V::Int(5), false),
            (V::Float(0.5), Eq, V::Float(0.5), true),
            (V::Float(0.5), Lt, V::Float(0.75), true),
            (s("a"), Eq, s("a"), true),
            (V::Bytes(b"\x01"), Eq, V::Bytes(b"\x01"), true),
            (V::Bool(true), Eq, V::Bool(true), true),
        ];
        for (l, op, r, want) in cases {
            assert_eq!(compare(&l, op, &r), want, "{l:?} {op:?} {r:?}");
        }
    }

    #[test]
    fn arithmetic_follows_ottl() {
        use MathOp::*;
        assert_eq!(math(V::Int(7), Div, V::Int(2)), Ok(V::Int(3)));
        assert_eq!(math(V::Int(7), Div, V::Float(2.0)), Ok(V::Float(3.5)));
        assert_eq!(math(V::Int(i64::MAX), Add, V::Int(1)), Ok(V::Int(i64::MIN)));
        assert!(math(V::Int(1), Div, V::Int(0)).is_err());
        assert!(math(V::Float(1.0), Div, V::Float(0.0)).is_err());
        assert!(math(s("1"), Add, V::Int(1)).is_err());
        assert!(math(V::Nil, Sub, V::Int(1)).is_err());
    }

    #[test]
    fn arithmetic_on_every_pair_of_number_types() {
        use MathOp::*;
        let cases = [
            (V::Int(7), Add, V::Int(2), V::Int(9)),
            (V::Int(7), Sub, V::Int(2), V::Int(5)),
            (V::Int(7), Mul, V::Int(2), V::Int(14)),
            // Go's integer division truncates toward zero and MinInt64 / -1 wraps.
            (V::Int(-7), Div, V::Int(2), V::Int(-3)),
            (V::Int(i64::MIN), Div, V::Int(-1), V::Int(i64::MIN)),
            (V::Int(i64::MIN), Sub, V::Int(1), V::Int(i64::MAX)),
            (V::Int(i64::MAX), Mul, V::Int(2), V::Int(-2)),
            (V::Float(1.5), Add, V::Float(0.25), V::Float(1.75)),
            (V::Float(1.5), Sub, V::Float(0.25), V::Float(1.25)),
            (V::Float(1.5), Mul, V::Float(0.25), V::Float(0.375)),
            (V::Float(1.5), Div, V::Float(0.25), V::Float(6.0)),
            (V::Float(1.5), Add, V::Int(2), V::Float(3.5)),
            (V::Float(1.5), Sub, V::Int(2), V::Float(-0.5)),
            (V::Int(3), Mul, V::Float(0.5), V::Float(1.5)),
            (V::Float(3.0), Div, V::Int(2), V::Float(1.5)),
        ];
        for (l, op, r, want) in cases {
            let text = format!("{l:?} {op:?} {r:?}");
            assert_eq!(math(l, op, r), Ok(want), "{text}");
        }
    }

    #[test]
    fn errors_name_the_types_as_ottl_does() {
        let cases = [
            (V::Nil, "nil"),
            (V::Bool(true), "bool"),
            (V::Int(1), "int"),
            (V::Float(1.0), "double"),
            (s("x"), "string"),
            (V::Bytes(b"x"), "bytes"),
            (V::Map, "map"),
            (V::Slice, "slice"),
        ];
        for (value, name) in cases {
            assert_eq!(
                math(value, MathOp::Add, V::Map),
                Err(format!("arithmetic on {name} and map is not defined"))
            );
        }
    }

    #[test]
    fn floats_format_like_go_for_is_match() {
        assert_eq!(go_format_float(1.0), "1");
        assert_eq!(go_format_float(0.1), "0.1");
        assert_eq!(go_format_float(1e21), "1000000000000000000000");
        assert_eq!(go_format_float(f64::INFINITY), "+Inf");
        assert_eq!(go_format_float(f64::NEG_INFINITY), "-Inf");
        assert_eq!(go_format_float(f64::NAN), "NaN");
        assert_eq!(go_format_float(-2.5), "-2.5");
    }
}
