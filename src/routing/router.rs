//! Routing spans to backends over the consistent-hash ring: the engine of the `loadbalancing`
//! exporter and of sampler-to-sampler forwarding.
//!
//! A [`Router`] holds the current [`Ring`] and one [`Exporter`] per backend endpoint, each built
//! from the OTLP exporter template (`protocol.otlp`) for its endpoint, so every backend has its
//! own queue and retries and a backend that stays down cannot stall the others. A request's spans
//! are grouped per owner (by trace ID, or by `service.name` with `routing_key: service`) and sent
//! as one request per backend. When the resolver changes the endpoint set, new backends get
//! exporters and removed ones are drained in the background.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::resolver::endpoint_with_port;
use super::ring::{Ring, RoutingKey};
use crate::exporter::settings::QueueConfig;
use crate::exporter::{
    Exporter, ExporterSettings, GrpcClientSettings, RetryConfig, TransportSettings,
};
use crate::otlp::attributes::service_name;
use crate::otlp::group::{chunks_by_origin, group_by_trace};
use crate::otlp::wire::varint_len;
use crate::otlp::{
    encode_chunks, parse_export_request, Chunk, EncodedBatch, Origin, ParsedRequest,
    RequestBuilder, TraceId,
};
use crate::telemetry::catalog;

/// No backend is known yet (the resolver has not found any): the client should retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no backend is available to route to yet")]
pub struct NoBackends;

/// How to reach each backend the resolver finds.
#[derive(Debug, Clone)]
pub struct BackendTemplate {
    pub client: GrpcClientSettings,
    pub retry: RetryConfig,
    pub queue: QueueConfig,
}

struct Routes {
    ring: Ring,
    /// One exporter per endpoint of the ring whose exporter could be started; an endpoint whose
    /// exporter failed to start stays on the ring (so this balancer routes as every other does)
    /// and is tried again at every [`Router::set_endpoints`].
    backends: HashMap<String, Arc<Exporter>>,
}

/// Routes spans to the backends of the current ring.
pub struct Router {
    name: String,
    routing: RoutingKey,
    template: BackendTemplate,
    routes: RwLock<Routes>,
    /// Where a retired backend's exporter hands back what it could not deliver.
    returned: mpsc::UnboundedSender<EncodedBatch>,
    returned_rx: std::sync::Mutex<Option<mpsc::UnboundedReceiver<EncodedBatch>>>,
    rerouted: metrics::Counter,
}

impl Router {
    /// A router with no backends yet; call [`Router::set_endpoints`] with the resolved set.
    pub fn new(name: &str, routing: RoutingKey, template: BackendTemplate) -> Self {
        let (returned, returned_rx) = mpsc::unbounded_channel();
        Self {
            name: name.to_string(),
            routing,
            template,
            routes: RwLock::new(Routes {
                ring: Ring::new(&[]),
                backends: HashMap::new(),
            }),
            returned,
            returned_rx: std::sync::Mutex::new(Some(returned_rx)),
            rerouted: catalog::LB_REROUTED_SPANS.counter(&[name]),
        }
    }

