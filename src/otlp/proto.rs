//! Message types compiled from `proto/` by `build.rs`: wire-compatible views of OTLP whose nested
//! messages stay `Bytes` (for tests and the few places that decode), and `google.rpc.Status` /
//! `RetryInfo` for error details.

/// Wire-compatible OTLP views compiled from `proto/tailgate/otlp_views.proto`.
pub mod views {
    include!(concat!(env!("OUT_DIR"), "/tailgate.views.rs"));
}

/// `google.rpc.Status` and `RetryInfo`, compiled from `proto/google/rpc/status.proto`.
pub mod google_rpc {
    include!(concat!(env!("OUT_DIR"), "/google.rpc.rs"));
}
