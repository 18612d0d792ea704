//! `bytes_limiting`: keeps traces while a token bucket of bytes allows them.
//!
//! The Collector's token bucket: `bytes_per_second` tokens a second, holding at most
//! `burst_capacity` (default, or when 0: twice `bytes_per_second`). A trace takes as many tokens
//! as its OTLP protobuf size; see [`super::limiter`] for the bucket rules.
//!
//! The Collector sizes a trace as the marshaled `TracesData` of the batches it received for it.
//! tailgate computes the same encoding from the buffered spans: each run of consecutive spans that
//! arrived under one resource and scope counts as one `ResourceSpans` holding one `ScopeSpans`,
//! with the resource and scope always present (pdata writes them even when empty) and schema URLs
//! when set. The Collector groups the scopes of one request under one `ResourceSpans`, so when a
//! single request carried a trace's spans under several scopes the size here is a few bytes larger
//! per extra scope.

use serde::Deserialize;

use super::limiter::TokenBucket;
use super::rate_limiting::{burst_or_default, validate_rate};
use super::{sampled_if, Decision, Policy, PolicyError, TraceView};
use crate::otlp::wire::len_field_size;
use crate::otlp::Origin;
use crate::yaml::ConfigError;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BytesLimitingConfig {
    #[serde(default)]
    pub bytes_per_second: i64,
    #[serde(default)]
    pub burst_capacity: i64,
}

impl BytesLimitingConfig {
    pub fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        validate_rate(
            path,
            "bytes_per_second",
            self.bytes_per_second,
            self.burst_capacity,
            errors,
        );
    }

    pub fn build(&self) -> BytesLimitingPolicy {
        BytesLimitingPolicy {
            bucket: TokenBucket::new(
                self.bytes_per_second,
                burst_or_default(self.bytes_per_second, self.burst_capacity),
            ),
        }
    }
}

pub struct BytesLimitingPolicy {
    bucket: TokenBucket,
}

impl Policy for BytesLimitingPolicy {
    fn evaluate(&self, trace: &TraceView<'_>) -> Result<Decision, PolicyError> {
        Ok(sampled_if(self.bucket.allow(trace_size(trace) as u64)))
    }
}

/// The encoded size of the trace as an OTLP `TracesData` (see the module docs).
pub fn trace_size(trace: &TraceView<'_>) -> usize {
    let mut total = 0;
    let mut spans = trace.spans.iter().peekable();
    while let Some(first) = spans.next() {
        let origin = first.origin;
        let mut run = len_field_size(first.bytes.len());
        while let Some(next) = spans.next_if(|s| std::ptr::eq(s.origin, origin)) {
            run += len_field_size(next.bytes.len());
        }
        total += len_field_size(resource_spans_size(origin, run));
    }
    total
}

