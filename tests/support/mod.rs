//! Shared harness for the end-to-end tests in `tests/`.
//!
//! Each test file pulls this in with `mod support;`. What it provides:
//!
//! - [`RecordingBackend`]: a fake Tempo/Jaeger, as strict as one (4 MiB receive limit, strict
//!   decoding, refusals recorded). An OTLP trace server (gRPC or HTTP) on a loopback
//!   port that records every export request it receives, raw and decoded, with its headers, and lets a
//!   test wait for spans to arrive without sleeping. It can be told to fail requests (with or
//!   without a `RetryInfo` delay) or to hold responses, to exercise the gateway's retries and
//!   queue.
//! - [`Gateway`]: the real `tailgate` binary started on a config string, its output captured to a
//!   log file (printed automatically when a test panics), with health polling, metric scraping,
//!   SIGTERM and exit waiting.
//! - [`SamplerConfig`] / [`sampler_config`]: the Collector-format YAML of a sampler tier with given
//!   ports and policies, exporting to a backend.
//! - [`otlp`]: small builders for OTLP messages and a gRPC client.
//! - [`cluster`]: a clustered sampler tier behind a balancer, on loopback addresses.
//! - [`python`]: runs the Python SDK clients in `tests/clients/` (from the venv at `.venv`).
//! - [`node`]: runs the OpenTelemetry JS SDK clients in `tests/clients/js/` with Node.
//! - [`oracle`]: the Collector's probabilistic decision and ring, written independently of
//!   tailgate's code, for expected values.
//! - [`promtool`]: Prometheus' `promtool`, to lint `/metrics` and test alert rules.
//! - [`http`]: a minimal HTTP/1 client (health checks, metric scrapes, OTLP/HTTP posts).
//!
//! Waiting is always on a signal (the backend's watch channel, a process exit), bounded by a
//! timeout. The only polling loop is [`Gateway::wait_ready`], because a starting process gives no
//! other signal that it is listening.

// Each test binary uses a different part of this module.
#![allow(dead_code)]

pub mod backend;
pub mod cluster;
pub mod config;
pub mod dns;
pub mod gateway;
pub mod http;
pub mod node;
pub mod oracle;
pub mod otlp;
pub mod promtool;
pub mod python;

#[allow(unused_imports)]
pub use backend::{
    BackendBuilder, Failure, Protocol, ReceivedRequest, ReceivedSpan, RecordingBackend,
    RefusedRequest, WaitTimeout, DEFAULT_MAX_RECEIVE_BYTES,
};
#[allow(unused_imports)]
pub use config::{sampler_config, SamplerConfig, SamplerPorts};
#[allow(unused_imports)]
pub use gateway::{assert_declared, parse_metric, parse_metric_unchecked, Gateway};

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU32, Ordering};

/// A loopback TCP port for a test to hand to a child process's config, free when handed out.
///
/// Taken below the kernel's ephemeral range (`net.ipv4.ip_local_port_range`, 32768-60999 by
/// default), where no `bind :0` and no outgoing connection's local port lands: a port from the
/// ephemeral range, bound and released, was seen taken again before the gateway bound it (by
/// something else in the parallel tests; the gateway refused to start, "Address already in use"). Ports go out in turn
/// from a per-process counter, starting at an offset from the pid so that test binaries running
/// at once rarely meet, and each is checked free by binding it. Falls back to `bind :0` when the
/// ephemeral range leaves too little room below it.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOWEST: u32 = 10_000;
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    if ephemeral_low > LOWEST + 1_000 {
        let room = ephemeral_low - LOWEST;
        let start = std::process::id().wrapping_mul(7_919) % room;
        for _ in 0..room {
            let turn = NEXT.fetch_add(1, Ordering::Relaxed);
            let port = (LOWEST + (start + turn) % room) as u16;
            if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
                return port;
            }
        }
    }
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// `127.0.0.1:port`.
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// Lower-case hex of an ID (trace or span), as OTLP/JSON and the Python SDK print them.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
