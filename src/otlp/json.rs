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
}
