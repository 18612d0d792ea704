//! The front tier: the Collector's `loadbalancing` exporter, routing every trace to the sampler
//! that owns it.
//!
//! Data flows resolver → ring → per-sampler exporter: the [`crate::routing`] resolver publishes
//! the sampler endpoint set, the [`Router`] rebuilds its ring from each set and keeps one
//! OTLP exporter per sampler, and every request the receivers hand over ([`Balancer`] is their
//! [`TraceConsumer`]) is split by owner and written, one request per sampler, straight from the
//! incoming body.

pub mod config;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::otlp::{BoxFuture, Incoming, Refusal, TraceConsumer};
use crate::routing::{BackendTemplate, NoBackends, Resolver, ResolverSettings, Router, RoutingKey};

/// How often a backend whose exporter could not start is tried again.
const BACKEND_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// A front tier, validated.
#[derive(Debug, Clone)]
pub struct BalancerSettings {
    /// The exporter's component ID (`loadbalancing`), as logs and metrics name it.
    pub name: String,
    pub routing: RoutingKey,
    pub template: BackendTemplate,
    pub resolver: ResolverSettings,
}

/// The running front tier: the router and the resolver feeding it.
pub struct Balancer {
    router: Arc<Router>,
    _resolver: Resolver,
}

impl Balancer {
    /// Starts resolving and routing. The resolver and the task following it stop when
    /// `background` is cancelled.
    pub fn start(settings: &BalancerSettings, background: CancellationToken) -> Balancer {
        let router = Arc::new(Router::new(
            &settings.name,
            settings.routing,
            settings.template.clone(),
        ));
        router.start_rerouting(background.clone());
        let (resolver, mut endpoints) = Resolver::start(&settings.resolver, background.clone());
        let follower = Arc::clone(&router);
        tokio::spawn(async move {
            // Also every second: a backend whose exporter failed to start is tried again.
            let mut retry = tokio::time::interval(BACKEND_RETRY);
            loop {
                let current = endpoints.borrow_and_update().clone();
                follower.set_endpoints(&current);
                tokio::select! {
                    _ = background.cancelled() => return,
                    changed = endpoints.changed() => if changed.is_err() { return },
                    _ = retry.tick() => {}
                }
            }
        });
        Balancer {
            router,
            _resolver: resolver,
        }
    }

    /// Drains every sampler's queue until `deadline`.
    pub async fn shutdown(&self, deadline: tokio::time::Instant) {
        self.router.shutdown(deadline).await;
    }
}

impl TraceConsumer for Balancer {
    fn consume<'a>(&'a self, request: Incoming<'a>) -> BoxFuture<'a, Result<(), Refusal>> {
        Box::pin(async move {
            self.router
                .route_request(request.parsed, request.body)
                .await
                .map(|_| ())
                .map_err(|NoBackends| Refusal::NoBackends)
        })
    }
}
