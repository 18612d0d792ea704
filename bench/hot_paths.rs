//! Criterion benchmarks of the sampler tier's hot paths, on requests shaped like the load
//! generator's: 512 spans of about 500 encoded bytes with ten attributes, 8 spans per trace.
//!
//! - `walk_request`: finding every span and its summary (the walk without deep validation);
//! - `validate_request`: the door's full walk (`otlp::admit`): every nested message, wire type and
//!   string checked, plus the spans found (the receiver's work per request);
//! - `trace_runs`: ordering a walked request's spans into runs of one trace and one origin,
//!   grouped by buffer shard (`otlp::group::for_each_trace_run`, the buffer's first step);
//! - `buffer_ingest`: walking plus grouping by trace, copying into stored chunks (with span
//!   summaries) and inserting; `buffer_ingest_zstd` the same with `buffer_compression: zstd` (after
//!   the dictionary is trained);
//! - `buffer_decide` / `buffer_decide_zstd`: deciding a request's worth of buffered traces (64
//!   traces of 8 spans) from their stored summaries, as the deciders do, errors + latency + 10 %
//!   probabilistic, kept chunks copied out for export;
//! - `decide_trace`: building a trace view by walking the spans of exported-form chunks and
//!   running the same policies (what a decision cost before summaries were stored);
//! - `encode_batch`: framing kept chunks into an export request;
//! - `at_limits/ingest_512_one_span_traces`: a request of 512 one-span traces into a buffer in
//!   the steady state `bench/sampler.sh cpu` puts it in: `num_traces` (200,000) buffered, both
//!   decision caches full (200,000 each, the default for that `num_traces`), so each new trace
//!   costs an index probe, an early decision of the oldest trace and a remembered decision.
//!   The tables are production-sized (tens of MB), so this is where cache misses show. The
//!   machine is noisy: compare two builds by running their bench binaries alternately, several
//!   times, in one session.

use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{status, ResourceSpans, ScopeSpans, Span, Status};
use prost::Message;

use tailgate::otlp::group::for_each_trace_run;
use tailgate::otlp::{admit, encode_chunks, parse_export_request, Admitted, Chunk, InvalidUtf8};
use tailgate::policy::{PolicyConfig, PolicySet, TraceView};
use tailgate::sampler::buffer::shard::shard_of;
use tailgate::sampler::{BufferCompression, BufferSettings, TraceBuffer};

const SPANS: usize = 512;
const SPANS_PER_TRACE: usize = 8;

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn span(seed: u64, trace: u64, index: usize) -> Span {
    use any_value::Value::*;
    let mut trace_id = [0u8; 16];
    trace_id[..8].copy_from_slice(
        &((seed << 20) ^ trace)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .to_le_bytes(),
    );
    trace_id[8..].copy_from_slice(&trace.wrapping_add(1).to_le_bytes());
    let start = 1_700_000_000_000_000_000 + trace * 1_000_000 + index as u64 * 10_000;
    Span {
        trace_id: trace_id.to_vec(),
        span_id: ((trace << 8) | index as u64 | 1).to_le_bytes().to_vec(),
        parent_span_id: if index == 0 {
            vec![]
        } else {
            ((trace << 8) | 1).to_le_bytes().to_vec()
        },
        name: "SELECT orders FROM db.orders WHERE customer_id = ?".into(),
        kind: 3,
        start_time_unix_nano: start,
        end_time_unix_nano: start + 4_500_000,
        attributes: vec![
            kv("http.method", StringValue("POST".into())),
            kv(
                "http.route",
                StringValue("/api/v1/orders/{order_id}/items".into()),
            ),
            kv("http.status_code", IntValue(200)),
            kv("db.system", StringValue("postgresql".into())),
            kv(
                "db.statement",
                StringValue("SELECT id, sku, qty FROM order_items WHERE order_id = $1".into()),
            ),
            kv(
                "net.peer.name",
                StringValue("orders-db.internal.example".into()),
            ),
            kv("net.peer.port", IntValue(5432)),
            kv("thread.name", StringValue("tokio-runtime-worker-3".into())),
            kv("cache.hit", BoolValue(index.is_multiple_of(2))),
            kv("customer.tier", StringValue("enterprise".into())),
        ],
        status: Some(Status {
            code: if trace.is_multiple_of(100) && index == 3 {
                status::StatusCode::Error as i32
            } else {
                0
            },
            message: String::new(),
        }),
        ..Default::default()
    }
}

