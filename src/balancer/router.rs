//! Routing spans to backends over the consistent-hash ring: the engine of the `loadbalancing`
//! exporter (front tier) and of sampler-to-sampler forwarding (see [`super::cluster`]).
//!
//! A [`Router`] holds the current [`Ring`] and one [`Exporter`] per backend endpoint, each built
//! from the OTLP exporter template (`protocol.otlp`) with its endpoint replaced, so every backend
//! has its own queue and retries and a backend that stays down cannot stall the others. A
//! request's spans are grouped per owner (by trace ID, or by `service.name` with
//! `routing_key: service`) and sent as one request per backend. When the resolver changes the
//! endpoint set, new backends get exporters and removed ones are drained in the background.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::Deserialize;

use super::resolver::ResolverConfig;
use super::ring::{Ring, RoutingKey};
use crate::buffer::{group_by_trace, Chunk};
use crate::config::{ConfigError, ExporterConfig};
use crate::exporter::batch::encode_chunks;
use crate::exporter::ExportBatch;
use crate::exporter::{Exporter, OtlpExporterConfig};
use crate::wire::{
    encode_export_request, varint_len, FieldReader, Origin, ParsedRequest, ResourceGroup,
    ScopeGroup, TraceId, Value,
};

/// `exporters.loadbalancing.protocol`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProtocolConfig {
    pub otlp: OtlpExporterConfig,
}

/// `exporters.loadbalancing` (also `load_balancing`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoadBalancingConfig {
    /// `traceID` (default) or `service`.
    pub routing_key: RoutingKey,
    pub protocol: ProtocolConfig,
    pub resolver: ResolverConfig,
}

impl Default for LoadBalancingConfig {
    fn default() -> Self {
        Self {
            routing_key: RoutingKey::TraceId,
            protocol: ProtocolConfig::default(),
            resolver: ResolverConfig::default(),
        }
    }
}

/// Validates an OTLP exporter template whose endpoint the resolver fills in.
pub fn validate_template(template: &OtlpExporterConfig, path: &str, errors: &mut Vec<ConfigError>) {
    if !template.endpoint.is_empty() {
        errors.push(ConfigError::new(
            format!("{path}.endpoint"),
            "the endpoint is set per backend by the resolver; remove it",
        ));
    }
    let mut probe = template.clone();
    probe.endpoint = "backend.invalid:4317".into();
    probe.validate(path, errors);
}

impl LoadBalancingConfig {
    pub fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        validate_template(
            &self.protocol.otlp,
            &format!("{path}.protocol.otlp"),
            errors,
        );
        self.resolver.validate(&format!("{path}.resolver"), errors);
    }
}

/// No backend is known yet (the resolver has not found any): the client should retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no backend is available to route to yet")]
pub struct NoBackends;

struct Routes {
    ring: Ring,
    backends: HashMap<String, Arc<Exporter>>,
}

/// Routes spans to the backends of the current ring.
pub struct Router {
    name: String,
    routing: RoutingKey,
    template: OtlpExporterConfig,
    routes: RwLock<Routes>,
}

