//! Adding attributes to encoded messages without re-encoding them: a repeated field may appear
//! anywhere in a protobuf message and its elements are concatenated, so one more `KeyValue`
//! appended after a message's last byte is one more attribute. Used by decision attribution (the
//! deciding policy as a scope attribute, as the Collector's record-policy feature writes it) and
//! `dry_run` (`tailsampling.sampled` on every span).

use std::sync::Arc;

use bytes::Bytes;

use super::request::Origin;
use super::wire::{len_field_size, put_len_header, put_varint};
use super::write::{framed_spans, put_framed_span};

/// `InstrumentationScope.attributes`.
const SCOPE_ATTRIBUTES: u32 = 3;
/// `Span.attributes`.
const SPAN_ATTRIBUTES: u32 = 9;

/// An encoded `KeyValue` with a string value.
pub fn string_attribute(key: &str, value: &str) -> Vec<u8> {
    // AnyValue { string_value = 1 }
    let any_len = len_field_size(value.len());
    let mut out = Vec::with_capacity(len_field_size(key.len()) + len_field_size(any_len));
    put_len_header(&mut out, 1, key.len());
    out.extend_from_slice(key.as_bytes());
    put_len_header(&mut out, 2, any_len);
    put_len_header(&mut out, 1, value.len());
    out.extend_from_slice(value.as_bytes());
    out
}

/// An encoded `KeyValue` with a bool value.
pub fn bool_attribute(key: &str, value: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(len_field_size(key.len()) + 4);
    put_len_header(&mut out, 1, key.len());
    out.extend_from_slice(key.as_bytes());
    // AnyValue { bool_value = 2 }: a two-byte message.
    put_len_header(&mut out, 2, 2);
    out.push(2 << 3);
    put_varint(&mut out, u64::from(value));
    out
}

/// `message` with one encoded `KeyValue` appended as repeated field `field`.
fn with_attribute(message: &[u8], field: u32, key_value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + len_field_size(key_value.len()));
    out.extend_from_slice(message);
    put_len_header(&mut out, field, key_value.len());
    out.extend_from_slice(key_value);
    out
}

/// The same origin with `key_value` added to its scope's attributes (a scope is created when
/// the spans had none). The resource is shared, not copied.
pub fn with_scope_attribute(origin: &Origin, key_value: &[u8]) -> Arc<Origin> {
    let scope = with_attribute(
        origin.scope.as_deref().unwrap_or_default(),
        SCOPE_ATTRIBUTES,
        key_value,
    );
    Arc::new(Origin {
        resource: origin.resource.clone(),
        resource_schema_url: origin.resource_schema_url.clone(),
        scope: Some(Bytes::from(scope)),
        scope_schema_url: origin.scope_schema_url.clone(),
    })
}

/// A framed run of spans (see [`put_framed_span`]) with `key_value` added to every span's
/// attributes.
pub fn with_span_attribute(run: &[u8], key_value: &[u8]) -> Box<[u8]> {
    let extra = len_field_size(key_value.len());
    let mut out = Vec::with_capacity(run.len() + run.len() / 8 + 16 * extra);
    for span in framed_spans(run) {
        put_framed_span(&mut out, &with_attribute(span, SPAN_ATTRIBUTES, key_value));
    }
    out.into_boxed_slice()
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use opentelemetry_proto::tonic::common::v1::{InstrumentationScope, KeyValue};
    use opentelemetry_proto::tonic::trace::v1::{ScopeSpans, Span};
    use prost::Message;

    fn value_of(kv: &KeyValue) -> Option<&Value> {
        kv.value.as_ref().and_then(|v| v.value.as_ref())
    }

    #[test]
    fn a_scope_attribute_is_appended_to_the_existing_ones() {
        let scope = InstrumentationScope {
            name: "lib".into(),
            version: "1.2".into(),
            attributes: vec![KeyValue {
                key: "a".into(),
                ..Default::default()
            }],
            dropped_attributes_count: 0,
        };
        let origin = Origin {
            resource: None,
            resource_schema_url: Bytes::new(),
            scope: Some(Bytes::from(scope.encode_to_vec())),
            scope_schema_url: Bytes::from_static(b"https://schema"),
        };
        let annotated =
            with_scope_attribute(&origin, &string_attribute("tailsampling.policy", "errors"));
        let decoded = InstrumentationScope::decode(annotated.scope.as_deref().unwrap()).unwrap();
        assert_eq!(decoded.name, "lib");
        assert_eq!(decoded.version, "1.2");
        assert_eq!(decoded.attributes.len(), 2);
        assert_eq!(decoded.attributes[1].key, "tailsampling.policy");
        assert_eq!(
            value_of(&decoded.attributes[1]),
            Some(&Value::StringValue("errors".into()))
        );
        assert_eq!(&annotated.scope_schema_url[..], b"https://schema");
    }

    #[test]
    fn spans_without_a_scope_get_one_holding_the_attribute() {
        let origin = Origin {
            resource: None,
            resource_schema_url: Bytes::new(),
            scope: None,
            scope_schema_url: Bytes::new(),
        };
        let annotated = with_scope_attribute(&origin, &bool_attribute("k", true));
        let decoded = InstrumentationScope::decode(annotated.scope.as_deref().unwrap()).unwrap();
        assert_eq!(decoded.attributes.len(), 1);
        assert_eq!(
            value_of(&decoded.attributes[0]),
            Some(&Value::BoolValue(true))
        );
    }

    #[test]
    fn every_span_of_a_run_gets_the_attribute_and_keeps_its_own_fields() {
        let spans: Vec<Span> = (0..3u8)
            .map(|i| Span {
                trace_id: vec![i; 16],
                span_id: vec![i; 8],
                name: format!("span-{i}"),
                attributes: vec![KeyValue {
                    key: "own".into(),
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect();
        let mut run = Vec::new();
        for span in &spans {
            put_framed_span(&mut run, &span.encode_to_vec());
        }
        for sampled in [false, true] {
            let annotated =
                with_span_attribute(&run, &bool_attribute("tailsampling.sampled", sampled));
            let decoded = ScopeSpans::decode(&annotated[..]).unwrap();
            assert_eq!(decoded.spans.len(), 3);
            for (got, want) in decoded.spans.iter().zip(&spans) {
                assert_eq!(got.name, want.name);
                assert_eq!(got.trace_id, want.trace_id);
                assert_eq!(got.attributes.len(), 2);
                assert_eq!(got.attributes[0].key, "own");
                assert_eq!(got.attributes[1].key, "tailsampling.sampled");
                assert_eq!(
                    value_of(&got.attributes[1]),
                    Some(&Value::BoolValue(sampled))
                );
            }
        }
    }
}
