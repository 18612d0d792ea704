//! The span-editing processors gateways carry in front of tail sampling: `filter` (drop spans
//! that match OTTL conditions), `resource` (edit resource attributes) and `attributes` (edit span
//! attributes), run in pipeline order on each request before it reaches the buffer (or the
//! front tier's router), as a [`TraceConsumer`] wrapping the pipeline's.
//!
//! Everything works on the encoded request (docs/ARCHITECTURE.md, "Spans stay encoded"):
//!
//! - `filter` removes a matching span from the request's span list; its bytes are never copied.
//! - `resource` rewrites a resource's encoding once per resource of the request, not per span.
//! - `attributes` re-encodes only the spans an action changes, appending the new encoding to a
//!   copy of the body and pointing the span there; every untouched span, and the body itself
//!   when nothing changed, goes on byte for byte.
//!
//! Requests from other samplers (`tailgate-forwarded`) were processed by the sampler that
//! received them first and pass through unchanged.
//!
//! Differences from the Collector: a `filter` condition that fails at run time under
//! `error_mode: propagate` keeps the span (counted in `tailgate_processor_filter_errors`)
//! instead of dropping the whole request; the `attributes` processor's `include`/`exclude`
//! match blocks and the `extract` and `convert` actions are not supported (config errors).

pub mod actions;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Deserialize;

use crate::otlp::{BoxFuture, Incoming, Refusal, TraceConsumer};
use crate::policy::{Decision, OttlConditionConfig, Policy, SpanRecord, TraceView};
use crate::telemetry::{catalog, LogEvery};
use crate::yaml::ConfigError;
pub use actions::{ActionConfig, ActionSettings};

/// `Span.attributes`.
const SPAN_ATTRIBUTES: u32 = 9;
/// `Resource.attributes`.
const RESOURCE_ATTRIBUTES: u32 = 1;

/// `processors.filter`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilterConfig {
    /// `propagate` (default), `ignore` or `silent`.
    pub error_mode: String,
    pub traces: FilterTracesConfig,
    /// The legacy `spans: {include, exclude}` form: refused with a pointer to `traces.span`.
    pub spans: Option<serde_yaml::Value>,
}

/// `processors.filter.traces`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilterTracesConfig {
    pub span: Vec<String>,
    pub spanevent: Vec<String>,
}

impl FilterConfig {
    fn conditions(&self) -> OttlConditionConfig {
        OttlConditionConfig {
            error_mode: self.error_mode.clone(),
            span: self.traces.span.clone(),
            spanevent: self.traces.spanevent.clone(),
        }
    }

    /// The settings of the filter named `name` at `path`, or `None` with the errors added.
    pub fn settings(
        &self,
        name: &str,
        path: &str,
        errors: &mut Vec<ConfigError>,
    ) -> Option<StageSettings> {
        let before = errors.len();
        if self.spans.is_some() {
            errors.push(ConfigError::new(
                format!("{path}.spans"),
                "the legacy include/exclude form is not supported; write OTTL conditions under traces.span",
            ));
        }
        self.conditions()
            .validate(&format!("{path}.traces"), errors);
        (errors.len() == before).then(|| StageSettings::Filter {
            name: name.to_string(),
            conditions: self.conditions(),
        })
    }
}

/// `processors.attributes`: actions on span attributes.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AttributesConfig {
    pub actions: Vec<ActionConfig>,
}

/// `processors.resource`: actions on resource attributes (the Collector calls the list
/// `attributes`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResourceConfig {
    pub attributes: Vec<ActionConfig>,
}

impl AttributesConfig {
    pub fn settings(&self, path: &str, errors: &mut Vec<ConfigError>) -> Option<StageSettings> {
        action_list(&self.actions, &format!("{path}.actions"), errors)
            .map(StageSettings::Attributes)
    }
}

impl ResourceConfig {
    pub fn settings(&self, path: &str, errors: &mut Vec<ConfigError>) -> Option<StageSettings> {
        action_list(&self.attributes, &format!("{path}.attributes"), errors)
            .map(StageSettings::Resource)
    }
}