impl Router {
    /// A router with no backends yet; call [`Router::set_endpoints`] with the resolved set.
    /// `extra_headers` are added to every request (sampler forwarding marks its requests).
    pub fn new(
        name: &str,
        routing: RoutingKey,
        mut template: OtlpExporterConfig,
        extra_headers: &[(&str, &str)],
    ) -> Self {
        for (k, v) in extra_headers {
            template.headers.insert(k.to_string(), v.to_string());
        }
        Self {
            name: name.to_string(),
            routing,
            template,
            routes: RwLock::new(Routes {
                ring: Ring::new(&[]),
                backends: HashMap::new(),
            }),
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
        if routes.ring.endpoints() == ring.endpoints() {
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
                        tracing::error!(endpoint = %endpoint, "cannot start exporter for backend: {message}");
                        continue;
                    }
                },
            };
            next.insert(endpoint.clone(), exporter);
        }
        for (endpoint, exporter) in backends {
            tracing::info!(exporter = %self.name, endpoint = %endpoint, "backend left the ring; draining its queue");
            retire(exporter, self.drain_time());
        }
        tracing::info!(exporter = %self.name, backends = ?ring.endpoints(), "backend set changed");
        routes.ring = ring;
        routes.backends = next;
        true
    }

    fn drain_time(&self) -> Duration {
        (self.template.timeout * 3).max(Duration::from_secs(10))
    }

    fn start_backend(&self, endpoint: &str) -> Result<Exporter, String> {
        let mut config = self.template.clone();
        // The ring keeps the resolver's strings as they are (bare IPs when `port` is unset, as
        // in the Collector); connections default to port 4317.
        config.endpoint = super::resolver::endpoint_with_port(endpoint);
        Exporter::start_with(
            &format!("{}/{endpoint}", self.name),
            &ExporterConfig::Otlp(config),
            Some(Arc::from(endpoint)),
        )
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
            RoutingKey::Service => origins
                .iter()
                .enumerate()
                .filter_map(|(i, origin)| {
                    let ranges: Vec<(usize, usize)> = request
                        .spans
                        .iter()
                        .filter(|s| s.origin == i)
                        .map(|s| s.range)
                        .collect();
                    (!ranges.is_empty()).then(|| {
                        let key = service_name(origin).unwrap_or_default().into_bytes();
                        (key, Chunk::from_spans(Arc::clone(origin), body, &ranges))
                    })
                })
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
        // Per backend: its exporter, and per origin the framed spans going to it.
        let mut per_backend: BTreeMap<String, BackendShare<'_>> = BTreeMap::new();
        {
            let routes = self.read();
            let services: Vec<Vec<u8>> = match self.routing {
                RoutingKey::Service => request
                    .origins
                    .iter()
                    .map(|o| service_name(o).unwrap_or_default().into_bytes())
                    .collect(),
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
                    let share = (
                        Arc::clone(exporter),
                        vec![Vec::new(); request.origins.len()],
                        0,
                    );
                    per_backend.insert(endpoint.to_string(), share);
                }
                let share = per_backend.get_mut(endpoint).expect("inserted above");
                share.1[span.origin].push(framed);
                share.2 += 1;
            }
        }
        for (_, (exporter, runs, spans)) in per_backend {
            let mut groups: Vec<ResourceGroup<'_>> = Vec::new();
            for (origin, runs) in request.origins.iter().zip(runs) {
                if runs.is_empty() {
                    continue;
                }
                let scope = ScopeGroup {
                    scope: origin.scope.as_deref(),
                    scope_schema_url: &origin.scope_schema_url,
                    runs,
                };
                // Scopes of one resource arrive as consecutive origins: keep them together.
                match groups.last_mut() {
                    Some(g)
                        if g.resource == origin.resource.as_deref()
                            && g.resource_schema_url == &origin.resource_schema_url[..] =>
                    {
                        g.scopes.push(scope)
                    }
                    _ => groups.push(ResourceGroup {
                        resource: origin.resource.as_deref(),
                        resource_schema_url: &origin.resource_schema_url,
                        scopes: vec![scope],
                    }),
                }
            }
            let batch = ExportBatch {
                body: encode_export_request(&groups),
                spans,
            };
            exporter.enqueue(batch).await;
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

/// Drains a backend that left the ring, in the background.
fn retire(exporter: Arc<Exporter>, within: Duration) {
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + within;
        if let Some(exporter) = unique(exporter, deadline).await {
            exporter.shutdown(deadline).await;
        }
    });
}

/// What one request sends one backend: its exporter, per origin the framed spans, the span count.
type BackendShare<'a> = (Arc<Exporter>, Vec<Vec<&'a [u8]>>, usize);

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

/// The `service.name` attribute of an origin's encoded resource.
pub fn service_name(origin: &Origin) -> Option<String> {
    let resource = origin.resource.as_deref()?;
    let mut fields = FieldReader::new(resource);
    while let Ok(Some((field, value, _))) = fields.next() {
        let (1, Value::Len(kv)) = (field, value) else {
            continue;
        };
        let (mut key, mut val) = (None, None);
        let mut kv_fields = FieldReader::new(kv);
        while let Ok(Some((f, v, _))) = kv_fields.next() {
            match (f, v) {
                (1, Value::Len(k)) => key = Some(k),
                (2, Value::Len(any)) => val = Some(any),
                _ => {}
            }
        }
        if key != Some(b"service.name".as_slice()) {
            continue;
        }
        let mut any = FieldReader::new(val?);
        while let Ok(Some((f, v, _))) = any.next() {
            if let (1, Value::Len(s)) = (f, v) {
                return Some(String::from_utf8_lossy(s).into_owned());
            }
        }
        return None;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn a_span_is_taken_with_its_field_header_only_when_the_header_is_minimal() {
        let span = vec![7u8; 200];
        let mut body = Vec::new();
        crate::wire::put_framed_span(&mut body, &span);
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
        assert_eq!(service_name(&origin).as_deref(), Some("checkout"));
        assert_eq!(service_name(&Origin::default()), None);
    }

    #[test]
    fn a_template_with_an_endpoint_is_refused() {
        let mut errors = vec![];
        let template = OtlpExporterConfig {
            endpoint: "x:4317".into(),
            tls: crate::exporter::TlsClientConfig {
                insecure: true,
                ..Default::default()
            },
            ..Default::default()
        };
        validate_template(
            &template,
            "exporters.loadbalancing.protocol.otlp",
            &mut errors,
        );
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(
            errors[0].path,
            "exporters.loadbalancing.protocol.otlp.endpoint"
        );
    }
}
