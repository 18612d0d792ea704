use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, EntityRef, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::{Event, Link};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use prost::Message;

use super::*;
use crate::otlp::parse_export_request;
use crate::otlp::request::{admit, Admitted, ParsedRequest};
use crate::otlp::testing::{array, int, kv, kvlist, text};

/// Where the damage goes: `resource_spans[1].scope_spans[0].spans[2]` (and its resource and
/// scope) carries a 3-byte marker string at each place; every other span is clean.
const DAMAGED_SPAN: &str = "resource_spans[1].scope_spans[0].spans[2]";

fn span(n: u8, marked: bool) -> Span {
    let m = |marker: &str, clean: &str| {
        if marked {
            marker.to_string()
        } else {
            clean.to_string()
        }
    };
    Span {
        trace_id: vec![n; 16],
        span_id: vec![n; 8],
        name: m("@N@", "op"),
        kind: 2,
        start_time_unix_nano: 1_000,
        end_time_unix_nano: 2_000,
        attributes: vec![
            kv("http.method", text("GET")),
            kv("k", text(&m("@V@", "v"))),
            kv("list", array(vec![int(1), text(&m("@A@", "a"))])),
            kv("map", kvlist(vec![("inner", int(3))])),
        ],
        events: vec![Event {
            time_unix_nano: 1_500,
            name: m("@E@", "e"),
            attributes: vec![kv("x", int(1))],
            dropped_attributes_count: 0,
        }],
        links: vec![Link {
            trace_id: vec![9; 16],
            span_id: vec![9; 8],
            trace_state: "a=b".into(),
            attributes: vec![kv("l", text("x"))],
            ..Default::default()
        }],
        status: Some(Status {
            code: 2,
            message: "boom".into(),
        }),
        ..Default::default()
    }
}

fn request_with_markers() -> ExportTraceServiceRequest {
    let resource_spans = (0..2u8)
        .map(|r| ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name", text(if r == 1 { "@R@" } else { "api" }))],
                ..Default::default()
            }),
            scope_spans: (0..2u8)
                .map(|s| ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: if r == 1 && s == 0 { "@S@" } else { "lib" }.into(),
                        version: "1.0".into(),
                        ..Default::default()
                    }),
                    spans: (0..4u8)
                        .map(|i| span(1 + r * 16 + s * 4 + i, r == 1 && s == 0 && i == 2))
                        .collect(),
                    schema_url: String::new(),
                })
                .collect(),
            schema_url: "https://opentelemetry.io/schemas/1.21.0".into(),
        })
        .collect();
    ExportTraceServiceRequest { resource_spans }
}

fn body() -> Vec<u8> {
    request_with_markers().encode_to_vec()
}

/// The offset of the only occurrence of `marker`.
fn find(body: &[u8], marker: &[u8]) -> usize {
    let hits: Vec<usize> = body
        .windows(marker.len())
        .enumerate()
        .filter(|(_, w)| *w == marker)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(hits.len(), 1, "marker {marker:?}");
    hits[0]
}

fn with_bad_utf8(marker: &[u8]) -> Vec<u8> {
    let mut body = body();
    let at = find(&body, marker);
    body[at..at + 3].copy_from_slice(b"\xff\xfe\xfd");
    body
}

/// The marker string's length claims more than its message holds: its length byte gets the
/// continuation bit, so the length runs into the marker (`@` makes it 8,195 bytes).
fn with_overlong_length(marker: &[u8]) -> Vec<u8> {
    let mut body = body();
    let at = find(&body, marker);
    assert_eq!(body[at - 1], 3);
    body[at - 1] = 0x83;
    body
}

/// The six kinds of nested damage: (marker, what, path of the message whose framing breaks, path
/// of the string field).
const DAMAGE: &[(&[u8], &str, &str, &str)] = &[
    (
        b"@V@",
        "attribute value",
        ".attributes[1].value",
        ".attributes[1].value.string_value",
    ),
    (b"@N@", "span name", "", ".name"),
    (
        b"@R@",
        "resource attribute",
        "resource_spans[1].resource.attributes[0].value",
        "resource_spans[1].resource.attributes[0].value.string_value",
    ),
    (
        b"@S@",
        "scope name",
        "resource_spans[1].scope_spans[0].scope",
        "resource_spans[1].scope_spans[0].scope.name",
    ),
    (b"@E@", "event name", ".events[0]", ".events[0].name"),
    (
        b"@A@",
        "array element",
        ".attributes[2].value.array_value.values[1]",
        ".attributes[2].value.array_value.values[1].string_value",
    ),
];

/// Paths starting with `.` are under the damaged span.
fn full_path(path: &str) -> String {
    if path.starts_with("resource_spans") {
        path.to_string()
    } else {
        format!("{DAMAGED_SPAN}{path}")
    }
}

fn sound(body: &[u8]) -> ParsedRequest {
    match admit(body, InvalidUtf8::Repair) {
        Ok(Admitted::Sound(parsed)) => parsed,
        other => panic!("expected a sound request, got {other:?}"),
    }
}

