//! OTLP/JSON conversion: never panics; what it produces and the door admits decodes with prost;
//! and writing a request as OTLP/JSON and reading it back gives the same request.
#![no_main]

use libfuzzer_sys::fuzz_target;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use tailgate::otlp::json::{json_to_protobuf, to_otlp_json};
use tailgate::otlp::{admit, Admitted, InvalidUtf8};

fuzz_target!(|data: &[u8]| {
    let Ok(body) = json_to_protobuf(data) else {
        return;
    };
    let Ok(admitted) = admit(&body, InvalidUtf8::Repair) else {
        return;
    };
    let body = match admitted {
        Admitted::Sound(_) => body.to_vec(),
        Admitted::Repaired { body, .. } => body,
    };
    let request = ExportTraceServiceRequest::decode(&body[..]).expect("admitted JSON decodes");
    // Round trip through the writer, from the canonical encoding (no repeated singular fields).
    let canonical = request.encode_to_vec();
    let json = to_otlp_json(&canonical).expect("an admitted request renders as JSON");
    let back = json_to_protobuf(&json).expect("our own JSON reads back");
    let again = ExportTraceServiceRequest::decode(&back[..]).expect("and decodes");
    assert_eq!(format!("{request:?}"), format!("{again:?}"), "round trip changed it");
});
