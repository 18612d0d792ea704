use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::{Event, Link};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use prost::Message;

use super::*;
use crate::otlp::testing::{array, boolean, bytes_value, double, empty, int, kv, kvlist, text};

fn rich_request() -> ExportTraceServiceRequest {
    let span = Span {
        trace_id: vec![0x5b; 16],
        span_id: vec![0xee; 8],
        trace_state: "k=v".into(),
        parent_span_id: vec![0x01; 8],
        flags: 0x301,
        name: "GET /\"quoted\"\n é".into(),
        kind: 2,
        start_time_unix_nano: 1_544_712_660_000_000_000,
        end_time_unix_nano: u64::MAX,
        attributes: vec![
            kv("s", text("x")),
            kv("empty string", text("")),
            kv("zero", int(0)),
            kv("negative", int(-42)),
            kv("big", int(i64::MAX)),
            kv("pi", double(3.25)),
            kv("nan", double(f64::NAN)),
            kv("inf", double(f64::NEG_INFINITY)),
            kv("false", boolean(false)),
            kv("blob", bytes_value(b"\x00\x01\xfe\xff tail")),
            kv(
                "list",
                array(vec![int(1), text("two"), array(vec![boolean(true)])]),
            ),
            kv("map", kvlist(vec![("a", int(1)), ("b", empty())])),
            kv("unset", empty()),
        ],
        dropped_attributes_count: 3,
        events: vec![Event {
            time_unix_nano: 7,
            name: "exception".into(),
            attributes: vec![kv("exception.message", text("boom"))],
            dropped_attributes_count: 0,
        }],
        dropped_events_count: 0,
        links: vec![Link {
            trace_id: vec![0x11; 16],
            span_id: vec![0x22; 8],
            trace_state: String::new(),
            attributes: vec![],
            dropped_attributes_count: 1,
            flags: 1,
        }],
        dropped_links_count: 2,
        status: Some(Status {
            code: 2,
            message: "failed".into(),
        }),
    };
    ExportTraceServiceRequest {
        resource_spans: vec![
            ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", text("api"))],
                    dropped_attributes_count: 0,
                    entity_refs: vec![],
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "lib".into(),
                        version: "1.0".into(),
                        attributes: vec![kv("scope.attr", int(5))],
                        dropped_attributes_count: 0,
                    }),
                    spans: vec![
                        span.clone(),
                        Span {
                            trace_id: vec![0x5c; 16],
                            span_id: vec![0xef; 8],
                            ..Default::default()
                        },
                    ],
                    schema_url: "https://opentelemetry.io/schemas/1.21.0".into(),
                }],
                schema_url: String::new(),
            },
            // A resource span without resource or scope.
            ResourceSpans {
                resource: None,
                scope_spans: vec![ScopeSpans {
                    scope: None,
                    spans: vec![span],
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            },
        ],
    }
}

/// prost's equality, with NaN compared by bits.
fn same(a: &ExportTraceServiceRequest, b: &ExportTraceServiceRequest) -> bool {
    format!("{a:?}") == format!("{b:?}")
}

#[test]
fn otlp_json_with_hex_ids_and_string_timestamps_converts() {
    let json = br#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"api"}}]},
      "scopeSpans":[{"scope":{"name":"s"},"spans":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174",
      "name":"GET /","kind":2,"startTimeUnixNano":"1544712660000000000","endTimeUnixNano":1544712661000000000,
      "status":{"code":2}}]}]}]}"#;
    let body = json_to_protobuf(json).unwrap();
    let parsed = crate::otlp::parse_export_request(&body).unwrap();
    assert_eq!(parsed.spans.len(), 1);
    let info = parsed.spans[0].info;
    assert_eq!(info.trace_id[0], 0x5b);
    assert_eq!(info.status_code, 2);
    assert_eq!(info.end_unix_nano - info.start_unix_nano, 1_000_000_000);
}

