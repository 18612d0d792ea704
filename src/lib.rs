//! tailgate: a tail-sampling gateway for OpenTelemetry traces.
//!
//! The modules are layers with one direction of dependency (docs/ARCHITECTURE.md; checked by
//! `tests/architecture.rs`):
//!
//! 1. [`otlp`] (the wire format, the span grouper, the stage contract), [`yaml`] (the Collector's
//!    config conventions), [`telemetry`] (metrics catalog, logs, health), [`auth`] (the
//!    authentication extensions): no stage, no config;
//! 2. [`policy`] (pure sampling policies), [`exporter`] (queues, retries, transports, the
//!    batcher), [`routing`] (resolver, ring, per-owner routing);
//! 3. the stages: [`receiver`], [`sampler`] (buffer, decisions, cluster), [`balancer`],
//!    [`processor`] (filter, resource and attributes in front of them);
//! 4. [`config`]: the YAML file validated into typed settings;
//! 5. [`app`]: wiring the stages by role, the shutdown sequence and live reload; [`replay`]:
//!    the configured policies over recorded traces (`tailgate replay`).
//!
//! `main.rs` holds flags, signals and exit codes.

pub mod app;
pub mod auth;
pub mod balancer;
pub mod config;
pub mod exporter;
pub mod otlp;
pub mod policy;
pub mod processor;
pub mod receiver;
pub mod replay;
pub mod routing;
pub mod sampler;
pub mod telemetry;
pub mod yaml;