#[test]
fn a_sound_request_is_admitted_as_sent_with_every_span() {
    let body = body();
    let parsed = sound(&body);
    let shallow = parse_export_request(&body).unwrap();
    assert_eq!(parsed.spans.len(), 16);
    assert_eq!(parsed.origins, shallow.origins);
    for (deep, shallow) in parsed.spans.iter().zip(&shallow.spans) {
        assert_eq!(deep.range, shallow.range);
        assert_eq!(deep.info, shallow.info);
    }
}

#[test]
fn structural_damage_at_each_depth_is_refused_naming_the_path() {
    for (marker, what, framing_path, _) in DAMAGE {
        let body = with_overlong_length(marker);
        for utf8 in [InvalidUtf8::Repair, InvalidUtf8::Refuse] {
            let error = admit(&body, utf8).expect_err(what);
            assert_eq!(error.path(), full_path(framing_path), "{what}: {error}");
            assert_eq!(error.reason(), "truncated", "{what}");
            assert!(error.to_string().starts_with(&full_path(framing_path)));
        }
        assert!(
            ExportTraceServiceRequest::decode(&body[..]).is_err(),
            "{what}: prost refuses it too"
        );
    }
}

#[test]
fn a_known_field_with_the_wrong_wire_type_is_refused_at_that_field() {
    let mut body = body();
    let at = find(&body, b"@V@");
    // string_value (field 1, length-delimited) as field 1 with wire type 5 (fixed32): the four
    // bytes after the key are read as its value, which keeps the framing intact.
    assert_eq!(body[at - 2], 0x0a);
    body[at - 2] = 0x0d;
    let error = admit(&body, InvalidUtf8::Repair).unwrap_err();
    assert_eq!(error.reason(), "bad_wire_type");
    assert_eq!(
        error.path(),
        full_path(".attributes[1].value.string_value"),
        "{error}"
    );
    assert!(ExportTraceServiceRequest::decode(&body[..]).is_err());
}

#[test]
fn invalid_utf8_at_each_depth_is_repaired_and_only_the_damaged_spans_change() {
    let original = body();
    let clean = parse_export_request(&original).unwrap();
    for (marker, what, _, _) in DAMAGE {
        let body = with_bad_utf8(marker);
        assert!(
            ExportTraceServiceRequest::decode(&body[..]).is_err(),
            "{what}: a strict decoder refuses the damaged request"
        );
        let Ok(Admitted::Repaired {
            body: repaired,
            parsed,
            spans,
        }) = admit(&body, InvalidUtf8::Repair)
        else {
            panic!("{what}: not repaired");
        };
        let decoded = ExportTraceServiceRequest::decode(&repaired[..])
            .unwrap_or_else(|e| panic!("{what}: the repaired request does not decode: {e}"));
        let json = serde_json::to_string(&decoded).unwrap();
        assert!(json.contains("\u{fffd}"), "{what}: {json}");
        // Resource and scope damage touches all the spans under them.
        let expected_spans = match *marker {
            b"@R@" => 8,
            b"@S@" => 4,
            _ => 1,
        };
        assert_eq!(spans, expected_spans, "{what}");
        assert_eq!(parsed.spans.len(), clean.spans.len());
        let damaged_span = 4 * 2 + 2;
        for (i, (after, before)) in parsed.spans.iter().zip(&clean.spans).enumerate() {
            let after_bytes = &repaired[after.range.0..after.range.1];
            let before_bytes = &original[before.range.0..before.range.1];
            let span_damaged = i == damaged_span && !matches!(*marker, b"@R@" | b"@S@");
            if span_damaged {
                assert_ne!(after_bytes, before_bytes, "{what}");
            } else {
                assert_eq!(
                    after_bytes, before_bytes,
                    "{what}: span {i} kept byte for byte"
                );
            }
            assert_eq!(after.info, before.info);
        }
    }
}

#[test]
fn invalid_utf8_is_refused_naming_the_string_when_asked() {
    for (marker, what, _, string_path) in DAMAGE {
        let body = with_bad_utf8(marker);
        let error = admit(&body, InvalidUtf8::Refuse).expect_err(what);
        assert_eq!(error.reason(), "invalid_utf8", "{what}");
        assert_eq!(error.path(), full_path(string_path), "{what}: {error}");
    }
}

#[test]
fn a_repair_keeps_valid_multibyte_text_and_replaces_each_bad_sequence() {
    let mut request = request_with_markers();
    request.resource_spans[0].scope_spans[0].spans[0].name = "héllo-@X@-wörld".into();
    let mut body = request.encode_to_vec();
    let at = find(&body, b"@X@");
    body[at..at + 3].copy_from_slice(b"\xc3(\xff");
    let Ok(Admitted::Repaired { body: repaired, .. }) = admit(&body, InvalidUtf8::Repair) else {
        panic!("not repaired");
    };
    let decoded = ExportTraceServiceRequest::decode(&repaired[..]).unwrap();
    assert_eq!(
        decoded.resource_spans[0].scope_spans[0].spans[0].name,
        "héllo-\u{fffd}(\u{fffd}-wörld"
    );
}

