//! The door's property (issue 10): whatever `admit` accepts decodes with prost (the generated
//! OTLP types, as strict backends decode), and a repair keeps every span without invalid UTF-8
//! byte for byte; whatever prost decodes, the door accepts unless it breaks a rule prost does
//! not check (trace and span IDs, value nesting depth, groups).
#![no_main]

use libfuzzer_sys::fuzz_target;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use tailgate::otlp::validate::span_has_invalid_utf8;
use tailgate::otlp::{admit, parse_export_request, Admitted, InvalidUtf8, WireError};

fuzz_target!(|body: &[u8]| {
    let prost_ok = ExportTraceServiceRequest::decode(body).is_ok();
    match admit(body, InvalidUtf8::Repair) {
        Ok(Admitted::Sound(parsed)) => {
            assert!(prost_ok, "admitted as sound, but prost refuses it");
            assert!(admit(body, InvalidUtf8::Refuse).is_ok());
            let shallow = parse_export_request(body).expect("the shallow walk agrees");
            assert_eq!(shallow.spans.len(), parsed.spans.len());
            for (a, b) in shallow.spans.iter().zip(&parsed.spans) {
                assert_eq!((a.range, a.info), (b.range, b.info));
            }
        }
        Ok(Admitted::Repaired {
            body: repaired,
            parsed,
            spans,
        }) => {
            ExportTraceServiceRequest::decode(&repaired[..])
                .expect("a repaired request decodes with prost");
            assert!(spans <= parsed.spans.len());
            let before = parse_export_request(body).expect("the shallow walk agrees");
            assert_eq!(before.spans.len(), parsed.spans.len());
            for (b, a) in before.spans.iter().zip(&parsed.spans) {
                let old = &body[b.range.0..b.range.1];
                if !span_has_invalid_utf8(old) {
                    assert_eq!(old, &repaired[a.range.0..a.range.1], "a sound span changed");
                }
                assert_eq!(a.info, b.info);
            }
            let refused = admit(body, InvalidUtf8::Refuse).expect_err("refuse mode refuses");
            assert_eq!(refused.reason(), "invalid_utf8");
        }
        Err(error) => {
            if prost_ok {
                let allowed = match error.error {
                    WireError::BadWireType { wire_type, .. } => wire_type == 3 || wire_type == 4,
                    _ => matches!(error.reason(), "bad_id" | "too_deep"),
                };
                assert!(allowed, "prost decodes it, but the door refused: {error}");
            }
            // The message names a path and never panics to render.
            let _ = error.to_string();
        }
    }
});