#[test]
fn every_kind_of_field_round_trips_through_otlp_json() {
    let request = rich_request();
    let json = to_otlp_json(&request.encode_to_vec()).unwrap();
    let back = json_to_protobuf(&json).unwrap();
    let decoded = ExportTraceServiceRequest::decode(&back[..]).unwrap();
    assert!(
        same(&decoded, &request),
        "{}\n{decoded:?}",
        String::from_utf8_lossy(&json)
    );
}

#[test]
fn written_json_follows_the_otlp_mapping() {
    let json = to_otlp_json(&rich_request().encode_to_vec()).unwrap();
    let text = String::from_utf8(json.clone()).unwrap();
    let value: serde_json::Value = serde_json::from_slice(&json).unwrap();
    // No nulls and no unset fields: the second resource span has neither resource nor scope.
    assert!(!text.contains("null"), "{text}");
    let second = &value["resourceSpans"][1];
    assert!(second.get("resource").is_none(), "{second}");
    assert!(second["scopeSpans"][0].get("scope").is_none());
    assert!(
        second.get("schemaUrl").is_none(),
        "empty strings are omitted"
    );
    let span = &value["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
    assert_eq!(span["traceId"], "5b5b5b5b5b5b5b5b5b5b5b5b5b5b5b5b");
    assert_eq!(span["parentSpanId"], "0101010101010101");
    assert_eq!(span["kind"], 2, "enums are integers");
    assert_eq!(span["flags"], 0x301);
    assert_eq!(span["startTimeUnixNano"], "1544712660000000000");
    assert_eq!(span["endTimeUnixNano"], u64::MAX.to_string());
    assert_eq!(span["droppedAttributesCount"], 3);
    assert!(span.get("droppedEventsCount").is_none(), "zero is omitted");
    assert_eq!(span["status"]["code"], 2);
    let attr = |key: &str| {
        span["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["key"] == key)
            .unwrap()["value"]
            .clone()
    };
    assert_eq!(attr("negative")["intValue"], "-42", "int64 as a string");
    assert_eq!(
        attr("zero")["intValue"],
        "0",
        "the set oneof member is written"
    );
    assert_eq!(attr("empty string")["stringValue"], "");
    assert_eq!(attr("false")["boolValue"], false);
    assert_eq!(attr("nan")["doubleValue"], "NaN");
    assert_eq!(attr("inf")["doubleValue"], "-Infinity");
    assert_eq!(attr("pi")["doubleValue"], 3.25);
    assert_eq!(attr("blob")["bytesValue"], "AAH+/yB0YWls");
    assert_eq!(attr("unset"), serde_json::json!({}));
    assert_eq!(
        attr("list")["arrayValue"]["values"][2]["arrayValue"]["values"][0]["boolValue"],
        true
    );
    assert_eq!(attr("map")["kvlistValue"]["values"][0]["key"], "a");
    let second_span = &value["resourceSpans"][0]["scopeSpans"][0]["spans"][1];
    let mut keys: Vec<&String> = second_span.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(
        keys,
        ["spanId", "traceId"],
        "a span of defaults writes only its IDs"
    );
}

#[test]
fn the_reader_takes_what_the_protobuf_json_mapping_allows() {
    let json = br#"{"resource_spans":[{"resource":null,"unknownField":{"x":[1,2]},
      "scope_spans":[{"spans":[{"trace_id":"5B8EFFF798038103D269B633813FC60C","spanId":"eee19b7ec3c1b174",
      "kind":"SPAN_KIND_CLIENT","startTimeUnixNano":1.5e3,"droppedAttributesCount":"4",
      "attributes":[{"key":"d","value":{"doubleValue":"Infinity"}},{"key":"b","value":{"bytesValue":"AAH-_w"}}],
      "status":{"code":"STATUS_CODE_ERROR","message":null}}]}]}]}"#;
    let body = json_to_protobuf(json).unwrap();
    let decoded = ExportTraceServiceRequest::decode(&body[..]).unwrap();
    let rs = &decoded.resource_spans[0];
    assert!(rs.resource.is_none());
    let span = &rs.scope_spans[0].spans[0];
    assert_eq!(span.trace_id[0], 0x5b);
    assert_eq!(span.kind, 3);
    assert_eq!(span.start_time_unix_nano, 1500);
    assert_eq!(span.dropped_attributes_count, 4);
    assert_eq!(span.status.as_ref().unwrap().code, 2);
    let value = |i: usize| span.attributes[i].value.clone().unwrap().value.unwrap();
    assert_eq!(value(0), double(f64::INFINITY).unwrap());
    assert_eq!(value(1), bytes_value(b"\x00\x01\xfe\xff").unwrap());
}