fn nested_array(depth: u32) -> Vec<u8> {
    let mut value = AnyValue {
        value: text("leaf"),
    };
    for _ in 1..depth {
        value = AnyValue {
            value: array(vec![value.value]),
        };
    }
    let mut request = request_with_markers();
    request.resource_spans[0].scope_spans[0].spans[0]
        .attributes
        .push(KeyValue {
            key: "deep".into(),
            value: Some(value),
            ..Default::default()
        });
    request.encode_to_vec()
}

#[test]
fn attribute_values_nest_up_to_the_limit_and_no_deeper() {
    let at_limit = nested_array(MAX_VALUE_DEPTH);
    sound(&at_limit);
    ExportTraceServiceRequest::decode(&at_limit[..]).unwrap();
    let error = admit(&nested_array(MAX_VALUE_DEPTH + 1), InvalidUtf8::Repair).unwrap_err();
    assert_eq!(error.reason(), "too_deep");
    assert!(
        error.path().starts_with(
            "resource_spans[0].scope_spans[0].spans[0].attributes[4].value.array_value.values[0]"
        ),
        "{error}"
    );
}

#[test]
fn link_ids_of_the_wrong_length_are_refused() {
    let mut request = request_with_markers();
    request.resource_spans[0].scope_spans[1].spans[3].links[0].span_id = vec![1; 5];
    let error = admit(&request.encode_to_vec(), InvalidUtf8::Repair).unwrap_err();
    assert_eq!(error.reason(), "bad_id");
    assert_eq!(
        error.path(),
        "resource_spans[0].scope_spans[1].spans[3].links[0].span_id"
    );
}

#[test]
fn varints_and_keys_that_overflow_are_refused_as_prost_refuses_them() {
    // An unknown field 2 holding a 10-byte varint whose last byte carries more than bit 63.
    let overflow = [
        0x10, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02,
    ];
    assert!(ExportTraceServiceRequest::decode(&overflow[..]).is_err());
    assert_eq!(
        admit(&overflow, InvalidUtf8::Repair).unwrap_err().reason(),
        "bad_varint"
    );
    let max = [
        0x10, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
    ];
    assert!(ExportTraceServiceRequest::decode(&max[..]).is_ok());
    sound(&max);
    // A key above u32::MAX (field number bits beyond 32).
    let key = [0x80, 0x80, 0x80, 0x80, 0x10, 0x00];
    assert!(ExportTraceServiceRequest::decode(&key[..]).is_err());
    assert_eq!(
        admit(&key, InvalidUtf8::Repair).unwrap_err().reason(),
        "bad_field_number"
    );
}

/// A small, seeded generator (xorshift), so mutation runs are reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Seeded byte flips, insertions and truncations of a valid request: whatever the door admits
/// decodes with prost and keeps every undamaged span byte for byte; whatever prost decodes, the
/// door admits unless it breaks a rule prost does not check (IDs, nesting depth, groups).
#[test]
fn mutated_requests_are_admitted_only_when_a_strict_decoder_takes_them() {
    let original = body();
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let (mut admitted, mut repaired, mut refused) = (0, 0, 0);
    for _ in 0..3000 {
        let mut body = original.clone();
        for _ in 0..1 + rng.below(3) {
            match rng.below(4) {
                0 => {
                    let i = rng.below(body.len());
                    body[i] = rng.next() as u8;
                }
                1 => {
                    let i = rng.below(body.len());
                    body[i] ^= 1 << rng.below(8);
                }
                2 => {
                    let i = rng.below(body.len());
                    body.insert(i, [0x80, 0xff, 0x00, 0x0a][rng.below(4)]);
                }
                _ => body.truncate(rng.below(body.len())),
            }
        }
        check_property(&body);
        match admit(&body, InvalidUtf8::Repair) {
            Ok(Admitted::Sound(_)) => admitted += 1,
            Ok(Admitted::Repaired { .. }) => repaired += 1,
            Err(_) => refused += 1,
        }
    }
    assert!(
        admitted > 0 && repaired > 0 && refused > 0,
        "{admitted} {repaired} {refused}"
    );
}

/// The door's property on one input (also the fuzz target's).
pub(crate) fn check_property(body: &[u8]) {
    let prost_ok = ExportTraceServiceRequest::decode(body).is_ok();
    match admit(body, InvalidUtf8::Repair) {
        Ok(Admitted::Sound(parsed)) => {
            assert!(prost_ok, "admitted as sound but prost refuses: {body:?}");
            assert_eq!(admit(body, InvalidUtf8::Refuse).map(|_| ()), Ok(()));
            assert_eq!(
                parse_export_request(body).unwrap().spans.len(),
                parsed.spans.len()
            );
        }
        Ok(Admitted::Repaired {
            body: repaired,
            parsed,
            ..
        }) => {
            ExportTraceServiceRequest::decode(&repaired[..])
                .unwrap_or_else(|e| panic!("repaired but prost refuses ({e}): {body:?}"));
            let before = parse_export_request(body).unwrap();
            assert_eq!(before.spans.len(), parsed.spans.len());
            for (b, a) in before.spans.iter().zip(&parsed.spans) {
                let old = &body[b.range.0..b.range.1];
                if !has_bad_utf8(old, &schema::SPAN) {
                    assert_eq!(old, &repaired[a.range.0..a.range.1], "{body:?}");
                }
            }
            assert_eq!(
                admit(body, InvalidUtf8::Refuse).unwrap_err().reason(),
                "invalid_utf8"
            );
        }
        Err(error) => {
            if prost_ok {
                let allowed = match error.error {
                    WireError::BadWireType { wire_type, .. } => wire_type == 3 || wire_type == 4,
                    _ => matches!(error.reason(), "bad_id" | "too_deep"),
                };
                assert!(
                    allowed,
                    "prost decodes it but the door refused: {error}: {body:?}"
                );
            }
        }
    }
}