fn request(seed: u64) -> Vec<u8> {
    request_shaped(seed, SPANS_PER_TRACE)
}

/// A request of [`SPANS`] spans, `spans_per_trace` to a trace; trace IDs are distinct for every
/// `seed` and trace.
fn request_shaped(seed: u64, spans_per_trace: usize) -> Vec<u8> {
    let spans = (0..SPANS)
        .map(|i| span(seed, (i / spans_per_trace) as u64, i % spans_per_trace))
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    kv(
                        "service.name",
                        any_value::Value::StringValue("orders-api".into()),
                    ),
                    kv(
                        "service.version",
                        any_value::Value::StringValue("1.42.0".into()),
                    ),
                    kv(
                        "host.name",
                        any_value::Value::StringValue("orders-api-7d9f8b-x2k4p".into()),
                    ),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "orders".into(),
                    version: "1.0".into(),
                    ..Default::default()
                }),
                spans,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
    .encode_to_vec()
}

fn policies() -> PolicySet {
    let configs: Vec<PolicyConfig> = serde_yaml::from_str(
        "[{name: errors, type: status_code, status_code: {status_codes: [ERROR]}},
          {name: slow, type: latency, latency: {threshold_ms: 2000}},
          {name: baseline, type: probabilistic, probabilistic: {sampling_percentage: 10}}]",
    )
    .unwrap();
    PolicySet::new(&configs, false)
}