#[test]
fn the_reader_agrees_with_the_generated_types_serde_reading() {
    let request = rich_request();
    // The generated types write JSON their own way; both readers must agree on it (NaN aside,
    // which serde_json cannot write).
    let mut request_without_nan = request.clone();
    for rs in &mut request_without_nan.resource_spans {
        for ss in &mut rs.scope_spans {
            for span in &mut ss.spans {
                span.attributes.retain(|a| a.key != "nan" && a.key != "inf");
            }
        }
    }
    let theirs = serde_json::to_vec(&request_without_nan).unwrap();
    let ours = json_to_protobuf(&theirs).unwrap();
    let decoded = ExportTraceServiceRequest::decode(&ours[..]).unwrap();
    assert!(same(&decoded, &request_without_nan), "{decoded:?}");
}

#[test]
fn bad_json_is_refused_with_a_message_naming_the_field() {
    for (json, needle) in [
        (
            &br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"xyz"}]}]}]}"#[..],
            "traceId",
        ),
        (br#"{"resourceSpans":{"a":1}}"#, "resourceSpans"),
        (
            br#"{"resourceSpans":[{"resource":{"droppedAttributesCount":-1}}]}"#,
            "droppedAttributesCount",
        ),
        (br#"{"resourceSpans":[]"#, "EOF"),
        (br#"{"resourceSpans":[]} trailing"#, "trailing"),
    ] {
        let error = json_to_protobuf(json).unwrap_err();
        assert!(error.contains(needle), "{error}");
    }
}

#[test]
fn long_messages_are_framed_with_multi_byte_lengths() {
    let mut request = rich_request();
    request.resource_spans[0].scope_spans[0].spans[0].name = "n".repeat(70_000);
    let json = to_otlp_json(&request.encode_to_vec()).unwrap();
    let back = json_to_protobuf(&json).unwrap();
    assert!(back.len() > 70_000);
    let decoded = ExportTraceServiceRequest::decode(&back[..]).unwrap();
    assert!(same(&decoded, &request));
}

#[test]
fn a_body_of_empty_spans_converts_to_less_than_its_own_size() {
    let mut json = br#"{"resourceSpans":[{"scopeSpans":[{"spans":["#.to_vec();
    for i in 0..100_000 {
        if i > 0 {
            json.push(b',');
        }
        json.extend_from_slice(b"{}");
    }
    json.extend_from_slice(b"]}]}]}");
    let body = json_to_protobuf(&json).unwrap();
    assert!(
        body.len() < json.len(),
        "{} bytes from {}",
        body.len(),
        json.len()
    );
    let decoded = ExportTraceServiceRequest::decode(&body[..]).unwrap();
    assert_eq!(
        decoded.resource_spans[0].scope_spans[0].spans.len(),
        100_000
    );
}

// The reader's handling of OTLP/JSON value forms (from the tests issue).

/// One span whose attributes are `attributes` (a JSON array) and whose kind and status code
/// are the given JSON values.
fn request(attributes: &str, kind: &str, code: &str, trace_id: &str) -> String {
    format!(
        r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{{"traceId":"{trace_id}","spanId":"eee19b7ec3c1b174","name":"n","kind":{kind},"startTimeUnixNano":"1","endTimeUnixNano":"2","status":{{"code":{code}}},"attributes":{attributes}}}]}}]}}]}}"#
    )
}