/// The one-pass fast path takes a span only when the general walkers would pass it unchanged,
/// with the same summary: every span of the test request, and thousands of mutations of them.
#[test]
fn the_fast_span_check_agrees_with_the_general_walkers() {
    use crate::otlp::request::{check_span_fast, read_span};
    let body = body();
    let parsed = parse_export_request(&body).unwrap();
    let mut spans: Vec<&[u8]> = parsed
        .spans
        .iter()
        .map(|s| &body[s.range.0..s.range.1])
        .collect();
    // Spans whose attributes are all scalars or strings, as most are.
    let plain: Vec<Vec<u8>> = (1..5u8)
        .map(|n| {
            let mut span = span(n, false);
            span.attributes.truncate(2);
            span.encode_to_vec()
        })
        .collect();
    spans.extend(plain.iter().map(Vec::as_slice));
    let agree = |span: &[u8]| {
        if let Some(info) = check_span_fast(span, 100) {
            assert_eq!(read_span(span, 100), Ok(info), "{span:?}");
            let mut walk = Walk::new(InvalidUtf8::Refuse);
            assert_eq!(
                super::span(span, 100, &mut walk).map_err(|e| e.to_string()),
                Ok(()),
                "{span:?}"
            );
            true
        } else {
            false
        }
    };
    for span in &plain {
        assert!(agree(span), "a span as SDKs write it takes the fast path");
    }
    for span in &spans {
        agree(span);
    }
    let mut rng = Rng(0xfa57_0000_0000_0001);
    let mut fast = 0;
    for i in 0..20_000 {
        let mut span = spans[i % spans.len()].to_vec();
        let at = rng.below(span.len());
        match rng.below(3) {
            0 => span[at] ^= 1 << rng.below(8),
            1 => span[at] = rng.next() as u8,
            _ => span.truncate(at),
        }
        if agree(&span) {
            fast += 1;
        }
    }
    assert!(fast > 0);
}

/// The fast check reads lengths of one or two varint bytes itself: a `KeyValue` whose value is a
/// 128-byte string (length `80 01`, and the value's own length `83 01`, as the protobuf encoding
/// guide writes 128 and 131) passes it, as prost decodes it.
#[test]
fn the_fast_check_takes_two_byte_lengths() {
    let mut kv = vec![0x0a, 0x01, b'k', 0x12, 0x83, 0x01, 0x0a, 0x80, 0x01];
    kv.extend_from_slice(&[b'x'; 128]);
    assert_eq!(kv.len(), 3 + 3 + 131);
    let decoded = KeyValue::decode(&kv[..]).unwrap();
    assert_eq!(decoded.key, "k");
    assert_eq!(
        decoded.value,
        Some(AnyValue {
            value: text(&"x".repeat(128))
        })
    );
    assert_eq!(key_value_fast(&kv), Some(()));
}

/// A length of three varint bytes is left to the general walker, even when reading its first two
/// bytes as the whole length would make the field fit: `0a 80 80 01` declares a 16,384-byte key
/// but only 16,383 bytes follow (prost refuses it as truncated).
#[test]
fn the_fast_check_leaves_three_byte_lengths_to_the_general_walker() {
    let mut kv = vec![0x0a, 0x80, 0x80, 0x01];
    kv.extend_from_slice(&[b'a'; 16_383]);
    assert!(KeyValue::decode(&kv[..]).is_err());
    assert_eq!(key_value_fast(&kv), None);
}

/// Every scalar `AnyValue` as prost encodes it, under the key `k`: what the fast check must take.
fn scalar_key_values() -> Vec<Vec<u8>> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value as V;
    [
        V::StringValue("GET".into()),
        V::StringValue("é".repeat(100)), // 200 bytes: a two-byte length
        V::BoolValue(true),
        V::BoolValue(false),
        V::IntValue(0),
        V::IntValue(128),      // 80 01: a continuation byte of exactly 0x80
        V::IntValue(300),      // ac 02, the encoding guide's example
        V::IntValue(i64::MAX), // nine varint bytes
        V::DoubleValue(1.5),
        V::DoubleValue(-0.0),
        V::BytesValue(vec![0xff, 0x00, 0x80]), // bytes need not be UTF-8
        V::StringValueStrindex(7),
    ]
    .into_iter()
    .map(|value| {
        KeyValue {
            key: "k".into(),
            value: Some(AnyValue { value: Some(value) }),
            ..Default::default()
        }
        .encode_to_vec()
    })
    .collect()
}