fn action_list(
    list: &[ActionConfig],
    path: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<Vec<ActionSettings>> {
    let before = errors.len();
    if list.is_empty() {
        errors.push(ConfigError::new(path, "at least one action is required"));
    }
    let actions: Vec<ActionSettings> = list
        .iter()
        .enumerate()
        .filter_map(|(i, a)| a.settings(&format!("{path}[{i}]"), errors))
        .collect();
    (errors.len() == before).then_some(actions)
}

/// One processor of the pipeline, validated.
#[derive(Debug, Clone)]
pub enum StageSettings {
    Filter {
        name: String,
        conditions: OttlConditionConfig,
    },
    Resource(Vec<ActionSettings>),
    Attributes(Vec<ActionSettings>),
}

enum Stage {
    Filter {
        policy: Box<dyn Policy>,
        filtered: metrics::Counter,
        failed: metrics::Counter,
        log: LogEvery,
        name: String,
    },
    Resource(Vec<ActionSettings>),
    Attributes(Vec<ActionSettings>),
}

/// The processors in front of a consumer.
pub struct Processors {
    stages: Vec<Stage>,
    inner: Arc<dyn TraceConsumer>,
}

impl Processors {
    /// `inner` behind `stages`, in order; `inner` itself when there are none.
    pub fn wrap(stages: &[StageSettings], inner: Arc<dyn TraceConsumer>) -> Arc<dyn TraceConsumer> {
        if stages.is_empty() {
            return inner;
        }
        let stages = stages
            .iter()
            .map(|s| match s {
                StageSettings::Filter { name, conditions } => Stage::Filter {
                    policy: Box::new(conditions.build()),
                    filtered: catalog::FILTER_SPANS_FILTERED.counter(&[name]),
                    failed: catalog::FILTER_ERRORS.counter(&[name]),
                    log: LogEvery::new(Duration::from_secs(10)),
                    name: name.clone(),
                },
                StageSettings::Resource(a) => Stage::Resource(a.clone()),
                StageSettings::Attributes(a) => Stage::Attributes(a.clone()),
            })
            .collect();
        Arc::new(Processors { stages, inner })
    }
}

impl TraceConsumer for Processors {
    fn consume<'a>(&'a self, request: Incoming<'a>) -> BoxFuture<'a, Result<(), Refusal>> {
        if request.hops > 0 {
            return self.inner.consume(request);
        }
        Box::pin(async move {
            let Incoming {
                body,
                mut parsed,
                hops,
            } = request;
            // A copy of the body with re-encoded spans appended, made when the first span changes.
            let mut rewritten: Option<Vec<u8>> = None;
            for stage in &self.stages {
                match stage {
                    Stage::Filter {
                        policy,
                        filtered,
                        failed,
                        log,
                        name,
                    } => {
                        let current = rewritten.as_deref().unwrap_or(body);
                        let before = parsed.spans.len();
                        let origins = &parsed.origins;
                        parsed.spans.retain(|s| {
                            let record = SpanRecord {
                                origin: &origins[s.origin],
                                bytes: &current[s.range.0..s.range.1],
                                info: s.info,
                            };
                            let view = TraceView {
                                trace_id: s.info.trace_id,
                                spans: vec![record],
                            };
                            match policy.evaluate(&view) {
                                Ok(Decision::Sampled) => false,
                                Ok(_) => true,
                                Err(e) => {
                                    failed.increment(1);
                                    if log.ready() {
                                        tracing::warn!(filter = %name, "filter condition failed, span kept: {e} (counted in tailgate_processor_filter_errors)");
                                    }
                                    true
                                }
                            }
                        });
                        filtered.increment((before - parsed.spans.len()) as u64);
                    }
                    Stage::Resource(actions) => {
                        for origin in &mut parsed.origins {
                            let resource = origin.resource.as_deref().unwrap_or(&[]);
                            // A malformed resource was refused at the door; nothing to do here.
                            if let Ok(Some(new)) =
                                actions::apply(resource, RESOURCE_ATTRIBUTES, actions)
                            {
                                origin.resource = Some(Bytes::from(new));
                            }
                        }
                    }
                    Stage::Attributes(actions) => {
                        for span in &mut parsed.spans {
                            let current = rewritten.as_deref().unwrap_or(body);
                            let bytes = &current[span.range.0..span.range.1];
                            if let Ok(Some(new)) = actions::apply(bytes, SPAN_ATTRIBUTES, actions) {
                                let out = rewritten.get_or_insert_with(|| body.to_vec());
                                // Framed as `ScopeSpans.spans`, as every span in a body is, so
                                // writers that reuse the field header find one.
                                crate::otlp::write::put_framed_span(out, &new);
                                span.range = (out.len() - new.len(), out.len());
                            }
                        }
                    }
                }
            }
            if parsed.spans.is_empty() {
                return Ok(());
            }
            let body = rewritten.as_deref().unwrap_or(body);
            self.inner.consume(Incoming { body, parsed, hops }).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otlp::parse_export_request;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    use prost::Message;
    use std::sync::Mutex;

    /// What reached the consumer: (the body's address, each span's bytes, each origin's resource).
    #[derive(Default)]
    struct Seen {
        body_at: usize,
        spans: Vec<Vec<u8>>,
        resources: Vec<Vec<u8>>,
    }

    #[derive(Default)]
    struct Capture(Mutex<Seen>);

    impl TraceConsumer for Capture {
        fn consume<'a>(&'a self, r: Incoming<'a>) -> BoxFuture<'a, Result<(), Refusal>> {
            let mut seen = self.0.lock().unwrap();
            seen.body_at = r.body.as_ptr() as usize;
            seen.spans = r
                .parsed
                .spans
                .iter()
                .map(|s| r.body[s.range.0..s.range.1].to_vec())
                .collect();
            seen.resources = r
                .parsed
                .origins
                .iter()
                .map(|o| o.resource.as_deref().unwrap_or(&[]).to_vec())
                .collect();
            Box::pin(async { Ok(()) })
        }
    }

    fn kv(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(value.into())),
            }),
            ..Default::default()
        }
    }

    fn span(n: u8, attributes: Vec<KeyValue>) -> Span {
        Span {
            trace_id: vec![n; 16],
            span_id: vec![n; 8],
            name: format!("span {n}"),
            attributes,
            ..Default::default()
        }
    }

    fn actions(yaml: &str) -> Vec<ActionSettings> {
        let list: Vec<ActionConfig> = serde_yaml::from_str(yaml).unwrap();
        let mut errors = vec![];
        let out = list
            .iter()
            .filter_map(|a| a.settings("a", &mut errors))
            .collect();
        assert!(errors.is_empty(), "{errors:?}");
        out
    }

    async fn run(stages: Vec<StageSettings>, body: &[u8]) -> Seen {
        let capture = Arc::new(Capture::default());
        let processors = Processors::wrap(&stages, capture.clone());
        let parsed = parse_export_request(body).unwrap();
        processors
            .consume(Incoming {
                body,
                parsed,
                hops: 0,
            })
            .await
            .unwrap();
        let seen = std::mem::take(&mut *capture.0.lock().unwrap());
        seen
    }

    #[tokio::test]
    async fn resources_are_edited_once_and_only_touched_spans_are_re_encoded() {
        let spans = vec![
            span(1, vec![kv("keep", "a")]),
            span(2, vec![kv("secret", "x"), kv("keep", "b")]),
            span(3, vec![]),
        ];
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", "api")],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans: spans.clone(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let body = request.encode_to_vec();
        let seen = run(
            vec![
                StageSettings::Resource(actions("[{key: env, action: insert, value: prod}]")),
                StageSettings::Attributes(actions("[{key: secret, action: delete}]")),
            ],
            &body,
        )
        .await;
        // One resource, rewritten once, shared by the three spans.
        assert_eq!(seen.resources.len(), 1);
        let resource = Resource::decode(&seen.resources[0][..]).unwrap();
        assert_eq!(
            resource.attributes,
            vec![kv("service.name", "api"), kv("env", "prod")]
        );
        // Spans 1 and 3 byte for byte; span 2 without its secret.
        assert_eq!(seen.spans[0], spans[0].encode_to_vec());
        assert_eq!(seen.spans[2], spans[2].encode_to_vec());
        let edited = Span::decode(&seen.spans[1][..]).unwrap();
        assert_eq!(edited.attributes, vec![kv("keep", "b")]);

        // Nothing to change: the consumer gets the very body that came in.
        let seen = run(
            vec![StageSettings::Attributes(actions(
                "[{key: absent, action: update, value: x}]",
            ))],
            &body,
        )
        .await;
        assert_eq!(seen.body_at, body.as_ptr() as usize);
    }
}