const ID: &str = "5b8efff798038103d269b633813fc60c";

fn decoded(json: &str) -> opentelemetry_proto::tonic::trace::v1::Span {
    let body = json_to_protobuf(json.as_bytes()).unwrap_or_else(|e| panic!("{e}: {json}"));
    let request = ExportTraceServiceRequest::decode(&body[..]).unwrap();
    request.resource_spans[0].scope_spans[0].spans[0].clone()
}

#[test]
fn int_values_are_read_as_strings_and_as_numbers() {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    // proto3 JSON writes int64 as a string; many clients write a number.
    let span = decoded(&request(
        r#"[{"key":"s","value":{"intValue":"-42"}},{"key":"n","value":{"intValue":42}}]"#,
        "2",
        "2",
        ID,
    ));
    let values: Vec<_> = span
        .attributes
        .iter()
        .map(|kv| kv.value.as_ref().unwrap().value.clone().unwrap())
        .collect();
    assert_eq!(values, [Value::IntValue(-42), Value::IntValue(42)]);
    assert_eq!(span.kind, 2, "SPAN_KIND_SERVER as a number");
    assert_eq!(
        span.status.unwrap().code,
        2,
        "STATUS_CODE_ERROR as a number"
    );
}

#[test]
fn bytes_array_and_kvlist_values_keep_their_content() {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    let span = decoded(&request(
        r#"[{"key":"b","value":{"bytesValue":"AAEC/w=="}},
            {"key":"a","value":{"arrayValue":{"values":[{"stringValue":"x"},{"intValue":"1"}]}}},
            {"key":"k","value":{"kvlistValue":{"values":[{"key":"inner","value":{"boolValue":true}}]}}}]"#,
        "1",
        "0",
        ID,
    ));
    let value = |i: usize| span.attributes[i].value.clone().unwrap().value.unwrap();
    assert_eq!(value(0), Value::BytesValue(vec![0, 1, 2, 255]), "base64");
    let Value::ArrayValue(array) = value(1) else {
        panic!("{:?}", value(1))
    };
    let items: Vec<_> = array.values.into_iter().map(|v| v.value.unwrap()).collect();
    assert_eq!(items, [Value::StringValue("x".into()), Value::IntValue(1)]);
    let Value::KvlistValue(list) = value(2) else {
        panic!("{:?}", value(2))
    };
    assert_eq!(list.values[0].key, "inner");
    assert_eq!(
        list.values[0].value.clone().unwrap().value,
        Some(Value::BoolValue(true))
    );
    // And the protobuf the door hands on passes the wire walker.
    let body = json_to_protobuf(
        request(
            r#"[{"key":"b","value":{"bytesValue":"AAEC/w=="}}]"#,
            "1",
            "0",
            ID,
        )
        .as_bytes(),
    )
    .unwrap();
    assert!(crate::otlp::parse_export_request(&body).is_ok_and(|p| p.spans.len() == 1));
}

#[test]
fn malformed_hex_ids_are_refused_with_a_message() {
    for (what, id) in [
        ("odd length", "5b8efff798038103d269b633813fc60"),
        ("not hex", "zz8efff798038103d269b633813fc60c"),
    ] {
        let error = json_to_protobuf(request("[]", "1", "0", id).as_bytes()).expect_err(what);
        assert!(!error.is_empty(), "{what}");
    }
    // Wrong length but valid hex: converts, and the wire walker refuses the 8-byte ID.
    let body = json_to_protobuf(request("[]", "1", "0", "5b8efff798038103").as_bytes()).unwrap();
    assert!(
        crate::otlp::parse_export_request(&body).is_err(),
        "an 8-byte trace ID"
    );
}
