//! tailgate: a tail-sampling gateway for OpenTelemetry traces.
//!
//! One pipeline: `receiver` (OTLP gRPC/HTTP) → `buffer` (traces held until `decision_wait`,
//! decided by `policy`) → `exporter` (batched, queued, retried OTLP). `wire` walks and writes the
//! protobuf so spans stay encoded end to end; `config` reads the Collector-format YAML;
//! `telemetry` serves metrics and health; `app` wires the stages.

pub mod app;
pub mod balancer;
pub mod buffer;
pub mod config;
pub mod exporter;
pub mod policy;
pub mod receiver;
pub mod telemetry;
pub mod wire;

/// Wire-compatible OTLP views compiled from `proto/tailgate/otlp_views.proto`.
pub mod views {
    include!(concat!(env!("OUT_DIR"), "/tailgate.views.rs"));
}

/// `google.rpc.Status` and `RetryInfo`, compiled from `proto/google/rpc/status.proto`.
pub mod google_rpc {
    include!(concat!(env!("OUT_DIR"), "/google.rpc.rs"));
}