/// Attributes as SDKs write them take the fast path, whatever their scalar type; a negative int
/// (ten varint bytes) is left to the general walker, which admits it.
#[test]
fn the_fast_check_takes_every_scalar_value_as_prost_encodes_it() {
    for kv in scalar_key_values() {
        let decoded = KeyValue::decode(&kv[..]).unwrap();
        assert_eq!(key_value_fast(&kv), Some(()), "{decoded:?}: {kv:02x?}");
    }
    let negative = KeyValue {
        key: "k".into(),
        value: int(-1).map(|value| AnyValue { value: Some(value) }),
        ..Default::default()
    }
    .encode_to_vec();
    assert_eq!(key_value_fast(&negative), None);
    let mut walk = Walk::new(InvalidUtf8::Refuse);
    assert_eq!(
        key_value(&negative, 0, &mut walk, 0).map_err(|e| e.to_string()),
        Ok(())
    );
}

/// Seeded damage to those attributes: whenever the fast check takes one, prost decodes it and
/// the general walker passes it.
#[test]
fn the_fast_check_takes_only_key_values_a_strict_decoder_takes() {
    let corpus = scalar_key_values();
    let mut rng = Rng(0x00fa_57c4_ec4b_0001);
    let (mut taken, mut left) = (0, 0);
    for i in 0..40_000 {
        let mut kv = corpus[i % corpus.len()].clone();
        for _ in 0..1 + rng.below(2) {
            if kv.is_empty() {
                break;
            }
            let at = rng.below(kv.len());
            match rng.below(4) {
                0 => kv[at] ^= 1 << rng.below(8),
                1 => kv[at] = rng.next() as u8,
                2 => kv.insert(at, [0x80, 0xff, 0x21, 0x10][rng.below(4)]),
                _ => kv.truncate(at),
            }
        }
        if key_value_fast(&kv).is_some() {
            taken += 1;
            KeyValue::decode(&kv[..])
                .unwrap_or_else(|e| panic!("the fast check took {kv:02x?}, prost refuses: {e}"));
            let mut walk = Walk::new(InvalidUtf8::Refuse);
            assert_eq!(
                key_value(&kv, 0, &mut walk, 0).map_err(|e| e.to_string()),
                Ok(()),
                "{kv:02x?}"
            );
        } else {
            left += 1;
        }
    }
    assert!(taken > 1000 && left > 1000, "{taken} taken, {left} left");
}

/// `key_strindex` (field 3, int32; profiles use it) is part of `KeyValue`: an attribute carrying
/// it is admitted, as prost decodes it, and as another wire type it is refused at that field.
#[test]
fn an_attribute_with_a_key_strindex_is_admitted() {
    let mut request = request_with_markers();
    let attributes = &mut request.resource_spans[0].scope_spans[0].spans[1].attributes;
    attributes[0].key_strindex = 5;
    let body = request.encode_to_vec();
    assert_eq!(
        ExportTraceServiceRequest::decode(&body[..]).unwrap(),
        request
    );
    sound(&body);
    // The same field as a 4-byte fixed32 (wire type 5) instead of a varint.
    let kv = [0x0a, 0x01, b'k', 0x1d, 1, 0, 0, 0];
    assert!(KeyValue::decode(&kv[..]).is_err());
    let mut walk = Walk::new(InvalidUtf8::Refuse);
    let error = key_value(&kv, 0, &mut walk, 0).unwrap_err();
    assert_eq!(error.reason(), "bad_wire_type");
    assert_eq!(error.path(), "key_strindex");
}

/// An `ArrayValue`'s `values` that is not length-delimited is refused at that item, as prost
/// refuses it.
#[test]
fn an_array_item_of_the_wrong_wire_type_is_refused_at_that_item() {
    // AnyValue { array_value (field 5) = ArrayValue { field 1 as the varint 1 } }.
    let value = [0x2a, 0x02, 0x08, 0x01];
    assert!(AnyValue::decode(&value[..]).is_err());
    let mut walk = Walk::new(InvalidUtf8::Refuse);
    let error = any_value(&value, 0, &mut walk, 1).unwrap_err();
    assert_eq!(error.reason(), "bad_wire_type");
    assert_eq!(error.path(), "array_value.values[0]");
}

fn nested_kvlist(depth: u32) -> Vec<u8> {
    let mut value = text("leaf");
    for _ in 1..depth {
        value = kvlist(vec![("k", value)]);
    }
    let mut request = request_with_markers();
    request.resource_spans[0].scope_spans[0].spans[0]
        .attributes
        .push(kv("deep", value));
    request.encode_to_vec()
}

/// A kvlist inside a kvlist is one level deeper, as an array inside an array is: the same limit
/// holds for both (before, each kvlist level counted twice and maps stopped at 10 levels).
#[test]
fn kvlist_values_nest_up_to_the_limit_and_no_deeper() {
    let at_limit = nested_kvlist(MAX_VALUE_DEPTH);
    ExportTraceServiceRequest::decode(&at_limit[..]).unwrap();
    sound(&at_limit);
    let error = admit(&nested_kvlist(MAX_VALUE_DEPTH + 1), InvalidUtf8::Repair).unwrap_err();
    assert_eq!(error.reason(), "too_deep");
    assert!(
        error.path().starts_with(
            "resource_spans[0].scope_spans[0].spans[0].attributes[4].value.kvlist_value.values[0].value"
        ),
        "{error}"
    );
}