fn resource_spans_size(origin: &Origin, spans: usize) -> usize {
    let present = |b: &Option<bytes::Bytes>| len_field_size(b.as_ref().map_or(0, |b| b.len()));
    let url = |u: &[u8]| {
        if u.is_empty() {
            0
        } else {
            len_field_size(u.len())
        }
    };
    let scope_spans = present(&origin.scope) + spans + url(&origin.scope_schema_url);
    present(&origin.resource) + len_field_size(scope_spans) + url(&origin.resource_schema_url)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testing::*;
    use crate::policy::SpanRecord;
    use bytes::Bytes;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, TracesData};
    use prost::Message;
    use std::time::Duration;
    use tokio::time::advance;
    use Decision::*;

    /// The size prost gives the same spans grouped the same way.
    fn prost_size(spans: &[SpanRecord<'static>]) -> usize {
        let mut data = TracesData::default();
        let mut last: Option<&Origin> = None;
        for s in spans {
            if !last.is_some_and(|o| std::ptr::eq(o, s.origin)) {
                last = Some(s.origin);
                let url = |u: &Bytes| String::from_utf8(u.to_vec()).unwrap();
                data.resource_spans.push(ResourceSpans {
                    resource: Some(Message::decode(s.origin.resource.clone().unwrap()).unwrap()),
                    scope_spans: vec![ScopeSpans {
                        scope: Some(Message::decode(s.origin.scope.clone().unwrap()).unwrap()),
                        schema_url: url(&s.origin.scope_schema_url),
                        ..Default::default()
                    }],
                    schema_url: url(&s.origin.resource_schema_url),
                });
            }
            let rs = data.resource_spans.last_mut().unwrap();
            rs.scope_spans[0].spans.push(Span::decode(s.bytes).unwrap());
        }
        data.encoded_len()
    }

    #[test]
    fn the_trace_size_is_its_otlp_encoding() {
        let shared = leak_origin(vec![("service.name", text("checkout"))]);
        let spans = vec![
            SpanBuilder::new()
                .name("a")
                .attr("k", text("v"))
                .build_in(shared),
            SpanBuilder::new().name("b").build_in(shared),
            SpanBuilder::new()
                .name("c")
                .resource_attr("service.name", text("db"))
                .build(),
            SpanBuilder::new().name("d").build_in(shared),
        ];
        let t = trace(spans.clone());
        assert_eq!(trace_size(&t), prost_size(&spans));
        assert!(trace_size(&t) > spans.iter().map(|s| s.bytes.len()).sum::<usize>());
    }

    #[test]
    fn schema_urls_count_in_the_trace_size() {
        let mut with_urls = leak_origin(vec![("service.name", text("checkout"))]).clone();
        with_urls.resource_schema_url =
            Bytes::from_static(b"https://opentelemetry.io/schemas/1.26.0");
        with_urls.scope_schema_url = Bytes::from_static(b"https://opentelemetry.io/schemas/1.24.0");
        let origin: &'static Origin = Box::leak(Box::new(with_urls));
        let spans = vec![
            SpanBuilder::new().name("a").build_in(origin),
            SpanBuilder::new().name("b").build_in(origin),
        ];
        assert_eq!(trace_size(&trace(spans.clone())), prost_size(&spans));
    }

    #[test]
    fn negative_rates_and_bursts_are_config_errors_at_their_path() {
        let mut errors = Vec::new();
        BytesLimitingConfig {
            bytes_per_second: -1,
            burst_capacity: -5,
        }
        .validate(
            "processors.tail_sampling.policies[0].bytes_limiting",
            &mut errors,
        );
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "processors.tail_sampling.policies[0].bytes_limiting.bytes_per_second",
                "processors.tail_sampling.policies[0].bytes_limiting.burst_capacity",
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn traces_pass_while_the_byte_budget_lasts() {
        let t = trace(vec![SpanBuilder::new()
            .name("x".repeat(100).as_str())
            .build()]);
        let size = trace_size(&t) as i64;
        let p = BytesLimitingConfig {
            bytes_per_second: size,
            burst_capacity: 0,
        }
        .build();
        // The default burst holds two such traces.
        assert_eq!(p.evaluate(&t), Ok(Sampled));
        assert_eq!(p.evaluate(&t), Ok(Sampled));
        assert_eq!(p.evaluate(&t), Ok(NotSampled));
        advance(Duration::from_secs(1)).await;
        assert_eq!(p.evaluate(&t), Ok(Sampled));
        assert_eq!(p.evaluate(&t), Ok(NotSampled));
    }

    #[tokio::test(start_paused = true)]
    async fn a_trace_larger_than_the_burst_never_passes() {
        let t = trace(vec![SpanBuilder::new()
            .name("x".repeat(100).as_str())
            .build()]);
        let size = trace_size(&t) as i64;
        let p = BytesLimitingConfig {
            bytes_per_second: 1_000_000,
            burst_capacity: size - 1,
        }
        .build();
        assert_eq!(p.evaluate(&t), Ok(NotSampled));
    }
}
