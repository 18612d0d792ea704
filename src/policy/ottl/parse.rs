//! The OTTL condition subset tailgate evaluates: lexer, parser and the resolved syntax tree.
//!
//! Grammar (the OpenTelemetry Transformation Language's, restricted):
//!
//! ```text
//! condition  = and_expr { "or" and_expr }
//! and_expr   = not_expr { "and" not_expr }
//! not_expr   = [ "not" ] bool_value
//! bool_value = value cmp value | "(" condition ")" | "true" | "false" | IsMatch(...)
//! cmp        = "==" | "!=" | "<" | "<=" | ">" | ">="
//! value      = term { ("+" | "-") term }
//! term       = factor { ("*" | "/") factor }
//! factor     = literal | path | ENUM | IsMatch(value, "regex") | "(" value ")"
//! literal    = "string" | int | float | 0xBYTES | true | false | nil
//! path       = [context "."] name { "." name } [ "[" "key" "]" ]
//! ```
//!
//! Paths are resolved here, for the context the condition runs in (`span` or `spanevent`), so an
//! unsupported path, function or enum is a config error naming it rather than a failure at
//! decision time.

use regex::Regex;

use crate::policy::regex_go;

/// Which OTTL context a condition runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Context {
    Span,
    SpanEvent,
}

/// A boolean expression.
#[derive(Debug, Clone)]
pub enum Cond {
    Or(Vec<Cond>),
    And(Vec<Cond>),
    Not(Box<Cond>),
    Const(bool),
    Compare(Expr, CmpOp, Expr),
    /// A converter used as a condition (`IsMatch(...)`).
    Bool(Expr),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MathOp {
    Add,
    Sub,
    Mul,
    Div,
}

/// A value expression.
#[derive(Debug, Clone)]
pub enum Expr {
    Lit(Lit),
    Path(Path),
    Math(Box<Expr>, MathOp, Box<Expr>),
    IsMatch(Box<Expr>, Regex),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Lit {
    Nil,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Vec<u8>),
    Bytes(Vec<u8>),
}

/// A resolved path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Path {
    SpanName,
    SpanKind,
    /// `kind.string`: `Server`, `Client`, ...
    SpanKindString,
    /// `kind.deprecated_string`: `SPAN_KIND_SERVER`, ...
    SpanKindDeprecatedString,
    StatusCode,
    StatusMessage,
    TraceState,
    TraceStateKey(Vec<u8>),
    StartTimeUnixNano,
    EndTimeUnixNano,
    SpanAttribute(Vec<u8>),
    ResourceAttribute(Vec<u8>),
    ScopeName,
    ScopeVersion,
    ScopeAttribute(Vec<u8>),
    EventName,
    EventTimeUnixNano,
    EventAttribute(Vec<u8>),
}

const SPAN_PATHS: &str = "name, kind, kind.string, kind.deprecated_string, status.code, \
status.message, trace_state, trace_state[\"key\"], start_time_unix_nano, end_time_unix_nano, \
attributes[\"key\"], resource.attributes[\"key\"], instrumentation_scope.name, \
instrumentation_scope.version, instrumentation_scope.attributes[\"key\"] (optionally prefixed \
with `span.`)";

const EVENT_PATHS: &str = "name, time_unix_nano, attributes[\"key\"] (optionally prefixed with \
`spanevent.`), the span paths prefixed with `span.`, resource.attributes[\"key\"], \
instrumentation_scope.name, instrumentation_scope.version, \
instrumentation_scope.attributes[\"key\"]";