    /// Starts the task that routes again what retired backends hand back (their queue, and any
    /// batch their last attempt failed), until `stop`. Call once.
    pub fn start_rerouting(self: &Arc<Self>, stop: CancellationToken) {
        let Some(mut returned) = self
            .returned_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        else {
            return;
        };
        let router = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                let batch = tokio::select! {
                    _ = stop.cancelled() => return,
                    batch = returned.recv() => match batch {
                        Some(batch) => batch,
                        None => return,
                    },
                };
                router.reroute(batch, &stop).await;
            }
        });
    }

    /// Routes a handed-back batch by the current ring, waiting while no backend is known.
    async fn reroute(&self, batch: EncodedBatch, stop: &CancellationToken) {
        loop {
            // We wrote this request; it always parses.
            let Ok(parsed) = parse_export_request(&batch.body) else {
                return;
            };
            match self.route_request(parsed, &batch.body).await {
                Ok(spans) => {
                    self.rerouted.increment(spans as u64);
                    return;
                }
                Err(NoBackends) => {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                }
            }
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Routes> {
        self.routes.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces the endpoint set: builds the new ring, starts exporters for new endpoints and
    /// drains the ones that left. Returns whether the set changed.
    pub fn set_endpoints(&self, endpoints: &[String]) -> bool {
        let ring = Ring::new(endpoints);
        let mut routes = self.routes.write().unwrap_or_else(|p| p.into_inner());
        let complete = routes.backends.len() == routes.ring.endpoints().len();
        if routes.ring.endpoints() == ring.endpoints() && complete {
            return false;
        }
        let mut backends = std::mem::take(&mut routes.backends);
        let mut next = HashMap::new();
        for endpoint in ring.endpoints() {
            let exporter = match backends.remove(endpoint) {
                Some(e) => e,
                None => match self.start_backend(endpoint) {
                    Ok(e) => Arc::new(e),
                    Err(message) => {
                        // Retried every second while it fails: logged at most every 10 s.
                        static START_LOG: std::sync::LazyLock<crate::telemetry::LogEvery> =
                            std::sync::LazyLock::new(|| {
                                crate::telemetry::LogEvery::new(std::time::Duration::from_secs(10))
                            });
                        if START_LOG.ready() {
                            tracing::error!(endpoint = %endpoint, "cannot start exporter for backend: {message}");
                        }
                        continue;
                    }
                },
            };
            next.insert(endpoint.clone(), exporter);
        }
        for (endpoint, exporter) in backends {
            tracing::info!(exporter = %self.name, endpoint = %endpoint, "backend left the ring; what it cannot take goes to the new owners");
            exporter.stop_taking_spans();
            retire(exporter, self.drain_time());
        }
        tracing::info!(exporter = %self.name, backends = ?ring.endpoints(), "backend set changed");
        routes.ring = ring;
        routes.backends = next;
        true
    }

    fn drain_time(&self) -> Duration {
        (self.template.client.timeout * 3).max(Duration::from_secs(10))
    }

    fn start_backend(&self, endpoint: &str) -> Result<Exporter, String> {
        // The ring keeps the resolver's strings as they are (bare IPs when `port` is unset, as
        // in the Collector); connections default to port 4317.
        let grpc = self
            .template
            .client
            .for_endpoint(&endpoint_with_port(endpoint))?;
        let settings = ExporterSettings {
            name: format!("{}/{endpoint}", self.name),
            transport: TransportSettings::Grpc(grpc),
            retry: self.template.retry.clone(),
            queue: self.template.queue.clone(),
        };
        Exporter::start_returning(&settings, Some(endpoint), Some(self.returned.clone()))
    }

    /// The endpoints of the current ring, sorted.
    pub fn endpoints(&self) -> Vec<String> {
        self.read().ring.endpoints().to_vec()
    }

    /// The backend that owns a trace under the current ring.
    pub fn owner_of_trace(&self, id: &TraceId) -> Option<String> {
        self.read().ring.endpoint_for(id).map(str::to_string)
    }

    /// Routes a validated request's spans, one request per backend.
    pub async fn route_request(
        &self,
        request: ParsedRequest,
        body: &[u8],
    ) -> Result<usize, NoBackends> {
        let spans = request.spans.len();
        if request
            .spans
            .iter()
            .all(|s| framed_span(body, s.range).is_some())
        {
            return self.route_in_place(&request, body).await.map(|_| spans);
        }
        // A sender used a non-minimal length prefix somewhere: re-frame the spans by copying.
        let origins: Vec<Arc<Origin>> = request.origins.into_iter().map(Arc::new).collect();
        let keyed: Vec<(Vec<u8>, Chunk)> = match self.routing {
            RoutingKey::TraceId => group_by_trace(&request.spans, &origins, body)
                .into_iter()
                .flat_map(|g| {
                    let id = g.id.to_vec();
                    g.chunks.into_iter().map(move |c| (id.clone(), c))
                })
                .collect(),
            RoutingKey::Service => chunks_by_origin(&request.spans, &origins, body)
                .into_iter()
                .map(|chunk| (service_key(&chunk.origin), chunk))
                .collect(),
        };
        self.route_keyed(keyed).await?;
        Ok(spans)
    }

    /// The front tier's fast path: each backend's request is written straight from the incoming
    /// body (resource and scope encodings, then the spans with their original framing), so a
    /// span is copied once on its way through. Returns false, having sent nothing, when a span's
    /// field header cannot be reused (see [`framed_span`]).
    async fn route_in_place(
        &self,
        request: &ParsedRequest,
        body: &[u8],
    ) -> Result<bool, NoBackends> {
        // Per backend: its exporter, and the request being written for it.
        let mut per_backend: BTreeMap<String, (Arc<Exporter>, RequestBuilder<'_>)> =
            BTreeMap::new();
        {
            let routes = self.read();
            let services: Vec<Vec<u8>> = match self.routing {
                RoutingKey::Service => request.origins.iter().map(service_key).collect(),
                RoutingKey::TraceId => Vec::new(),
            };
            for span in &request.spans {
                let key: &[u8] = match self.routing {
                    RoutingKey::TraceId => &span.info.trace_id,
                    RoutingKey::Service => &services[span.origin],
                };
                let endpoint = routes.ring.endpoint_for(key).ok_or(NoBackends)?;
                let Some(framed) = framed_span(body, span.range) else {
                    return Ok(false);
                };
                // Look up before inserting: the endpoint is copied once per backend, not per span.
                if !per_backend.contains_key(endpoint) {
                    let exporter = routes.backends.get(endpoint).ok_or(NoBackends)?;
                    per_backend.insert(
                        endpoint.to_string(),
                        (Arc::clone(exporter), RequestBuilder::new()),
                    );
                }
                let (_, builder) = per_backend.get_mut(endpoint).expect("inserted above");
                builder.push(&request.origins[span.origin], framed, 1);
            }
        }
        for (_, (exporter, builder)) in per_backend {
            exporter.enqueue(builder.finish()).await;
        }
        Ok(true)
    }

    /// Routes whole traces (a sampler handing off its buffer).
    pub async fn route_traces(
        &self,
        traces: Vec<(TraceId, Vec<Chunk>)>,
    ) -> Result<usize, NoBackends> {
        let keyed: Vec<(Vec<u8>, Chunk)> = traces
            .into_iter()
            .flat_map(|(id, chunks)| chunks.into_iter().map(move |c| (id.to_vec(), c)))
            .collect();
        let spans = keyed.iter().map(|(_, c)| c.spans as usize).sum();
        self.route_keyed(keyed).await?;
        Ok(spans)
    }

    async fn route_keyed(&self, keyed: Vec<(Vec<u8>, Chunk)>) -> Result<(), NoBackends> {
        if keyed.is_empty() {
            return Ok(());
        }
        let mut per_backend: BTreeMap<String, (Arc<Exporter>, Vec<Chunk>)> = BTreeMap::new();
        {
            let routes = self.read();
            for (key, chunk) in keyed {
                let endpoint = routes.ring.endpoint_for(&key).ok_or(NoBackends)?;
                if !per_backend.contains_key(endpoint) {
                    let exporter = routes.backends.get(endpoint).ok_or(NoBackends)?;
                    per_backend.insert(endpoint.to_string(), (Arc::clone(exporter), Vec::new()));
                }
                per_backend
                    .get_mut(endpoint)
                    .expect("inserted above")
                    .1
                    .push(chunk);
            }
        }
        for (_, (exporter, chunks)) in per_backend {
            exporter.enqueue(encode_chunks(&chunks)).await;
        }
        Ok(())
    }

    /// Drains every backend's queue until `deadline`.
    pub async fn shutdown(&self, deadline: tokio::time::Instant) {
        let backends: Vec<Arc<Exporter>> = {
            let mut routes = self.routes.write().unwrap_or_else(|p| p.into_inner());
            routes.backends.drain().map(|(_, e)| e).collect()
        };
        for exporter in backends {
            if let Some(exporter) = unique(exporter, deadline).await {
                exporter.shutdown(deadline).await;
            }
        }
    }
}

/// The routing key of an origin with `routing_key: service`: its `service.name`, or empty.
fn service_key(origin: &Origin) -> Vec<u8> {
    origin
        .resource
        .as_deref()
        .and_then(service_name)
        .unwrap_or_default()
        .to_vec()
}

/// Waits until no route call holds the exporter any more, then returns it.
async fn unique(mut exporter: Arc<Exporter>, deadline: tokio::time::Instant) -> Option<Exporter> {
    loop {
        match Arc::try_unwrap(exporter) {
            Ok(e) => return Some(e),
            Err(shared) => {
                if tokio::time::Instant::now() >= deadline {
                    return None;
                }
                exporter = shared;
                // A route call holds it for the time of one enqueue: a short wait is enough.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
}

/// Drains a backend that left the ring, in the background; its series leave `/metrics` after.
fn retire(exporter: Arc<Exporter>, within: Duration) {
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + within;
        if let Some(exporter) = unique(exporter, deadline).await {
            exporter.retire(deadline).await;
        }
    });
}

/// A span's bytes together with the `ScopeSpans.spans` field header in front of them in the
/// request, when that header is the minimal one (`0x12`, shortest varint length), which every
/// protobuf encoder writes. `None` otherwise.
fn framed_span(body: &[u8], (start, end): (usize, usize)) -> Option<&[u8]> {
    let len = end - start;
    let header = 1 + varint_len(len as u64);
    let from = start.checked_sub(header)?;
    if body[from] != 0x12 {
        return None;
    }
    let prefix = &body[from + 1..start];
    let mut value = 0u64;
    for (i, &byte) in prefix.iter().enumerate() {
        let last = i + 1 == prefix.len();
        if (byte & 0x80 == 0) != last {
            return None;
        }
        value |= u64::from(byte & 0x7f) << (7 * i);
    }
    (value == len as u64).then_some(&body[from..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn a_span_is_taken_with_its_field_header_only_when_the_header_is_minimal() {
        let span = vec![7u8; 200];
        let mut body = Vec::new();
        crate::otlp::write::put_framed_span(&mut body, &span);
        let start = body.len() - span.len();
        assert_eq!(framed_span(&body, (start, body.len())), Some(&body[..]));
        // The same span behind a padded (non-minimal) length prefix: 0x12 0xc8 0x81 0x00.
        let mut padded = vec![0x12, 0xc8, 0x81, 0x00];
        padded.extend_from_slice(&span);
        assert_eq!(framed_span(&padded, (4, padded.len())), None);
        // A span at the start of the body has no header in front of it.
        assert_eq!(framed_span(&span, (0, span.len())), None);
    }

    #[test]
    fn service_name_is_read_from_the_encoded_resource() {
        // Resource { attributes: [ {host.name: "h"}, {service.name: "checkout"} ] }
        use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
        use opentelemetry_proto::tonic::resource::v1::Resource;
        use prost::Message;
        let kv = |k: &str, v: &str| KeyValue {
            key: k.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(v.into())),
            }),
            ..Default::default()
        };
        let resource = Resource {
            attributes: vec![kv("host.name", "h"), kv("service.name", "checkout")],
            ..Default::default()
        };
        let origin = Origin {
            resource: Some(Bytes::from(resource.encode_to_vec())),
            ..Default::default()
        };
        assert_eq!(service_key(&origin), b"checkout");
        assert_eq!(service_key(&Origin::default()), b"");
    }
}
