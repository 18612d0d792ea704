//! The front tier: the Collector's `loadbalancing` exporter, routing every trace to the sampler
//! that owns it.
//!
//! Data flows resolver → ring → per-sampler exporter:
//!
//! - [`resolver`] owns the `resolver` config block (`static` or `dns`) and a task that publishes
//!   the sorted sampler endpoint set on a `watch` channel whenever it changes, keeping the last
//!   good set through DNS failures;
//! - [`dns`] is the small DNS client behind the `dns` resolver's `nameserver` option;
//! - [`ring`] is the Collector's consistent-hash ring, built from each endpoint set, mapping a
//!   trace ID (or `service.name`) to its sampler exactly as a Collector balancer would, so mixed
//!   fleets agree on every trace.
//!
//! - [`router`] runs the `loadbalancing` exporter: the current ring plus one OTLP exporter per
//!   sampler, routing each request's spans to their owners;
//! - [`cluster`] keeps traces whole while samplers come and go: samplers share the ring, forward
//!   spans they do not own and hand off buffered traces that move (see its docs for the design).
//!
//! Everything here is either a pure function (ring, endpoint formation, DNS packets) or a task
//! that takes its shutdown token from the caller and uses `tokio::time` throughout.

pub mod cluster;
pub mod dns;
pub mod resolver;
pub mod ring;
pub mod router;

pub use cluster::{Cluster, ClusterConfig, FORWARDED_HEADER};
pub use resolver::{
    endpoint_with_port, DnsResolverConfig, Resolver, ResolverConfig, StaticResolverConfig,
};
pub use ring::{Ring, RoutingKey};
pub use router::{LoadBalancingConfig, NoBackends, Router};