/// Parses one condition for `context`. The error says what is wrong or not supported.
pub fn parse(text: &str, context: Context) -> Result<Cond, String> {
    let tokens = lex(text)?;
    let mut p = Parser {
        tokens,
        pos: 0,
        context,
    };
    let cond = p.condition()?;
    match p.peek() {
        Tok::End => Ok(cond),
        t => Err(format!(
            "found {} after the end of the condition",
            t.describe()
        )),
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(Vec<u8>),
    Int(i64),
    Float(f64),
    Bytes(Vec<u8>),
    Op(&'static str),
    End,
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Tok::Ident(s) => format!("`{s}`"),
            Tok::Str(s) => format!("string \"{}\"", String::from_utf8_lossy(s)),
            Tok::Int(i) => format!("`{i}`"),
            Tok::Float(f) => format!("`{f}`"),
            Tok::Bytes(_) => "a bytes literal".into(),
            Tok::Op(op) => format!("`{op}`"),
            Tok::End => "the end of the condition".into(),
        }
    }
}

const OPS: &[&str] = &[
    "==", "!=", "<=", ">=", "<", ">", "+", "-", "*", "/", "(", ")", "[", "]", ",", ".",
];

fn lex(text: &str) -> Result<Vec<Tok>, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c == b'"' {
            let (s, next) = lex_string(text, i)?;
            out.push(Tok::Str(s));
            i = next;
        } else if c == b'0' && matches!(bytes.get(i + 1), Some(b'x' | b'X')) {
            let start = i + 2;
            let end = start
                + bytes[start..]
                    .iter()
                    .take_while(|b| b.is_ascii_hexdigit())
                    .count();
            let hex = &text[start..end];
            if hex.is_empty() || !hex.len().is_multiple_of(2) {
                return Err(format!("invalid bytes literal `{}`", &text[i..end]));
            }
            let decoded = (0..hex.len())
                .step_by(2)
                .map(|k| u8::from_str_radix(&hex[k..k + 2], 16).expect("hex digits"))
                .collect();
            out.push(Tok::Bytes(decoded));
            i = end;
        } else if c.is_ascii_digit()
            || (c == b'.' && bytes.get(i + 1).is_some_and(u8::is_ascii_digit))
        {
            let (tok, next) = lex_number(text, i)?;
            out.push(tok);
            i = next;
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let end = i + bytes[i..]
                .iter()
                .take_while(|b| b.is_ascii_alphanumeric() || **b == b'_')
                .count();
            out.push(Tok::Ident(text[i..end].to_string()));
            i = end;
        } else if let Some(op) = OPS.iter().find(|op| text[i..].starts_with(**op)) {
            out.push(Tok::Op(op));
            i += op.len();
        } else {
            let ch = text[i..].chars().next().unwrap_or('?');
            return Err(format!("unexpected character `{ch}` at offset {i}"));
        }
    }
    out.push(Tok::End);
    Ok(out)
}

fn lex_string(text: &str, start: usize) -> Result<(Vec<u8>, usize), String> {
    let mut out = String::new();
    let mut chars = text[start + 1..].char_indices();
    while let Some((k, c)) = chars.next() {
        match c {
            '"' => return Ok((out.into_bytes(), start + 1 + k + 1)),
            '\\' => {
                let esc = chars.next().map(|(_, e)| e);
                match esc {
                    Some('"') => out.push('"'),
                    Some('\\') => out.push('\\'),
                    Some('/') => out.push('/'),
                    Some('n') => out.push('\n'),
                    Some('t') => out.push('\t'),
                    Some('r') => out.push('\r'),
                    Some('u') => {
                        let hex: String = chars.by_ref().take(4).map(|(_, h)| h).collect();
                        let ch = u32::from_str_radix(&hex, 16)
                            .ok()
                            .filter(|_| hex.len() == 4)
                            .and_then(char::from_u32)
                            .ok_or_else(|| format!("invalid escape `\\u{hex}` in a string"))?;
                        out.push(ch);
                    }
                    Some(other) => {
                        return Err(format!("unsupported escape `\\{other}` in a string"))
                    }
                    None => break,
                }
            }
            c => out.push(c),
        }
    }
    Err(format!("string starting at offset {start} is not closed"))
}

