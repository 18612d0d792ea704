//! Go (RE2) regular expressions on top of the `regex` crate.
//!
//! The Collector compiles `string_attribute` patterns and OTTL `IsMatch` patterns with Go's
//! `regexp`, and matches them unanchored. The `regex` crate shares RE2's syntax and semantics
//! with a few differences that change which strings match; this module removes them before
//! compiling:
//!
//! - Perl classes are ASCII in Go and Unicode in `regex`: `\d`, `\w`, `\s` (and their negations)
//!   are rewritten to Go's ASCII sets, and `\b`/`\B` to ASCII word boundaries.
//! - Inside a bracket class, Go reads `[`, `&&`, `--` and `~~` literally where `regex` would
//!   nest classes or apply set operations; those characters are escaped. POSIX classes such as
//!   `[[:alpha:]]` are kept.
//! - A `]` right after `[` or `[^` is a literal in Go.
//!
//! Strings that are not valid UTF-8 are matched after replacing invalid bytes with U+FFFD, as Go
//! decodes them.

use regex::Regex;

/// Compiles a Go regular expression.
pub fn compile(pattern: &str) -> Result<Regex, regex::Error> {
    Regex::new(&translate(pattern))
}

fn translate(pattern: &str) -> String {
    // A single pass over the pattern: the cases share the position and the class state.
    let mut out = String::with_capacity(pattern.len() + 16);
    let mut chars = pattern.chars().peekable();
    let mut in_class = false;
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                let Some(next) = chars.next() else {
                    out.push('\\');
                    break;
                };
                let replacement = match (next, in_class) {
                    ('d', false) => Some("[0-9]"),
                    ('d', true) => Some("0-9"),
                    ('D', _) => Some("[^0-9]"),
                    ('w', false) => Some("[0-9A-Za-z_]"),
                    ('w', true) => Some("0-9A-Za-z_"),
                    ('W', _) => Some("[^0-9A-Za-z_]"),
                    ('s', false) => Some(r"[\t\n\f\r ]"),
                    ('s', true) => Some(r"\t\n\f\r "),
                    ('S', _) => Some(r"[^\t\n\f\r ]"),
                    ('b', false) => Some(r"(?-u:\b)"),
                    _ => None,
                };
                match replacement {
                    Some(r) => out.push_str(r),
                    None => {
                        out.push('\\');
                        out.push(next);
                    }
                }
            }
            '[' if !in_class => {
                in_class = true;
                out.push('[');
                if chars.peek() == Some(&'^') {
                    chars.next();
                    out.push('^');
                }
                if chars.peek() == Some(&']') {
                    chars.next();
                    out.push_str(r"\]");
                }
            }
            '[' => {
                // `[:name:]` is a POSIX class in both dialects; any other `[` is literal in Go.
                if chars.peek() == Some(&':') {
                    out.push('[');
                    for c in chars.by_ref() {
                        out.push(c);
                        if c == ']' {
                            break;
                        }
                    }
                } else {
                    out.push_str(r"\[");
                }
            }
            ']' if in_class => {
                in_class = false;
                out.push(']');
            }
            '&' | '~' if in_class => {
                out.push('\\');
                out.push(c);
            }
            '-' if in_class && chars.peek() == Some(&'-') => out.push_str(r"\-"),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perl_classes_are_ascii_as_in_go() {
        let cases = [
            (r"^\d+$", "123", true),
            (r"^\d+$", "١٢٣", false), // Arabic-Indic digits: \d in Go is [0-9]
            (r"^\w+$", "héllo", false),
            (r"^\w+$", "hello_1", true),
            (r"^\s$", "\u{a0}", false),
            (r"^\s$", "\t", true),
            (r"^[\d.]+$", "1.5", true),
            (r"^[^\d]+$", "abc", true),
            (r"^[\D]+$", "abc", true),
            // An ASCII boundary lies between `x` and `é`; a Unicode one would not.
            (r"x\b", "xé", true),
            (r"\bfoo\b", "a foo b", true),
            (r"^\S+$", "a\u{a0}b", true),
            // The same inside classes, and the negations, on characters Unicode classes differ on.
            (r"^[\d.]+$", "١٢٣", false),
            (r"^\D$", "١", true),
            (r"^[\w]+$", "é", false),
            (r"^\W$", "é", true),
            (r"^[\s]$", "\u{a0}", false),
            (r"^\S$", "\u{a0}", true),
            (r"^[\D]$", "١", true),
            (r"^[\W]$", "é", true),
            (r"^[\S]$", "\u{a0}", true),
        ];
        for (pattern, text, want) in cases {
            assert_eq!(
                compile(pattern).unwrap().is_match(text),
                want,
                "{pattern} on {text:?}"
            );
        }
    }

    #[test]
    fn bracket_quirks_follow_go() {
        let cases = [
            ("^[]a]+$", "]a]", true),
            ("^[^]a]+$", "bc", true),
            ("^[a[]+$", "a[", true),
            ("^[a&&b]+$", "&", true),
            ("^[a~~b]+$", "~", true),
            ("^[[:digit:]]+$", "42", true),
            // After a POSIX class the bracket class goes on: `&&` there is still literal.
            ("^[[:digit:]&&a]+$", "1&a", true),
            // A class ends at its `]`: what follows is outside it again.
            (r"^[a]\d$", "a5", true),
            ("^[a][b]$", "ab", true),
            ("^[a]&$", "a&", true),
            // `--` in a class is two literal dashes in Go (set difference in `regex`).
            ("^[a-z--]+$", "a-b", true),
            ("^[a-z--]+$", "a+b", false),
        ];
        for (pattern, text, want) in cases {
            let re = compile(pattern).unwrap_or_else(|e| panic!("{pattern}: {e}"));
            assert_eq!(re.is_match(text), want, "{pattern} on {text:?}");
        }
    }

    #[test]
    fn matching_is_unanchored() {
        assert!(compile("health").unwrap().is_match("/api/healthz"));
        assert!(!compile("^health$").unwrap().is_match("/api/healthz"));
    }

    #[test]
    fn invalid_patterns_are_errors() {
        assert!(compile("(").is_err());
        assert!(compile("a{2,1}").is_err());
    }
}