/// The general span walker on `bytes`, refusing invalid UTF-8.
fn walk_span(bytes: &[u8]) -> Result<(), Box<Invalid>> {
    super::span(bytes, 0, &mut Walk::new(InvalidUtf8::Refuse))
}

/// `bytes` with the first byte of `marker` made invalid UTF-8.
fn damaged(mut bytes: Vec<u8>, marker: &[u8]) -> Vec<u8> {
    let at = find(&bytes, marker);
    bytes[at] = 0xff;
    bytes
}

/// A span with two of everything, each second one carrying a marker that a test may damage.
fn span_with_second_items() -> Span {
    let event = |name: &str, attributes| Event {
        name: name.into(),
        attributes,
        ..Default::default()
    };
    let link = |trace_state: &str, attributes| Link {
        trace_id: vec![1; 16],
        span_id: vec![2; 8],
        trace_state: trace_state.into(),
        attributes,
        ..Default::default()
    };
    let two = |marker: &str| vec![kv("a", text("x")), kv("b", text(marker))];
    Span {
        trace_id: vec![1; 16],
        span_id: vec![2; 8],
        trace_state: "vendor=@0@".into(),
        name: "op".into(),
        attributes: two("@1@"),
        events: vec![event("e0", two("@4@")), event("@2@", vec![])],
        links: vec![link("a=b", two("@5@")), link("@3@", vec![])],
        ..Default::default()
    }
}

/// Invalid UTF-8 in a second attribute, event, link, or in the attributes of an event or a link,
/// is refused at that item's index; a sound trace state passes.
#[test]
fn damage_in_a_later_item_is_refused_at_its_index() {
    let span = span_with_second_items().encode_to_vec();
    assert_eq!(walk_span(&span).map_err(|e| e.to_string()), Ok(()));
    for (marker, path) in [
        (&b"@0@"[..], "trace_state"),
        (b"@1@", "attributes[1].value.string_value"),
        (b"@2@", "events[1].name"),
        (b"@3@", "links[1].trace_state"),
        (b"@4@", "events[0].attributes[1].value.string_value"),
        (b"@5@", "links[0].attributes[1].value.string_value"),
    ] {
        let bytes = damaged(span.clone(), marker);
        assert!(
            Span::decode(&bytes[..]).is_err(),
            "{path}: prost refuses it too"
        );
        let error = walk_span(&bytes).unwrap_err();
        assert_eq!(error.reason(), "invalid_utf8", "{path}");
        assert_eq!(error.path(), path);
    }
}

/// A repeated field read with the wrong wire type is named with the index it would have had
/// (after the items before it); a singular one without an index. prost refuses each.
#[test]
fn a_wrong_wire_type_is_refused_at_the_item_it_would_have_been() {
    let two = vec![kv("a", int(1)), kv("b", int(2))];
    let span = Span {
        attributes: two.clone(),
        events: vec![Event::default(); 2],
        links: vec![Link::default(); 2],
        ..Default::default()
    }
    .encode_to_vec();
    let event = Event {
        attributes: two.clone(),
        ..Default::default()
    }
    .encode_to_vec();
    let link = Link {
        attributes: two,
        ..Default::default()
    }
    .encode_to_vec();
    let with = |message: &[u8], field: &[u8]| [message, field].concat();
    // A walker and whether prost refuses the same bytes as that message.
    type Kind<'a> = (&'a dyn Fn(&[u8]) -> Step, fn(&[u8]) -> bool);
    let event_walk = |b: &[u8]| super::event(b, 0, &mut Walk::new(InvalidUtf8::Refuse));
    let link_walk = |b: &[u8]| super::link(b, 0, &mut Walk::new(InvalidUtf8::Refuse));
    let (spans, events, links): (Kind, Kind, Kind) = (
        (&walk_span, |b| Span::decode(b).is_err()),
        (&event_walk, |b| Event::decode(b).is_err()),
        (&link_walk, |b| Link::decode(b).is_err()),
    );
    let cases = [
        (spans, with(&span, &[0x48, 1]), "attributes[2]"),
        (spans, with(&span, &[0x58, 1]), "events[2]"),
        (spans, with(&span, &[0x68, 1]), "links[2]"),
        (spans, with(&span, &[0x28, 1]), "name"),
        (events, with(&event, &[0x18, 1]), "attributes[2]"),
        (events, with(&event, &[0x10, 1]), "name"),
        (links, with(&link, &[0x20, 1]), "attributes[2]"),
        (links, with(&link, &[0x18, 1]), "trace_state"),
        (
            links,
            with(&link, &[0x2d, 1, 0, 0, 0]),
            "dropped_attributes_count",
        ),
    ];
    for ((walk, prost_refuses), bytes, path) in cases {
        assert!(prost_refuses(&bytes), "{path}: prost refuses {bytes:02x?}");
        let error = walk(&bytes).unwrap_err();
        assert_eq!(error.reason(), "bad_wire_type", "{path}");
        assert_eq!(error.path(), path);
    }
}