fn lex_number(text: &str, start: usize) -> Result<(Tok, usize), String> {
    let bytes = text.as_bytes();
    let mut end = start;
    let digits = |from: usize| {
        from + bytes[from..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count()
    };
    end = digits(end);
    let mut float = false;
    if bytes.get(end) == Some(&b'.') && bytes.get(end + 1).is_some_and(u8::is_ascii_digit) {
        float = true;
        end = digits(end + 1);
    }
    if float && matches!(bytes.get(end), Some(b'e' | b'E')) {
        let mut k = end + 1;
        if matches!(bytes.get(k), Some(b'+' | b'-')) {
            k += 1;
        }
        if bytes.get(k).is_some_and(u8::is_ascii_digit) {
            end = digits(k);
        }
    }
    let s = &text[start..end];
    let tok = if float {
        Tok::Float(s.parse().map_err(|_| format!("invalid number `{s}`"))?)
    } else {
        Tok::Int(
            s.parse()
                .map_err(|_| format!("integer `{s}` does not fit 64 bits"))?,
        )
    };
    Ok((tok, end))
}

struct Parser {
    tokens: Vec<Tok>,
    pos: usize,
    context: Context,
}

fn is_keyword(s: &str) -> bool {
    matches!(s, "and" | "or" | "not" | "true" | "false" | "nil")
}

impl Parser {
    fn peek(&self) -> &Tok {
        &self.tokens[self.pos]
    }

    fn bump(&mut self) -> Tok {
        let t = self.tokens[self.pos].clone();
        if self.pos + 1 < self.tokens.len() {
            self.pos += 1;
        }
        t
    }

    fn at_ident(&self, word: &str) -> bool {
        matches!(self.peek(), Tok::Ident(s) if s == word)
    }

    fn at_op(&self, op: &str) -> bool {
        matches!(self.peek(), Tok::Op(o) if *o == op)
    }

    fn expect_op(&mut self, op: &str) -> Result<(), String> {
        if self.at_op(op) {
            self.bump();
            Ok(())
        } else {
            Err(format!("expected `{op}`, found {}", self.peek().describe()))
        }
    }

    fn condition(&mut self) -> Result<Cond, String> {
        let mut terms = vec![self.and_expr()?];
        while self.at_ident("or") {
            self.bump();
            terms.push(self.and_expr()?);
        }
        Ok(if terms.len() == 1 {
            terms.pop().expect("one term")
        } else {
            Cond::Or(terms)
        })
    }

    fn and_expr(&mut self) -> Result<Cond, String> {
        let mut terms = vec![self.not_expr()?];
        while self.at_ident("and") {
            self.bump();
            terms.push(self.not_expr()?);
        }
        Ok(if terms.len() == 1 {
            terms.pop().expect("one term")
        } else {
            Cond::And(terms)
        })
    }

    fn not_expr(&mut self) -> Result<Cond, String> {
        if self.at_ident("not") {
            self.bump();
            return Ok(Cond::Not(Box::new(self.bool_value()?)));
        }
        self.bool_value()
    }

    fn cmp_op(&self) -> Option<CmpOp> {
        match self.peek() {
            Tok::Op("==") => Some(CmpOp::Eq),
            Tok::Op("!=") => Some(CmpOp::Ne),
            Tok::Op("<") => Some(CmpOp::Lt),
            Tok::Op("<=") => Some(CmpOp::Le),
            Tok::Op(">") => Some(CmpOp::Gt),
            Tok::Op(">=") => Some(CmpOp::Ge),
            _ => None,
        }
    }

    fn bool_value(&mut self) -> Result<Cond, String> {
        if self.at_op("(") {
            // Either a parenthesised value that is compared, or a parenthesised condition.
            let saved = self.pos;
            if let Ok(left) = self.value() {
                if let Some(op) = self.cmp_op() {
                    self.bump();
                    return Ok(Cond::Compare(left, op, self.value()?));
                }
            }
            self.pos = saved;
            self.bump();
            let inner = self.condition()?;
            self.expect_op(")")?;
            return Ok(inner);
        }
        let left = self.value()?;
        if let Some(op) = self.cmp_op() {
            self.bump();
            return Ok(Cond::Compare(left, op, self.value()?));
        }
        match left {
            Expr::Lit(Lit::Bool(b)) => Ok(Cond::Const(b)),
            e @ Expr::IsMatch(..) => Ok(Cond::Bool(e)),
            _ => Err(format!(
                "expected a comparison (==, !=, <, <=, >, >=) but found {}",
                self.peek().describe()
            )),
        }
    }

    fn value(&mut self) -> Result<Expr, String> {
        let mut left = self.term()?;
        loop {
            let op = match self.peek() {
                Tok::Op("+") => MathOp::Add,
                Tok::Op("-") => MathOp::Sub,
                _ => return Ok(left),
            };
            self.bump();
            let right = self.term()?;
            left = math(left, op, right)?;
        }
    }

    fn term(&mut self) -> Result<Expr, String> {
        let mut left = self.factor()?;
        loop {
            let op = match self.peek() {
                Tok::Op("*") => MathOp::Mul,
                Tok::Op("/") => MathOp::Div,
                _ => return Ok(left),
            };
            self.bump();
            let right = self.factor()?;
            left = math(left, op, right)?;
        }
    }

    fn factor(&mut self) -> Result<Expr, String> {
        match self.bump() {
            Tok::Str(s) => Ok(Expr::Lit(Lit::Str(s))),
            Tok::Int(i) => Ok(Expr::Lit(Lit::Int(i))),
            Tok::Float(f) => Ok(Expr::Lit(Lit::Float(f))),
            Tok::Bytes(b) => Ok(Expr::Lit(Lit::Bytes(b))),
            Tok::Op(sign @ ("-" | "+")) => {
                let negative = sign == "-";
                match self.bump() {
                    Tok::Int(i) => Ok(Expr::Lit(Lit::Int(if negative {
                        i.wrapping_neg()
                    } else {
                        i
                    }))),
                    Tok::Float(f) => Ok(Expr::Lit(Lit::Float(if negative { -f } else { f }))),
                    t => Err(format!(
                        "a sign must be followed by a number, found {}",
                        t.describe()
                    )),
                }
            }
            Tok::Op("(") => {
                let inner = self.value()?;
                self.expect_op(")")?;
                Ok(inner)
            }
            Tok::Ident(word) => self.ident(word),
            t => Err(format!("expected a value, found {}", t.describe())),
        }
    }

    fn ident(&mut self, word: String) -> Result<Expr, String> {
        match word.as_str() {
            "true" => return Ok(Expr::Lit(Lit::Bool(true))),
            "false" => return Ok(Expr::Lit(Lit::Bool(false))),
            "nil" => return Ok(Expr::Lit(Lit::Nil)),
            w if is_keyword(w) => return Err(format!("expected a value, found `{w}`")),
            _ => {}
        }
        if word.starts_with(|c: char| c.is_ascii_uppercase()) {
            if self.at_op("(") {
                return self.converter(word);
            }
            return enum_value(&word).map(|i| Expr::Lit(Lit::Int(i)));
        }
        let mut segments = vec![word];
        while self.at_op(".") {
            self.bump();
            match self.bump() {
                Tok::Ident(s) => segments.push(s),
                t => {
                    return Err(format!(
                        "expected a path segment after `.`, found {}",
                        t.describe()
                    ))
                }
            }
        }
        if self.at_op("(") {
            return Err(format!(
                "editor `{}` cannot be used in a condition",
                segments.join(".")
            ));
        }
        let mut keys = Vec::new();
        while self.at_op("[") {
            self.bump();
            match self.bump() {
                Tok::Str(k) => keys.push(k),
                t => {
                    return Err(format!(
                        "only string keys are supported in `{}[...]`, found {}",
                        segments.join("."),
                        t.describe()
                    ))
                }
            }
            self.expect_op("]")?;
        }
        self.resolve(&segments, keys).map(Expr::Path)
    }

    fn converter(&mut self, name: String) -> Result<Expr, String> {
        if name != "IsMatch" {
            return Err(format!(
                "function `{name}` is not supported by tailgate; the only supported function is IsMatch"
            ));
        }
        self.expect_op("(")?;
        let target = self.value()?;
        self.expect_op(",")?;
        let pattern = match self.bump() {
            Tok::Str(p) => {
                String::from_utf8(p).map_err(|_| "IsMatch pattern is not UTF-8".to_string())?
            }
            t => {
                return Err(format!(
                    "the pattern of IsMatch must be a string literal, found {}",
                    t.describe()
                ))
            }
        };
        let regex = regex_go::compile(&pattern).map_err(|e| {
            format!("the pattern of IsMatch `{pattern}` is not a valid regular expression: {e}")
        })?;
        self.expect_op(")")?;
        if self.at_op("[") {
            return Err("indexing the result of a function is not supported".into());
        }
        Ok(Expr::IsMatch(Box::new(target), regex))
    }

    fn resolve(&self, segments: &[String], mut keys: Vec<Vec<u8>>) -> Result<Path, String> {
        // One match over every path OTTL spans accept: the table reads best in one place.
        let shown = {
            let mut s = segments.join(".");
            for k in &keys {
                s.push_str(&format!("[\"{}\"]", String::from_utf8_lossy(k)));
            }
            s
        };
        let names: Vec<&str> = segments.iter().map(String::as_str).collect();
        let key = |keys: &mut Vec<Vec<u8>>, what: &str| -> Result<Vec<u8>, String> {
            match keys.len() {
                1 => Ok(keys.pop().expect("one key")),
                0 => Err(format!(
                    "`{shown}` is a whole map, which tailgate does not support in conditions; \
                     index it with a key: {what}[\"key\"]"
                )),
                _ => Err(format!("`{shown}`: nested keys are not supported")),
            }
        };
        let no_keys = |keys: &Vec<Vec<u8>>, path: Path| -> Result<Path, String> {
            if keys.is_empty() {
                Ok(path)
            } else {
                Err(format!("`{shown}`: this path cannot be indexed"))
            }
        };
        // Paths shared by both contexts.
        match names.as_slice() {
            ["resource", "attributes"] => {
                return key(&mut keys, "resource.attributes").map(Path::ResourceAttribute)
            }
            ["instrumentation_scope", "name"] => return no_keys(&keys, Path::ScopeName),
            ["instrumentation_scope", "version"] => return no_keys(&keys, Path::ScopeVersion),
            ["instrumentation_scope", "attributes"] => {
                return key(&mut keys, "instrumentation_scope.attributes").map(Path::ScopeAttribute)
            }
            _ => {}
        }
        let (span_path, rest): (bool, &[&str]) = match (self.context, names.as_slice()) {
            (Context::Span, ["span", rest @ ..]) if !rest.is_empty() => (true, rest),
            (Context::Span, rest) => (true, rest),
            (Context::SpanEvent, ["span", rest @ ..]) if !rest.is_empty() => (true, rest),
            (Context::SpanEvent, ["spanevent", rest @ ..]) if !rest.is_empty() => (false, rest),
            (Context::SpanEvent, rest) => (false, rest),
        };
        let unsupported = || {
            let (context, list) = match self.context {
                Context::Span => ("span", SPAN_PATHS),
                Context::SpanEvent => ("spanevent", EVENT_PATHS),
            };
            format!("path `{shown}` is not supported by tailgate in {context} conditions; supported paths: {list}")
        };
        if span_path {
            match rest {
                ["name"] => no_keys(&keys, Path::SpanName),
                ["kind"] => no_keys(&keys, Path::SpanKind),
                ["kind", "string"] => no_keys(&keys, Path::SpanKindString),
                ["kind", "deprecated_string"] => no_keys(&keys, Path::SpanKindDeprecatedString),
                ["status", "code"] => no_keys(&keys, Path::StatusCode),
                ["status", "message"] => no_keys(&keys, Path::StatusMessage),
                ["trace_state"] => match keys.len() {
                    0 => Ok(Path::TraceState),
                    1 => Ok(Path::TraceStateKey(keys.pop().expect("one key"))),
                    _ => Err(format!("`{shown}`: nested keys are not supported")),
                },
                ["start_time_unix_nano"] => no_keys(&keys, Path::StartTimeUnixNano),
                ["end_time_unix_nano"] => no_keys(&keys, Path::EndTimeUnixNano),
                ["attributes"] => key(&mut keys, "attributes").map(Path::SpanAttribute),
                _ => Err(unsupported()),
            }
        } else {
            match rest {
                ["name"] => no_keys(&keys, Path::EventName),
                ["time_unix_nano"] => no_keys(&keys, Path::EventTimeUnixNano),
                ["attributes"] => key(&mut keys, "attributes").map(Path::EventAttribute),
                _ => Err(unsupported()),
            }
        }
    }
}

/// Folds a math operation, rejecting operands that can never be numbers.
fn math(left: Expr, op: MathOp, right: Expr) -> Result<Expr, String> {
    for side in [&left, &right] {
        if let Expr::Lit(lit @ (Lit::Str(_) | Lit::Bool(_) | Lit::Nil | Lit::Bytes(_))) = side {
            return Err(format!(
                "arithmetic is only defined on numbers, not on {lit:?}"
            ));
        }
    }
    Ok(Expr::Math(Box::new(left), op, Box::new(right)))
}

/// The span and status enums OTTL defines for the span and span event contexts.
fn enum_value(name: &str) -> Result<i64, String> {
    Ok(match name {
        "SPAN_KIND_UNSPECIFIED" => 0,
        "SPAN_KIND_INTERNAL" => 1,
        "SPAN_KIND_SERVER" => 2,
        "SPAN_KIND_CLIENT" => 3,
        "SPAN_KIND_PRODUCER" => 4,
        "SPAN_KIND_CONSUMER" => 5,
        "STATUS_CODE_UNSET" => 0,
        "STATUS_CODE_OK" => 1,
        "STATUS_CODE_ERROR" => 2,
        _ => {
            return Err(format!(
                "unknown enum `{name}`; supported: SPAN_KIND_UNSPECIFIED, SPAN_KIND_INTERNAL, \
                 SPAN_KIND_SERVER, SPAN_KIND_CLIENT, SPAN_KIND_PRODUCER, SPAN_KIND_CONSUMER, \
                 STATUS_CODE_UNSET, STATUS_CODE_OK, STATUS_CODE_ERROR"
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str, context: Context) -> Cond {
        parse(text, context).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn err(text: &str, context: Context) -> String {
        match parse(text, context) {
            Ok(c) => panic!("{text} parsed as {c:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn the_supported_subset_parses() {
        let span = [
            r#"name == "GET /""#,
            r#"span.name != "x""#,
            "kind == SPAN_KIND_SERVER",
            r#"kind.string == "Server""#,
            "status.code == STATUS_CODE_ERROR",
            r#"attributes["http.status_code"] >= 500"#,
            r#"resource.attributes["service.name"] == "api""#,
            r#"trace_state["vendor"] == "x" or trace_state == """#,
            "end_time_unix_nano - start_time_unix_nano > 1000000000",
            "(end_time_unix_nano - start_time_unix_nano) / 1000000 >= 2.5",
            r#"not (name == "a" and kind == 2) or IsMatch(name, "^GET ")"#,
            r#"IsMatch(attributes["url"], "/health") == false"#,
            "attributes[\"x\"] == nil",
            "attributes[\"x\"] == 0xdeadbeef",
            "true",
            "attributes[\"x\"] == -1.5e3",
            r#"instrumentation_scope.name == "lib""#,
        ];
        for text in span {
            ok(text, Context::Span);
        }
        let event = [
            r#"name == "exception""#,
            r#"spanevent.attributes["exception.type"] == "E""#,
            r#"span.name == "GET /" and name != "x""#,
            "time_unix_nano > 0 and span.kind == SPAN_KIND_CLIENT",
            r#"resource.attributes["k"] != nil"#,
        ];
        for text in event {
            ok(text, Context::SpanEvent);
        }
    }

    #[test]
    fn precedence_is_not_then_and_then_or() {
        let c = ok("true or false and false", Context::Span);
        assert!(matches!(c, Cond::Or(ref t) if t.len() == 2 && matches!(t[1], Cond::And(_))));
        let c = ok("not true and false", Context::Span);
        assert!(matches!(c, Cond::And(ref t) if matches!(t[0], Cond::Not(_))));
        let c = ok("1 + 2 * 3 == 7", Context::Span);
        let Cond::Compare(Expr::Math(_, MathOp::Add, right), ..) = c else {
            panic!()
        };
        assert!(matches!(*right, Expr::Math(_, MathOp::Mul, _)));
    }

    #[test]
    fn anything_else_is_an_error_saying_what_is_not_supported() {
        let cases = [
            (
                r#"IsString(name)"#,
                Context::Span,
                "function `IsString` is not supported",
            ),
            (
                "span_id.string == \"x\"",
                Context::Span,
                "path `span_id.string` is not supported",
            ),
            ("attributes == nil", Context::Span, "whole map"),
            (r#"attributes["a"]["b"] == 1"#, Context::Span, "nested keys"),
            (
                "kind == SPAN_KIND_BOGUS",
                Context::Span,
                "unknown enum `SPAN_KIND_BOGUS`",
            ),
            (r#"name == "x" and"#, Context::Span, "expected a value"),
            (r#"name"#, Context::Span, "expected a comparison"),
            (r#"name == "x"#, Context::Span, "not closed"),
            (
                r#"IsMatch(name, "(")"#,
                Context::Span,
                "not a valid regular expression",
            ),
            (
                r#"IsMatch(name, name)"#,
                Context::Span,
                "must be a string literal",
            ),
            (
                r#"name + "x" == "y""#,
                Context::Span,
                "arithmetic is only defined on numbers",
            ),
            (
                r#"set(name, "x")"#,
                Context::Span,
                "editor `set` cannot be used",
            ),
            (
                "time_unix_nano > 0",
                Context::Span,
                "path `time_unix_nano` is not supported",
            ),
            (
                "status.code == 1",
                Context::SpanEvent,
                "path `status.code` is not supported by tailgate in spanevent",
            ),
            ("name == 1 name", Context::Span, "after the end"),
            ("name ~ 1", Context::Span, "unexpected character `~`"),
            ("attributes[1] == 2", Context::Span, "only string keys"),
            (
                "99999999999999999999 > 1",
                Context::Span,
                "does not fit 64 bits",
            ),
        ];
        for (text, context, want) in cases {
            let e = err(text, context);
            assert!(e.contains(want), "{text}: {e}");
        }
    }

    /// A parse error names the token it stopped at, whatever kind of token it is.
    #[test]
    fn errors_name_the_token_found() {
        let cases = [
            (
                r#"name == "x" foo"#,
                "found `foo` after the end of the condition",
            ),
            (
                r#"name == "x" "y""#,
                "found string \"y\" after the end of the condition",
            ),
            (
                r#"name == "x" 7"#,
                "found `7` after the end of the condition",
            ),
            (
                r#"name == "x" 2.5"#,
                "found `2.5` after the end of the condition",
            ),
            (
                r#"name == "x" 0xab"#,
                "found a bytes literal after the end of the condition",
            ),
            (
                r#"name == "x" )"#,
                "found `)` after the end of the condition",
            ),
            (
                r#"(name == "x""#,
                "expected `)`, found the end of the condition",
            ),
            (
                "name ==",
                "expected a value, found the end of the condition",
            ),
            (
                "name == -x",
                "a sign must be followed by a number, found `x`",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(err(text, Context::Span), want, "{text}");
        }
    }

    /// Bytes literals are an even, non-empty run of hex digits (OTTL decodes them with Go's
    /// `hex.DecodeString`); a float may start with its point, as in OTTL's grammar.
    #[test]
    fn bytes_and_number_literals_follow_ottls_lexer() {
        assert_eq!(
            err(r#"attributes["x"] == 0x"#, Context::Span),
            "invalid bytes literal `0x`"
        );
        assert_eq!(
            err(r#"attributes["x"] == 0xabc"#, Context::Span),
            "invalid bytes literal `0xabc`"
        );
        let Cond::Compare(_, _, Expr::Lit(Lit::Bytes(b))) =
            ok(r#"attributes["x"] == 0XcAfE"#, Context::Span)
        else {
            panic!()
        };
        assert_eq!(b, [0xca, 0xfe]);
        let Cond::Compare(_, CmpOp::Lt, Expr::Lit(Lit::Float(f))) =
            ok(r#"attributes["x"] < .5"#, Context::Span)
        else {
            panic!()
        };
        assert_eq!(f, 0.5);
    }

    /// The literal a condition compares with, and the operator.
    fn literal(text: &str) -> (CmpOp, Lit) {
        match ok(text, Context::Span) {
            Cond::Compare(_, op, Expr::Lit(lit)) => (op, lit),
            other => panic!("{text}: {other:?}"),
        }
    }

    /// Signs, exponents and every comparison operator, as OTTL's grammar has them: a float has
    /// digits after its point (`5.` is not a number) and an exponent only after a point (`5e3`
    /// is the int 5 followed by the name `e3`).
    #[test]
    fn signed_numbers_exponents_and_operators_parse_as_in_ottl() {
        let x = |rest: &str| format!("attributes[\"x\"] {rest}");
        for (text, want) in [
            (x("== -5"), (CmpOp::Eq, Lit::Int(-5))),
            (x("!= +5"), (CmpOp::Ne, Lit::Int(5))),
            (x("< -1.5e3"), (CmpOp::Lt, Lit::Float(-1500.0))),
            (x("<= +2.5"), (CmpOp::Le, Lit::Float(2.5))),
            (x("> 2.5e-3"), (CmpOp::Gt, Lit::Float(0.0025))),
            (x(">= 1.5E+2"), (CmpOp::Ge, Lit::Float(150.0))),
        ] {
            assert_eq!(literal(&text), want, "{text}");
        }
        assert_eq!(
            err(&x("== 5."), Context::Span),
            "found `.` after the end of the condition"
        );
        assert_eq!(
            err(&x("== 5e3"), Context::Span),
            "found `e3` after the end of the condition"
        );
        for keyword in ["and", "or", "not"] {
            assert_eq!(
                err(&x(&format!("== {keyword}")), Context::Span),
                format!("expected a value, found `{keyword}`")
            );
        }
    }

    /// The enum names OTTL defines stand for the proto's values: `SpanKind` 0-5 and
    /// `Status.StatusCode` 0-2.
    #[test]
    fn every_enum_name_is_its_proto_value() {
        for (name, value) in [
            ("SPAN_KIND_UNSPECIFIED", 0),
            ("SPAN_KIND_INTERNAL", 1),
            ("SPAN_KIND_SERVER", 2),
            ("SPAN_KIND_CLIENT", 3),
            ("SPAN_KIND_PRODUCER", 4),
            ("SPAN_KIND_CONSUMER", 5),
            ("STATUS_CODE_UNSET", 0),
            ("STATUS_CODE_OK", 1),
            ("STATUS_CODE_ERROR", 2),
        ] {
            assert_eq!(
                literal(&format!("kind == {name}")),
                (CmpOp::Eq, Lit::Int(value)),
                "{name}"
            );
        }
    }

    #[test]
    fn string_escapes_follow_go() {
        let Cond::Compare(_, _, Expr::Lit(Lit::Str(s))) =
            ok(r#"name == "a\"b\\c\n\u00e9""#, Context::Span)
        else {
            panic!()
        };
        assert_eq!(s, "a\"b\\c\né".as_bytes());
    }
}