fn hot_paths(c: &mut Criterion) {
    let body = request(7);
    let mut group = c.benchmark_group("per_request_512_spans");
    group.throughput(Throughput::Elements(SPANS as u64));
    group.bench_function("walk_request", |b| {
        b.iter(|| parse_export_request(&body).unwrap().spans.len())
    });
    // The door's full walk: every nested message, wire type and string (what a receiver runs).
    group.bench_function("validate_request", |b| {
        b.iter(|| match admit(&body, InvalidUtf8::Repair).unwrap() {
            Admitted::Sound(parsed) => parsed.spans.len(),
            Admitted::Repaired { .. } => unreachable!("the bench request is sound"),
        })
    });

    let parsed = parse_export_request(&body).unwrap();
    group.bench_function("trace_runs", |b| {
        b.iter(|| {
            let mut runs = 0usize;
            for_each_trace_run(
                &parsed.spans,
                |id| shard_of(id) as u8,
                |_, _, spans| runs += spans.count(),
            );
            runs
        })
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let settings = |compression| BufferSettings {
        decision_wait: Duration::from_secs(3600),
        wait_after_root: Duration::ZERO,
        max_trace_bytes: 0,
        block_on_overflow: false,
        num_traces: usize::MAX,
        max_buffered_bytes: 0,
        compression,
        sampled_cache_size: 0,
        non_sampled_cache_size: 0,
        drop_pending_on_shutdown: false,
        dry_run: false,
        record_policy: false,
    };
    let mut seed = 0u64;
    for (name, compression) in [
        ("", BufferCompression::None),
        ("_zstd", BufferCompression::Zstd),
    ] {
        let (tx, mut rx) = tokio::sync::mpsc::channel(1 << 16);
        let buffer =
            runtime.block_on(async { TraceBuffer::new(settings(compression), policies(), tx) });
        // Compression: train the dictionary first, as a running gateway soon has.
        while compression == BufferCompression::Zstd && !buffer.has_compression_dictionary() {
            seed += 1;
            let body = request(seed);
            runtime.block_on(async {
                let parsed = parse_export_request(&body).unwrap();
                buffer.ingest(parsed, &body).await.unwrap()
            });
            std::thread::sleep(Duration::from_millis(1));
        }
        group.bench_function(format!("buffer_ingest{name}"), |b| {
            b.iter_batched(
                || {
                    seed += 1;
                    request(seed)
                },
                |body| {
                    runtime.block_on(async {
                        let parsed = parse_export_request(&body).unwrap();
                        buffer.ingest(parsed, &body).await.unwrap()
                    })
                },
                BatchSize::SmallInput,
            )
        });
        runtime.block_on(buffer.drain());
        while rx.try_recv().is_ok() {}
        // Deciding: one request's traces are buffered (untimed), then decided (timed).
        group.bench_function(format!("buffer_decide{name}"), |b| {
            b.iter_batched(
                || {
                    // Kept chunks of the previous iteration: the channel is bounded.
                    while rx.try_recv().is_ok() {}
                    seed += 1;
                    let body = request(seed);
                    runtime.block_on(async {
                        let parsed = parse_export_request(&body).unwrap();
                        buffer.ingest(parsed, &body).await.unwrap()
                    });
                },
                |()| runtime.block_on(buffer.drain()),
                BatchSize::SmallInput,
            )
        });
        while rx.try_recv().is_ok() {}
    }
    group.finish();

    // One trace of 8 spans, as the buffer holds it.
    let parsed = parse_export_request(&body).unwrap();
    let origin = Arc::new(parsed.origins[0].clone());
    let trace_spans: Vec<(usize, usize)> = parsed.spans[..SPANS_PER_TRACE]
        .iter()
        .map(|s| s.range)
        .collect();
    let chunks = vec![Chunk::from_spans(Arc::clone(&origin), &body, &trace_spans)];
    let set = policies();
    let trace_id = parsed.spans[0].info.trace_id;
    let mut group = c.benchmark_group("per_trace_8_spans");
    group.throughput(Throughput::Elements(SPANS_PER_TRACE as u64));
    group.bench_function("decide_trace", |b| {
        b.iter(|| set.decide(&TraceView::from_chunks(trace_id, &chunks)))
    });
    group.finish();

    // A batch of 64 kept traces (512 spans) from two requests' worth of origins.
    let all: Vec<Chunk> = parsed
        .spans
        .chunks(SPANS_PER_TRACE)
        .map(|t| {
            Chunk::from_spans(
                Arc::new(parsed.origins[0].clone()),
                &body,
                &t.iter().map(|s| s.range).collect::<Vec<_>>(),
            )
        })
        .collect();
    let mut group = c.benchmark_group("per_batch_512_spans");
    group.throughput(Throughput::Elements(SPANS as u64));
    group.bench_function("encode_batch", |b| {
        b.iter(|| encode_chunks(&all).body.len())
    });
    group.finish();

    at_limits(c, &runtime, &settings);
}

/// The buffer at `num_traces` with full decision caches, taking one-span traces.
fn at_limits(
    c: &mut Criterion,
    runtime: &tokio::runtime::Runtime,
    settings: &dyn Fn(BufferCompression) -> BufferSettings,
) {
    const NUM_TRACES: usize = 200_000;
    let settings = BufferSettings {
        num_traces: NUM_TRACES,
        sampled_cache_size: NUM_TRACES,
        non_sampled_cache_size: NUM_TRACES,
        ..settings(BufferCompression::None)
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel(1 << 16);
    let buffer = runtime.block_on(async { TraceBuffer::new(settings, policies(), tx) });
    let ingest = |body: &[u8]| {
        runtime.block_on(async {
            let parsed = parse_export_request(body).unwrap();
            buffer.ingest(parsed, body).await.unwrap()
        })
    };
    // Enough traces to fill the buffer and then both caches (10 % of traces are kept, so the
    // kept cache fills last: 200,000 kept of 2,000,000 decided).
    let warm_up = (NUM_TRACES + 10 * NUM_TRACES).div_ceil(SPANS) as u64 + 100;
    let mut seed = 1_000_000u64;
    for _ in 0..warm_up {
        seed += 1;
        ingest(&request_shaped(seed, 1));
        while rx.try_recv().is_ok() {}
    }
    let mut group = c.benchmark_group("at_limits");
    group.throughput(Throughput::Elements(SPANS as u64));
    group.bench_function("ingest_512_one_span_traces", |b| {
        b.iter_batched(
            || {
                while rx.try_recv().is_ok() {}
                seed += 1;
                request_shaped(seed, 1)
            },
            |body| ingest(&body),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, hot_paths);
criterion_main!(benches);