/// A link's flags and dropped-attribute count pass; its trace ID must be empty or 16 bytes, as
/// pdata's typed IDs require (prost itself takes any length).
#[test]
fn a_links_ids_flags_and_counts_are_checked_as_pdata_reads_them() {
    let link = |trace_id: Vec<u8>| Link {
        trace_id,
        span_id: vec![2; 8],
        flags: 0x301,
        dropped_attributes_count: 2,
        ..Default::default()
    };
    let walk = |l: &Link| super::link(&l.encode_to_vec(), 0, &mut Walk::new(InvalidUtf8::Refuse));
    for sound in [link(vec![1; 16]), link(vec![])] {
        Link::decode(&sound.encode_to_vec()[..]).unwrap();
        assert_eq!(walk(&sound).map_err(|e| e.to_string()), Ok(()));
    }
    for len in [5, 8, 17] {
        let short = link(vec![1; len]);
        assert_eq!(Link::decode(&short.encode_to_vec()[..]).unwrap(), short);
        let error = walk(&short).unwrap_err();
        assert_eq!(error.reason(), "bad_id", "{len}");
        assert_eq!(error.path(), "trace_id");
    }
}

/// An encoded message, its walker, whether prost refuses bytes as that message, the marker to
/// damage or the field to append, and the path the error must name.
type MessageCase<'a> = (
    &'a [u8],
    fn(&[u8]) -> Step,
    fn(&[u8]) -> bool,
    &'a [u8],
    &'a str,
);

/// The walkers for a resource, an entity reference and a scope, refusing invalid UTF-8.
fn walk_resource(b: &[u8]) -> Step {
    super::resource(b, 0, &mut Walk::new(InvalidUtf8::Refuse))
}
fn walk_entity_ref(b: &[u8]) -> Step {
    super::entity_ref(b, 0, &mut Walk::new(InvalidUtf8::Refuse))
}
fn walk_scope(b: &[u8]) -> Step {
    super::scope(b, 0, &mut Walk::new(InvalidUtf8::Refuse))
}

fn entity(schema_url: &str, kind: &str, ids: [&str; 2], descriptions: [&str; 2]) -> EntityRef {
    EntityRef {
        schema_url: schema_url.into(),
        r#type: kind.into(),
        id_keys: ids.map(String::from).to_vec(),
        description_keys: descriptions.map(String::from).to_vec(),
    }
}

/// The same for a resource (with entity references) and a scope: every string is checked at
/// its index, and the counts pass.
#[test]
fn resource_and_scope_damage_in_a_later_item_is_refused_at_its_index() {
    let two = |marker: &str| vec![kv("a", text("x")), kv("b", text(marker))];
    let resource = Resource {
        attributes: two("@1@"),
        dropped_attributes_count: 3,
        entity_refs: vec![
            entity("s", "service", ["service.name", "@3@"], ["d", "@4@"]),
            entity("@5@", "@6@", ["a", "b"], ["c", "d"]),
        ],
    }
    .encode_to_vec();
    let scope = InstrumentationScope {
        name: "@7@".into(),
        version: "@8@".into(),
        attributes: two("@9@"),
        dropped_attributes_count: 1,
    }
    .encode_to_vec();
    assert_eq!(walk_resource(&resource).map_err(|e| e.to_string()), Ok(()));
    assert_eq!(walk_scope(&scope).map_err(|e| e.to_string()), Ok(()));
    let cases: [MessageCase; 8] = [
        (
            &resource,
            walk_resource,
            |b| Resource::decode(b).is_err(),
            b"@1@",
            "attributes[1].value.string_value",
        ),
        (
            &resource,
            walk_resource,
            |b| Resource::decode(b).is_err(),
            b"@3@",
            "entity_refs[0].id_keys[1]",
        ),
        (
            &resource,
            walk_resource,
            |b| Resource::decode(b).is_err(),
            b"@4@",
            "entity_refs[0].description_keys[1]",
        ),
        (
            &resource,
            walk_resource,
            |b| Resource::decode(b).is_err(),
            b"@5@",
            "entity_refs[1].schema_url",
        ),
        (
            &resource,
            walk_resource,
            |b| Resource::decode(b).is_err(),
            b"@6@",
            "entity_refs[1].type",
        ),
        (
            &scope,
            walk_scope,
            |b| InstrumentationScope::decode(b).is_err(),
            b"@7@",
            "name",
        ),
        (
            &scope,
            walk_scope,
            |b| InstrumentationScope::decode(b).is_err(),
            b"@8@",
            "version",
        ),
        (
            &scope,
            walk_scope,
            |b| InstrumentationScope::decode(b).is_err(),
            b"@9@",
            "attributes[1].value.string_value",
        ),
    ];
    for (message, walk, prost_refuses, marker, path) in cases {
        let bytes = damaged(message.to_vec(), marker);
        assert!(prost_refuses(&bytes), "{path}: prost refuses it too");
        let error = walk(&bytes).unwrap_err();
        assert_eq!(error.reason(), "invalid_utf8", "{path}");
        assert_eq!(error.path(), path);
    }
}

