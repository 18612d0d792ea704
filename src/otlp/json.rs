//! OTLP/JSON ⇄ protobuf, for the HTTP receiver's JSON bodies and the exporters that write JSON
//! (`otlphttp` with `encoding: json`, the `file` and `debug` exporters). Everything past the door
//! sees protobuf bytes; these are the only places JSON exists.

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

/// Converts an OTLP JSON request (hex IDs, enums as numbers, int64 as string or number) to
/// protobuf bytes.
pub fn json_to_protobuf(json: &[u8]) -> Result<Bytes, String> {
    let request: ExportTraceServiceRequest =
        serde_json::from_slice(json).map_err(|e| e.to_string())?;
    Ok(Bytes::from(request.encode_to_vec()))
}

/// Renders an encoded request as OTLP JSON (hex IDs, camelCase fields).
pub fn to_otlp_json(body: &[u8]) -> Result<Vec<u8>, String> {
    let request = ExportTraceServiceRequest::decode(body).map_err(|e| e.to_string())?;
    serde_json::to_vec(&request).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let body =
            json_to_protobuf(request("[]", "1", "0", "5b8efff798038103").as_bytes()).unwrap();
        assert!(
            crate::otlp::parse_export_request(&body).is_err(),
            "an 8-byte trace ID"
        );
    }
}
