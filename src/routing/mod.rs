//! Where the samplers are, which one owns a trace, and sending spans to their owners: shared by
//! the front tier (the `loadbalancing` exporter) and the sampler cluster, which must agree on
//! every trace.
//!
//! - [`config`]: the `resolver` block in the Collector's shape, validated into
//!   [`ResolverSettings`];
//! - [`resolver`]: a task that publishes the sorted endpoint set on a `watch` channel whenever it
//!   changes, keeping the last good set through DNS failures;
//! - [`dns`]: the `nameserver` option's client (hickory-resolver);
//! - [`ring`]: the Collector's consistent-hash ring over an endpoint set, bit for bit;
//! - [`router`]: the ring plus one OTLP exporter per endpoint, splitting requests by owner (the
//!   front tier);
//! - [`peers`]: a sampler's view of its peers, with acknowledged sends (the sampler cluster).
//!
//! Everything here is either a pure function (the ring, endpoint formation) or a task that
//! takes its shutdown token from the caller and uses `tokio::time` throughout.

pub mod config;
pub mod dns;
pub mod peers;
pub mod resolver;
pub mod ring;
pub mod router;

pub use config::ResolverConfig;
pub use resolver::{endpoint_with_port, DnsSettings, Resolver, ResolverSettings};
pub use ring::{Ring, RoutingKey};
pub use router::{BackendTemplate, NoBackends, Router};
