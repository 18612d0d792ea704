//! The `resource` and `attributes` processors' actions, applied to an encoded message's
//! repeated `KeyValue` attributes field: `insert` (only when the key is absent), `update` (only
//! when present), `upsert`, `delete` and `hash` (the value replaced by the lowercase hex SHA-256
//! of its bytes, as the Collector computes it: a string's UTF-8, a bool as one byte 1 or 0, an
//! int or double as 8 little-endian bytes; other types become the empty string). A new value is
//! the action's `value` or a copy of the `from_attribute` attribute's (no action when that
//! attribute is absent).
//!
//! [`apply`] returns `None` when no action changed anything, so callers keep the original bytes;
//! otherwise the message is written again with its other fields as they were and the
//! attributes where the first of them stood, untouched attributes byte for byte.

use serde::Deserialize;

use crate::otlp::wire::{put_len_header, put_varint, FieldReader, Value};
use crate::otlp::WireError;
use crate::yaml::ConfigError;

/// One item of `actions`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ActionConfig {
    pub key: String,
    pub action: String,
    pub value: Option<serde_yaml::Value>,
    pub from_attribute: String,
    /// Not supported (client metadata): a config error.
    pub from_context: String,
    /// `extract`'s regex: not supported.
    pub pattern: String,
    /// `convert`'s type: not supported.
    pub converted_type: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Insert,
    Update,
    Upsert,
    Delete,
    Hash,
}

/// Where a new value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// An encoded `AnyValue`.
    Value(Vec<u8>),
    FromAttribute(Vec<u8>),
    None,
}

/// One action, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionSettings {
    pub key: Vec<u8>,
    pub action: Action,
    pub source: Source,
}

impl ActionConfig {
    pub fn settings(&self, path: &str, errors: &mut Vec<ConfigError>) -> Option<ActionSettings> {
        let before = errors.len();
        if self.key.is_empty() {
            errors.push(ConfigError::new(format!("{path}.key"), "key is required"));
        }
        let action = match self.action.as_str() {
            "insert" => Action::Insert,
            "update" => Action::Update,
            "upsert" => Action::Upsert,
            "delete" => Action::Delete,
            "hash" => Action::Hash,
            "extract" | "convert" => {
                errors.push(ConfigError::new(
                    format!("{path}.action"),
                    format!("action `{}` is not supported by tailgate; use insert, update, upsert, delete or hash", self.action),
                ));
                return None;
            }
            other => {
                errors.push(ConfigError::new(
                    format!("{path}.action"),
                    format!("unknown action `{other}`; use insert, update, upsert, delete or hash"),
                ));
                return None;
            }
        };
        if !self.from_context.is_empty() {
            errors.push(ConfigError::new(
                format!("{path}.from_context"),
                "from_context is not supported by tailgate; use value or from_attribute",
            ));
        }
        for (field, set) in [
            ("pattern", !self.pattern.is_empty()),
            ("converted_type", !self.converted_type.is_empty()),
        ] {
            if set {
                errors.push(ConfigError::new(
                    format!("{path}.{field}"),
                    format!("{field} belongs to an action tailgate does not support"),
                ));
            }
        }
        let needs_value = matches!(action, Action::Insert | Action::Update | Action::Upsert);
        let source = match (&self.value, self.from_attribute.is_empty()) {
            (Some(_), false) => {
                errors.push(ConfigError::new(
                    path,
                    "set one of value and from_attribute, not both",
                ));
                Source::None
            }
            (Some(v), true) => match encode_yaml_value(v) {
                Some(encoded) => Source::Value(encoded),
                None => {
                    errors.push(ConfigError::new(
                        format!("{path}.value"),
                        "value must be a string, a number or a bool",
                    ));
                    Source::None
                }
            },
            (None, false) => Source::FromAttribute(self.from_attribute.as_bytes().to_vec()),
            (None, true) => Source::None,
        };
        if needs_value && source == Source::None && errors.len() == before {
            errors.push(ConfigError::new(
                path,
                format!("action `{}` needs value or from_attribute", self.action),
            ));
        }
        if !needs_value && source != Source::None {
            errors.push(ConfigError::new(
                path,
                format!("action `{}` takes no value or from_attribute", self.action),
            ));
        }
        (errors.len() == before).then(|| ActionSettings {
            key: self.key.as_bytes().to_vec(),
            action,
            source,
        })
    }
}

/// A YAML scalar as an encoded `AnyValue`.
fn encode_yaml_value(v: &serde_yaml::Value) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    match v {
        serde_yaml::Value::String(s) => put_bytes(&mut out, 1, s.as_bytes()),
        serde_yaml::Value::Bool(b) => {
            put_varint(&mut out, 2 << 3);
            put_varint(&mut out, *b as u64);
        }
        serde_yaml::Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                put_varint(&mut out, 3 << 3);
                put_varint(&mut out, i as u64);
            } else {
                put_varint(&mut out, (4 << 3) | 1);
                out.extend_from_slice(&n.as_f64()?.to_le_bytes());
            }
        }
        _ => return None,
    }
    Some(out)
}

fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_len_header(out, field, bytes.len());
    out.extend_from_slice(bytes);
}

/// An attribute as found (its original `KeyValue` field bytes kept while untouched).
struct Attribute<'a> {
    key: &'a [u8],
    value: Vec<u8>,
    /// The whole field (header and `KeyValue`) as it came; `None` once changed.
    original: Option<&'a [u8]>,
}

/// Applies `actions` to the repeated `KeyValue` field `field` of `msg`: the new encoding, or
/// `None` when nothing changed.
pub fn apply<'a>(
    msg: &'a [u8],
    field: u32,
    actions: &'a [ActionSettings],
) -> Result<Option<Vec<u8>>, WireError> {
    // The message's other fields, in order, and where the attributes stand among them.
    let mut others: Vec<&[u8]> = Vec::new();
    let mut attributes_at: Option<usize> = None;
    let mut attributes: Vec<Attribute<'a>> = Vec::new();
    let mut reader = FieldReader::new(msg);
    loop {
        let start = reader.offset();
        let Some((f, value, _)) = reader.next()? else {
            break;
        };
        let raw = &msg[start..reader.offset()];
        match (f == field, value) {
            (true, Value::Len(kv)) => {
                attributes_at.get_or_insert(others.len());
                let (key, value) = key_value(kv)?;
                attributes.push(Attribute {
                    key,
                    value: value.to_vec(),
                    original: Some(raw),
                });
            }
            _ => others.push(raw),
        }
    }
    let mut changed = false;
    for a in actions {
        let at = attributes.iter().position(|x| x.key == a.key.as_slice());
        let new_value = match &a.source {
            Source::Value(v) => Some(v.clone()),
            Source::FromAttribute(k) => attributes
                .iter()
                .find(|x| x.key == k.as_slice())
                .map(|x| x.value.clone()),
            Source::None => None,
        };
        match (a.action, at) {
            (Action::Insert, None) | (Action::Upsert, None) => {
                if let Some(value) = new_value {
                    attributes.push(Attribute {
                        key: &a.key,
                        value,
                        original: None,
                    });
                    changed = true;
                }
            }
            (Action::Update, Some(i)) | (Action::Upsert, Some(i)) => {
                if let Some(value) = new_value {
                    attributes[i].value = value;
                    attributes[i].original = None;
                    changed = true;
                }
            }
            (Action::Delete, Some(i)) => {
                attributes.remove(i);
                changed = true;
            }
            (Action::Hash, Some(i)) => {
                let hashed = hash_value(&attributes[i].value)?;
                let mut value = Vec::new();
                put_bytes(&mut value, 1, hashed.as_bytes());
                attributes[i].value = value;
                attributes[i].original = None;
                changed = true;
            }
            _ => {}
        }
    }
    if !changed {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(msg.len() + 64);
    let at = attributes_at.unwrap_or(others.len());
    for (i, raw) in others.iter().enumerate() {
        if i == at {
            write_attributes(&mut out, field, &attributes);
        }
        out.extend_from_slice(raw);
    }
    if at >= others.len() {
        write_attributes(&mut out, field, &attributes);
    }
    Ok(Some(out))
}

fn write_attributes(out: &mut Vec<u8>, field: u32, attributes: &[Attribute<'_>]) {
    for a in attributes {
        if let Some(raw) = a.original {
            out.extend_from_slice(raw);
            continue;
        }
        let mut kv = Vec::with_capacity(a.key.len() + a.value.len() + 6);
        put_bytes(&mut kv, 1, a.key);
        put_bytes(&mut kv, 2, &a.value);
        put_bytes(out, field, &kv);
    }
}

/// A `KeyValue`'s key and encoded `AnyValue`.
fn key_value(kv: &[u8]) -> Result<(&[u8], &[u8]), WireError> {
    let (mut key, mut value): (&[u8], &[u8]) = (&[], &[]);
    let mut reader = FieldReader::new(kv);
    while let Some((f, v, _)) = reader.next()? {
        match (f, v) {
            (1, Value::Len(k)) => key = k,
            (2, Value::Len(x)) => value = x,
            _ => {}
        }
    }
    Ok((key, value))
}

/// The Collector's `hash` of an encoded `AnyValue`.
fn hash_value(any: &[u8]) -> Result<String, WireError> {
    let mut bytes: Option<Vec<u8>> = None;
    let mut reader = FieldReader::new(any);
    while let Some((f, v, _)) = reader.next()? {
        bytes = match (f, v) {
            (1, Value::Len(s)) => Some(s.to_vec()),
            (2, Value::Varint(b)) => Some(vec![(b != 0) as u8]),
            (3, Value::Varint(i)) => Some(i.to_le_bytes().to_vec()),
            (4, Value::Fixed64(d)) => Some(d.to_le_bytes().to_vec()),
            _ => None,
        };
    }
    Ok(match bytes {
        Some(b) => ring::digest::digest(&ring::digest::SHA256, &b)
            .as_ref()
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect(),
        None => String::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use prost::Message;

    fn kv(key: &str, v: any_value::Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(v) }),
            ..Default::default()
        }
    }

    fn actions(yaml: &str) -> Vec<ActionSettings> {
        let list: Vec<ActionConfig> = serde_yaml::from_str(yaml).unwrap();
        let mut errors = vec![];
        let out = list
            .iter()
            .enumerate()
            .filter_map(|(i, a)| a.settings(&format!("a[{i}]"), &mut errors))
            .collect();
        assert!(errors.is_empty(), "{errors:?}");
        out
    }

    fn get(resource: &Resource, key: &str) -> Option<any_value::Value> {
        resource
            .attributes
            .iter()
            .find(|a| a.key == key)
            .and_then(|a| a.value.clone()?.value)
    }

    #[test]
    fn actions_follow_the_collectors_rules() {
        use any_value::Value::*;
        let resource = Resource {
            attributes: vec![
                kv("service.name", StringValue("api".into())),
                kv("env", StringValue("dev".into())),
                kv("user.email", StringValue("a@b.c".into())),
                kv("drop.me", BoolValue(true)),
                kv("n", IntValue(42)),
            ],
            dropped_attributes_count: 3,
            ..Default::default()
        };
        let bytes = resource.encode_to_vec();
        let out = apply(
            &bytes,
            1,
            &actions(
                "
- {key: env, action: insert, value: prod}          # present: no insert
- {key: region, action: insert, value: eu-west-1}
- {key: service.name, action: update, value: checkout}
- {key: missing, action: update, value: x}        # absent: no update
- {key: team, action: upsert, from_attribute: env}
- {key: copy, action: insert, from_attribute: nowhere}
- {key: drop.me, action: delete}
- {key: user.email, action: hash}
- {key: n, action: hash}
- {key: shards, action: upsert, value: 4}
",
            ),
        )
        .unwrap()
        .unwrap();
        let got = Resource::decode(&out[..]).unwrap();
        assert_eq!(got.dropped_attributes_count, 3);
        assert_eq!(get(&got, "env"), Some(StringValue("dev".into())));
        assert_eq!(get(&got, "region"), Some(StringValue("eu-west-1".into())));
        assert_eq!(
            get(&got, "service.name"),
            Some(StringValue("checkout".into()))
        );
        assert_eq!(get(&got, "missing"), None);
        assert_eq!(get(&got, "team"), Some(StringValue("dev".into())));
        assert_eq!(get(&got, "copy"), None);
        assert_eq!(get(&got, "drop.me"), None);
        assert_eq!(get(&got, "shards"), Some(IntValue(4)));
        // sha256("a@b.c") and sha256(42 as 8 little-endian bytes).
        let hex = |b: &[u8]| -> String {
            ring::digest::digest(&ring::digest::SHA256, b)
                .as_ref()
                .iter()
                .map(|x| format!("{x:02x}"))
                .collect()
        };
        assert_eq!(get(&got, "user.email"), Some(StringValue(hex(b"a@b.c"))));
        assert_eq!(get(&got, "n"), Some(StringValue(hex(&42u64.to_le_bytes()))));
        assert_eq!(hex(b"a@b.c").len(), 64, "hex of SHA-256 is 64 characters");
    }

    #[test]
    fn nothing_changed_means_no_new_encoding() {
        let bytes = Resource {
            attributes: vec![kv("env", any_value::Value::StringValue("dev".into()))],
            ..Default::default()
        }
        .encode_to_vec();
        let none = apply(
            &bytes,
            1,
            &actions("[{key: env, action: insert, value: x}, {key: gone, action: delete}]"),
        )
        .unwrap();
        assert!(none.is_none());
    }

    #[test]
    fn unsupported_actions_and_missing_values_are_errors_at_their_path() {
        let list: Vec<ActionConfig> = serde_yaml::from_str(
            "[{key: a, action: extract, pattern: x}, {key: b, action: insert}, {key: c, action: upsert, value: 1, from_attribute: d}, {key: e, action: insert, from_context: auth.x}]",
        )
        .unwrap();
        let mut errors = vec![];
        for (i, a) in list.iter().enumerate() {
            a.settings(&format!("processors.attributes.actions[{i}]"), &mut errors);
        }
        let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert!(
            text[0].starts_with(
                "processors.attributes.actions[0].action: action `extract` is not supported"
            ),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|e| e
                    .starts_with("processors.attributes.actions[1]: action `insert` needs value")),
            "{text:?}"
        );
        assert!(
            text.iter().any(|e| e.starts_with(
                "processors.attributes.actions[2]: set one of value and from_attribute"
            )),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|e| e.starts_with("processors.attributes.actions[3].from_context")),
            "{text:?}"
        );
    }
}
