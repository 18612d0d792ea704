//! The Collector's YAML conventions, shared by every component's config: errors that carry the
//! YAML path they sit at, blocks parsed on their own with path-aware errors, empty blocks meaning
//! "all defaults", Go duration strings, and `${env:NAME}` expansion.
//!
//! This is the bottom of the config side: component modules use it to parse and validate their own
//! blocks; nothing here knows any component.

pub mod duration;

use std::fmt;

use serde::de::DeserializeOwned;
use serde::Deserialize;

/// One problem in the config, at a YAML path such as
/// `processors.tail_sampling.policies[2].latency.threshold_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Deserializes one block, reporting errors at `path` + the path inside the block. An empty
/// block (`otlp:` with nothing under it) means "all defaults", as in the Collector.
pub fn parse_block<T: DeserializeOwned + Default>(
    path: &str,
    value: serde_yaml::Value,
) -> Result<T, ConfigError> {
    if value.is_null() {
        return Ok(T::default());
    }
    serde_path_to_error::deserialize(value).map_err(|err| {
        let inner = err.path().to_string();
        let full = if inner == "." {
            path.to_string()
        } else {
            format!("{path}.{inner}")
        };
        ConfigError::new(full, err.into_inner().to_string())
    })
}

/// Serde helper: a block that is present but empty (`grpc:`) is `Some(default)`, not `None`.
pub fn null_as_default<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Some(Option::<T>::deserialize(d)?.unwrap_or_default()))
}

/// Expands `${env:NAME}`, `${NAME}` and `${env:NAME:-default}` from the environment, as the
/// Collector's config resolver does. `$$` is a literal `$`.
pub fn expand_env(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        if rest.starts_with("$$") {
            out.push('$');
            rest = &rest[2..];
        } else if rest.starts_with("${") {
            let end = rest
                .find('}')
                .ok_or_else(|| format!("unterminated `${{` in `{}`", first_line(rest)))?;
            let inner = &rest[2..end];
            let inner = inner.strip_prefix("env:").unwrap_or(inner);
            let (name, default) = match inner.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (inner, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!(
                    "`${{{inner}}}` is not an environment variable reference"
                ));
            }
            match (lookup(name), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {} // the Collector expands an unset variable to empty
            }
            rest = &rest[end + 1..];
        } else {
            out.push('$');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

/// Checks that a listen endpoint is `host:port` (the host may be empty, meaning every
/// interface, as in Go).
pub fn check_listen_endpoint(endpoint: &str, path: &str, errors: &mut Vec<ConfigError>) {
    let ok = endpoint
        .rsplit_once(':')
        .is_some_and(|(_, port)| port.parse::<u16>().is_ok());
    if !ok {
        errors.push(ConfigError::new(
            path,
            format!("endpoint `{endpoint}` must be host:port"),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_references_expand() {
        let lookup = |name: &str| (name == "TEMPO").then(|| "tempo:4317".to_string());
        assert_eq!(
            expand_env("a: ${env:TEMPO}\nb: ${MISSING:-dflt}\nc: $$x", lookup).unwrap(),
            "a: tempo:4317\nb: dflt\nc: $x"
        );
        assert!(expand_env("a: ${env:TEMPO", lookup).is_err());
    }

    #[test]
    fn endpoints_must_have_a_port() {
        let mut errors = vec![];
        check_listen_endpoint("localhost:8888", "a", &mut errors);
        check_listen_endpoint(":4317", "b", &mut errors);
        check_listen_endpoint("localhost", "c", &mut errors);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].path, "c");
    }
}
