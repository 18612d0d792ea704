//! The OTLP layer: everything tailgate knows about the bytes of OTLP trace requests, and the
//! types the stages above it talk through. It has no runtime (no tokio) and knows no stage.
//!
//! Spans stay encoded end to end (docs/ARCHITECTURE.md, "Spans stay encoded"): a request is
//! walked, never decoded into structs, and kept spans are written out byte for byte.
//!
//! - [`wire`]: the protobuf wire format at its lowest level (field reader, varints);
//! - [`request`]: walking and validating an `ExportTraceServiceRequest` ([`parse_export_request`]);
//! - [`validate`]: validation at the door ([`admit`]): every nested message, wire type and string,
//!   with invalid UTF-8 repaired or refused;
//! - [`schema`]: the OTLP trace schema as a table (repair, OTLP/JSON);
//! - [`summary`]: the per-span summary the buffer stores beside each span;
//! - [`write`]: writing requests around encoded spans;
//! - [`group`]: the one span grouper (per trace and origin into [`Chunk`]s, and back into one
//!   request per destination);
//! - [`handoff`]: the sampler-to-sampler extension fields (trace timings, moved decisions);
//! - [`attributes`]: reading attributes and other fields straight from encoded messages;
//! - [`annotate`]: adding an attribute to encoded scopes and spans without re-encoding them;
//! - [`json`]: OTLP/JSON ⇄ protobuf;
//! - [`codec`]: the pass-through gRPC codec;
//! - [`consumer`]: the receiver-to-stage contract ([`TraceConsumer`]);
//! - [`proto`]: generated message types (prost views, `google.rpc.Status`).

pub mod annotate;
pub mod attributes;
pub mod codec;
pub mod consumer;
pub mod group;
pub mod handoff;
pub mod json;
pub mod proto;
pub mod request;
pub mod schema;
pub mod summary;
#[cfg(test)]
pub(crate) mod testing;
pub mod validate;
pub mod wire;
pub mod write;

/// A 16-byte W3C trace ID.
pub type TraceId = [u8; 16];

pub use codec::{RawBytesCodec, EXPORT_PATH};
pub use consumer::{
    BoxFuture, Incoming, Refusal, TraceConsumer, FORWARDED_HEADER, LEAVING_MESSAGE,
};
pub use group::{encode_chunks, Chunk, EncodedBatch, RequestBuilder, SpanBatch};
pub use request::{
    admit, parse_export_request, read_span, status, Admitted, Origin, ParsedRequest, SpanInfo,
    SpanRef,
};
pub use summary::SpanSummary;
pub use validate::{Invalid, InvalidUtf8};
pub use wire::{FieldReader, Value, WireError};
