use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue};
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