/// Wrong wire types in a resource, an entity reference and a scope, named as for a span.
#[test]
fn resource_and_scope_wrong_wire_types_are_refused_at_the_item_they_would_have_been() {
    let two = vec![kv("a", int(1)), kv("b", int(2))];
    let resource = Resource {
        attributes: two.clone(),
        entity_refs: vec![entity("", "", ["", ""], ["", ""]); 2],
        ..Default::default()
    }
    .encode_to_vec();
    let entity_ref = entity("s", "t", ["a", "b"], ["c", "d"]).encode_to_vec();
    let scope = InstrumentationScope {
        attributes: two,
        ..Default::default()
    }
    .encode_to_vec();
    let cases: [MessageCase; 9] = [
        (
            &resource,
            walk_resource,
            |b| Resource::decode(b).is_err(),
            &[0x08, 1],
            "attributes[2]",
        ),
        (
            &resource,
            walk_resource,
            |b| Resource::decode(b).is_err(),
            &[0x18, 1],
            "entity_refs[2]",
        ),
        (
            &resource,
            walk_resource,
            |b| Resource::decode(b).is_err(),
            &[0x12, 0],
            "dropped_attributes_count",
        ),
        (
            &entity_ref,
            walk_entity_ref,
            |b| EntityRef::decode(b).is_err(),
            &[0x18, 1],
            "id_keys[2]",
        ),
        (
            &entity_ref,
            walk_entity_ref,
            |b| EntityRef::decode(b).is_err(),
            &[0x20, 1],
            "description_keys[2]",
        ),
        (
            &entity_ref,
            walk_entity_ref,
            |b| EntityRef::decode(b).is_err(),
            &[0x08, 1],
            "schema_url",
        ),
        (
            &scope,
            walk_scope,
            |b| InstrumentationScope::decode(b).is_err(),
            &[0x18, 1],
            "attributes[2]",
        ),
        (
            &scope,
            walk_scope,
            |b| InstrumentationScope::decode(b).is_err(),
            &[0x08, 1],
            "name",
        ),
        (
            &scope,
            walk_scope,
            |b| InstrumentationScope::decode(b).is_err(),
            &[0x22, 0],
            "dropped_attributes_count",
        ),
    ];
    for (message, walk, prost_refuses, field, path) in cases {
        let bytes = [message, field].concat();
        assert!(prost_refuses(&bytes), "{path}: prost refuses {bytes:02x?}");
        let error = walk(&bytes).unwrap_err();
        assert_eq!(error.reason(), "bad_wire_type", "{path}");
        assert_eq!(error.path(), path);
    }
}

/// A repair re-frames only what holds the damage: a sibling string and a sibling message of the
/// damaged name, both framed with non-minimal (two-byte) lengths, which prost reads as any
/// decoder must, come out byte for byte as sent.
#[test]
fn a_repair_copies_undamaged_siblings_byte_for_byte() {
    let mut span = Span {
        trace_id: vec![1; 16],
        span_id: vec![2; 8],
        name: "@X@".into(),
        ..Default::default()
    }
    .encode_to_vec();
    // trace_state (field 3) "k=v", its length 3 written as `83 00`.
    let trace_state = [0x1a, 0x83, 0x00, b'k', b'=', b'v'];
    // status (field 15) { message "ok", code 1 }, its length 6 written as `86 00`.
    let status = [0x7a, 0x86, 0x00, 0x12, 0x02, b'o', b'k', 0x18, 0x01];
    span.extend_from_slice(&trace_state);
    span.extend_from_slice(&status);
    let clean = Span::decode(&span[..]).unwrap();
    assert_eq!(
        (clean.trace_state.as_str(), clean.status.unwrap().code),
        ("k=v", 1)
    );
    assert!(!span_has_invalid_utf8(&span));

    let span = damaged(span, b"@X@");
    assert!(span_has_invalid_utf8(&span));
    let mut repaired = Vec::new();
    repair_message(&span, &schema::SPAN, &mut repaired);
    assert_eq!(Span::decode(&repaired[..]).unwrap().name, "\u{fffd}X@");
    assert!(!span_has_invalid_utf8(&repaired));
    let tail = &repaired[repaired.len() - trace_state.len() - status.len()..];
    assert_eq!(tail, [&trace_state[..], &status[..]].concat());
}

/// The fuzz targets' oracle for "this span changes in a repair": damage anywhere below the span
/// counts, none means none.
#[test]
fn span_has_invalid_utf8_finds_damage_at_every_depth() {
    let clean = span(1, true).encode_to_vec();
    assert!(!span_has_invalid_utf8(&clean));
    for (marker, what, _, _) in DAMAGE {
        if matches!(*marker, b"@R@" | b"@S@") {
            continue; // resource and scope damage is not in the span
        }
        assert!(
            span_has_invalid_utf8(&damaged(clean.clone(), marker)),
            "{what}"
        );
    }
}
