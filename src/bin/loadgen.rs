//! `tailgate-loadgen`: an OTLP/gRPC trace load generator for benchmarking the gateway end to end.
//!
//! The generator is built so that it costs little next to the gateway it measures:
//!
//! 1. Before the timed phase it builds a pool of `ExportTraceServiceRequest`s and encodes each one
//!    once with prost. Spans are about 500 encoded bytes with about ten attributes, and the spans of
//!    a trace are spread over `--requests-per-trace` requests, interleaved with other traces, so
//!    every request carries pieces of many traces (as a gateway sees traffic from many SDKs).
//! 2. The timed phase sends those bytes as they are through a raw-bytes tonic codec; `--concurrency`
//!    workers, one HTTP/2 connection each, claim requests from a shared schedule that paces them to
//!    `--rate` spans per second.
//! 3. When a run needs more spans than the pool holds (the pool is capped in memory), it goes round
//!    the pool again with every trace ID XORed with a per-round mask, so trace IDs stay unique and a
//!    trace's pieces still share one ID; the mask is applied at offsets found once by walking the
//!    encoded wire format. Timestamps are those of the pool's build and are not rewritten.
//!
//! Retryable statuses (`UNAVAILABLE`, `RESOURCE_EXHAUSTED`) are retried after a capped exponential
//! backoff and counted. The run ends with one JSON line of results on stdout, with each
//! acknowledged request's latency (send to reply, retries included) as p50/p99/p999/max.

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use bytes::{Bytes, BytesMut};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};
use prost::Message as _;
use tailgate::otlp::{parse_export_request, FieldReader, RawBytesCodec, Value, EXPORT_PATH};
use tokio::time::Instant;
use tonic::codec::CompressionEncoding;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

const USAGE: &str = "\
Usage: tailgate-loadgen [OPTIONS] (--total <SPANS> | --duration <DURATION>)

Sends synthetic traces to an OTLP/gRPC endpoint and prints one JSON line of results.

Options:
  --endpoint <URL>             OTLP/gRPC endpoint [default: http://127.0.0.1:4317]
  --rate <SPANS/S>             total spans per second, 0 = as fast as possible [default: 0]
  --batch <SPANS>              spans per request [default: 512]
  --spans-per-trace <N>        spans in each trace [default: 8]
  --requests-per-trace <N>     requests each trace is spread over, at most spans-per-trace [default: 4]
  --resources-per-request <N>  resources (services) each request's spans are split over [default: 1]
  --span-bytes <N>             approximate encoded size of each span: attributes are dropped or a
                               padding attribute added to get within a few bytes of it, at least
                               about 150 [default: as built, about 500]
  --concurrency <N>            requests in flight, one connection each [default: 4]
  --total <SPANS>              spans to send, rounded up to whole requests, then exit
  --duration <DURATION>        send for this long (e.g. 10s, 500ms, 2m), then exit
  --error-percent <PERCENT>    share of traces with one span of status ERROR [default: 1]
  --compression <none|gzip>    request compression [default: none]
  --seed <N>                   random seed [default: from the clock]
  --print-span-size            print the average encoded size of a Span message in bytes and exit
  -h, --help                   print this help
";

/// The smallest `--span-bytes`: a span with its IDs, times, name and a few attributes.
const MIN_SPAN_BYTES: usize = 150;

/// At most this many spans are pre-built (about 130 MB); longer runs go round the pool again.
const POOL_CAP_SPANS: u64 = 256 * 1024;

/// Spans built to measure the average span size for `--print-span-size`.
const SIZE_SAMPLE_SPANS: u64 = 64 * 1024;

/// A request is retried this many times on a retryable status before it counts as failed.
const MAX_RETRIES: u32 = 20;
const INITIAL_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_millis(500);

/// Failures beyond this many are counted but not logged one by one.
const LOGGED_FAILURES: u64 = 5;

fn main() -> ExitCode {
    let options = match Options::parse(std::env::args().skip(1)) {
        Ok(Some(options)) => options,
        Ok(None) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            eprintln!("tailgate-loadgen: {error:#}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(options) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("tailgate-loadgen: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(options: Options) -> anyhow::Result<ExitCode> {
    if options.print_span_size {
        let pool = Pool::build(&options, SIZE_SAMPLE_SPANS);
        println!("{:.1}", pool.avg_span_bytes());
        return Ok(ExitCode::SUCCESS);
    }

    let pool = Pool::build(&options, options.pool_spans());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let report = runtime.block_on(send_all(&options, pool))?;
    println!("{}", report.to_json());
    Ok(if report.failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

// ---------------------------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    None,
    Gzip,
}

#[derive(Debug, Clone)]
struct Options {
    endpoint: String,
    /// Spans per second over all workers; 0 means unpaced.
    rate: u64,
    batch: usize,
    spans_per_trace: usize,
    requests_per_trace: usize,
    resources_per_request: usize,
    /// Target encoded span size; `None` keeps spans as built.
    span_bytes: Option<usize>,
    concurrency: usize,
    total: Option<u64>,
    duration: Option<Duration>,
    error_percent: f64,
    compression: Compression,
    seed: u64,
    print_span_size: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            endpoint: "http://127.0.0.1:4317".to_owned(),
            rate: 0,
            batch: 512,
            spans_per_trace: 8,
            requests_per_trace: 4,
            resources_per_request: 1,
            span_bytes: None,
            concurrency: 4,
            total: None,
            duration: None,
            error_percent: 1.0,
            compression: Compression::None,
            seed: clock_seed(),
            print_span_size: false,
        }
    }
}

impl Options {
    /// Parses `--flag value` and `--flag=value` arguments; `Ok(None)` means help was asked for.
    fn parse(args: impl IntoIterator<Item = String>) -> anyhow::Result<Option<Self>> {
        let mut options = Self::default();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((flag, value)) if flag.starts_with("--") => {
                    (flag.to_owned(), Some(value.to_owned()))
                }
                _ => (arg, None),
            };
            if matches!(flag.as_str(), "-h" | "--help" | "--print-span-size") {
                if inline.is_some() {
                    bail!("{flag} takes no value");
                }
                if flag == "--print-span-size" {
                    options.print_span_size = true;
                    continue;
                }
                return Ok(None);
            }
            let value = match inline {
                Some(value) => value,
                None => args
                    .next()
                    .with_context(|| format!("{flag} needs a value"))?,
            };
            let bad = || format!("invalid value {value:?} for {flag}");
            match flag.as_str() {
                "--endpoint" => options.endpoint = value.clone(),
                "--rate" => options.rate = value.parse().with_context(bad)?,
                "--batch" => options.batch = value.parse().with_context(bad)?,
                "--spans-per-trace" => options.spans_per_trace = value.parse().with_context(bad)?,
                "--requests-per-trace" => {
                    options.requests_per_trace = value.parse().with_context(bad)?;
                }
                "--resources-per-request" => {
                    options.resources_per_request = value.parse().with_context(bad)?;
                }
                "--span-bytes" => options.span_bytes = Some(value.parse().with_context(bad)?),
                "--concurrency" => options.concurrency = value.parse().with_context(bad)?,
                "--total" => options.total = Some(value.parse().with_context(bad)?),
                "--duration" => options.duration = Some(parse_duration(&value).with_context(bad)?),
                "--error-percent" => options.error_percent = value.parse().with_context(bad)?,
                "--compression" => {
                    options.compression = match value.as_str() {
                        "none" => Compression::None,
                        "gzip" => Compression::Gzip,
                        _ => bail!("{}: expected none or gzip", bad()),
                    };
                }
                "--seed" => options.seed = value.parse().with_context(bad)?,
                _ => bail!("unknown option {flag}"),
            }
        }
        options.validate()?;
        Ok(Some(options))
    }

    fn validate(&self) -> anyhow::Result<()> {
        for (flag, value) in [
            ("--batch", self.batch),
            ("--spans-per-trace", self.spans_per_trace),
            ("--requests-per-trace", self.requests_per_trace),
            ("--resources-per-request", self.resources_per_request),
            ("--concurrency", self.concurrency),
        ] {
            if value == 0 {
                bail!("{flag} must be at least 1");
            }
        }
        if self.requests_per_trace > self.spans_per_trace {
            bail!(
                "--requests-per-trace {} is more than --spans-per-trace {}: a trace cannot be spread \
                 over more requests than it has spans",
                self.requests_per_trace,
                self.spans_per_trace
            );
        }
        if self.resources_per_request > self.batch {
            bail!(
                "--resources-per-request {} is more than --batch {}: every resource needs a span",
                self.resources_per_request,
                self.batch
            );
        }
        if let Some(bytes) = self.span_bytes {
            if !(MIN_SPAN_BYTES..=1024 * 1024).contains(&bytes) {
                bail!("--span-bytes must be between {MIN_SPAN_BYTES} and 1048576, not {bytes}");
            }
        }
        if !(0.0..=100.0).contains(&self.error_percent) {
            bail!(
                "--error-percent must be between 0 and 100, not {}",
                self.error_percent
            );
        }
        if self.total == Some(0) {
            bail!("--total must be at least 1");
        }
        if self.duration == Some(Duration::ZERO) {
            bail!("--duration must be longer than zero");
        }
        if !self.print_span_size && self.total.is_none() && self.duration.is_none() {
            bail!("give --total or --duration");
        }
        Ok(())
    }

    /// How many spans to pre-build: the whole run if it fits under the cap.
    fn pool_spans(&self) -> u64 {
        let by_duration = self
            .duration
            .filter(|_| self.rate > 0)
            .map(|duration| (duration.as_secs_f64() * self.rate as f64).ceil() as u64);
        let wanted = match (self.total, by_duration) {
            (Some(total), Some(paced)) => total.min(paced),
            (Some(n), None) | (None, Some(n)) => n,
            (None, None) => POOL_CAP_SPANS,
        };
        wanted.clamp(1, POOL_CAP_SPANS)
    }
}

/// Parses `500ms`, `10s`, `2m`, `1h` or a bare number of seconds; fractions are allowed.
fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .context("expected a number with a unit such as 10s")?;
    let seconds = match unit {
        "ms" => number / 1e3,
        "" | "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => bail!("unknown unit {unit:?}, expected ms, s, m or h"),
    };
    Duration::try_from_secs_f64(seconds).context("duration out of range")
}

fn clock_seed() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos() as u64);
    nanos ^ u64::from(std::process::id()).rotate_left(32)
}

// ---------------------------------------------------------------------------------------------
// Randomness
// ---------------------------------------------------------------------------------------------

/// xorshift64*: fast, small, and good enough for IDs and choices in synthetic data.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        // A splitmix64 step spreads similar seeds apart and never leaves the forbidden zero state.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Self((z ^ (z >> 31)) | 1)
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A uniform value in `0..n` (multiply-shift, no modulo bias worth caring about here).
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    /// True with probability `percent` / 100.
    fn chance(&mut self, percent: f64) -> bool {
        (self.next_u64() as f64) < percent / 100.0 * u64::MAX as f64
    }

    fn id<const N: usize>(&mut self) -> [u8; N] {
        let mut id = [0; N];
        for chunk in id.chunks_mut(8) {
            chunk.copy_from_slice(&self.next_u64().to_le_bytes()[..chunk.len()]);
        }
        id
    }
}

// ---------------------------------------------------------------------------------------------
// Synthetic traces
// ---------------------------------------------------------------------------------------------

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn string(key: &str, value: impl Into<String>) -> KeyValue {
    kv(key, any_value::Value::StringValue(value.into()))
}

fn int(key: &str, value: i64) -> KeyValue {
    kv(key, any_value::Value::IntValue(value))
}

fn boolean(key: &str, value: bool) -> KeyValue {
    kv(key, any_value::Value::BoolValue(value))
}

const SERVICES: [&str; 4] = ["checkout", "orders", "payments", "inventory"];

fn resource(service: &str, instance: usize) -> Resource {
    Resource {
        attributes: vec![
            string("service.name", service),
            string("service.version", "2.14.3"),
            string("service.namespace", "shop"),
            string("deployment.environment", "production"),
            string("host.name", format!("{service}-7d9c5b6f4-{instance:05}")),
            string("telemetry.sdk.language", "rust"),
            string("telemetry.sdk.name", "opentelemetry"),
            string("telemetry.sdk.version", "0.33.0"),
        ],
        ..Default::default()
    }
}

fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: "shop.instrumentation".to_owned(),
        version: "1.4.0".to_owned(),
        ..Default::default()
    }
}

const USER_AGENT: &str = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 \
                          (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36";

const ROUTES: [(&str, &str); 4] = [
    ("GET", "/api/v1/orders/{order_id}"),
    ("POST", "/api/v1/checkout"),
    ("GET", "/api/v1/customers/{customer_id}/cart"),
    ("PUT", "/api/v1/inventory/{sku}/reservation"),
];

const STATEMENTS: [(&str, &str, &str); 3] = [
    (
        "SELECT",
        "orders",
        "SELECT o.id, o.status, o.total_cents, o.created_at FROM orders o \
         WHERE o.customer_id = $1 ORDER BY o.created_at DESC LIMIT 20",
    ),
    (
        "UPDATE",
        "inventory",
        "UPDATE inventory SET reserved = reserved + $1, updated_at = now() \
         WHERE sku = $2 AND available >= $1",
    ),
    (
        "INSERT",
        "payments",
        "INSERT INTO payments (order_id, amount_cents, currency, provider_ref) \
         VALUES ($1, $2, $3, $4)",
    ),
];

/// Builds the spans of one trace; the first is the root and every other span's parent is an
/// earlier span of the same trace.
fn build_trace(
    rng: &mut XorShift,
    spans: usize,
    error: bool,
    now_nanos: u64,
    span_bytes: Option<usize>,
) -> Vec<Span> {
    let trace_id = rng.id::<16>();
    let start = now_nanos - rng.below(1_000_000_000);
    let error_at = error.then(|| rng.below(spans as u64) as usize);
    let mut out: Vec<Span> = Vec::with_capacity(spans);
    for index in 0..spans {
        let span_start = start + index as u64 * 2_000_000 + rng.below(1_000_000);
        let mut span = if index == 0 {
            let root_end = start + spans as u64 * 2_000_000 + 5_000_000 + rng.below(50_000_000);
            server_span(rng, span_start, root_end)
        } else {
            let end = span_start + 200_000 + rng.below(40_000_000);
            match rng.below(3) {
                0 => database_span(rng, span_start, end),
                1 => http_client_span(rng, span_start, end),
                _ => internal_span(rng, span_start, end),
            }
        };
        span.trace_id = trace_id.to_vec();
        span.span_id = rng.id::<8>().to_vec();
        if index > 0 {
            let parent = rng.below(index as u64) as usize;
            span.parent_span_id = out[parent].span_id.clone();
        }
        if error_at == Some(index) {
            span.status = Some(Status {
                message: "upstream connect error: connection reset by peer".to_owned(),
                code: status::StatusCode::Error as i32,
            });
        }
        if let Some(target) = span_bytes {
            fit_span(rng, &mut span, target);
        }
        out.push(span);
    }
    out
}

/// Brings a span's encoded size to about `target` bytes: attributes are dropped from the end
/// while it is larger, then a `payload` attribute of random hex (compressible about as real
/// identifiers are) fills it up.
fn fit_span(rng: &mut XorShift, span: &mut Span, target: usize) {
    while span.encoded_len() > target && span.attributes.len() > 2 {
        span.attributes.pop();
    }
    let len = span.encoded_len();
    // The attribute costs its value plus about 15 bytes of key and framing.
    if len + 16 > target {
        return;
    }
    let mut pad = target - len - 15;
    let payload = |pad: usize, rng: &mut XorShift| {
        let mut text = String::with_capacity(pad + 16);
        while text.len() < pad {
            text.push_str(&format!("{:016x}", rng.next_u64()));
        }
        text.truncate(pad);
        string("payload", text)
    };
    span.attributes.push(payload(pad, rng));
    // Length varints grow with the value: correct once for the exact size.
    let over = span.encoded_len().saturating_sub(target);
    if over > 0 {
        pad = pad.saturating_sub(over);
        span.attributes.pop();
        span.attributes.push(payload(pad, rng));
    }
}

fn server_span(rng: &mut XorShift, start: u64, end: u64) -> Span {
    let (method, route) = *rng.pick(&ROUTES);
    let id = rng.below(10_000_000);
    Span {
        name: format!("{method} {route}"),
        kind: span::SpanKind::Server as i32,
        start_time_unix_nano: start,
        end_time_unix_nano: end,
        attributes: vec![
            string("http.method", method),
            string("http.route", route),
            string("http.target", format!("/api/v1/orders/{id}?expand=items")),
            string("http.scheme", "https"),
            int("http.status_code", 200),
            string("net.host.name", "api.shop.example.com"),
            string("user_agent.original", USER_AGENT),
            string(
                "client.address",
                format!("10.42.{}.{}", rng.below(256), rng.below(256)),
            ),
            int("http.request_content_length", rng.below(4096) as i64),
            boolean("enduser.authenticated", rng.below(4) != 0),
            int("thread.id", rng.below(64) as i64),
        ],
        ..Default::default()
    }
}

fn database_span(rng: &mut XorShift, start: u64, end: u64) -> Span {
    let (operation, table, statement) = *rng.pick(&STATEMENTS);
    Span {
        name: format!("{operation} shop.{table}"),
        kind: span::SpanKind::Client as i32,
        start_time_unix_nano: start,
        end_time_unix_nano: end,
        attributes: vec![
            string("db.system", "postgresql"),
            string("db.name", "shop"),
            string("db.user", "shop_app"),
            string("db.client.connections.pool.name", "primary"),
            string("db.operation", operation),
            string("db.sql.table", table),
            string("db.statement", statement),
            string("net.peer.name", "shop-db-primary.internal"),
            int("net.peer.port", 5432),
            int("db.rows_affected", rng.below(50) as i64),
            boolean("db.pool.reused", rng.below(10) != 0),
            string("code.function", "OrderRepository::find_recent_for_customer"),
        ],
        ..Default::default()
    }
}

fn http_client_span(rng: &mut XorShift, start: u64, end: u64) -> Span {
    let service = *rng.pick(&SERVICES);
    let id = rng.below(100_000_000);
    Span {
        name: "POST".to_owned(),
        kind: span::SpanKind::Client as i32,
        start_time_unix_nano: start,
        end_time_unix_nano: end,
        attributes: vec![
            string("http.method", "POST"),
            string(
                "http.url",
                format!("http://{service}.shop.svc:8080/internal/v2/requests/{id}"),
            ),
            int("http.status_code", 201),
            string("net.peer.name", format!("{service}.shop.svc")),
            int("net.peer.port", 8080),
            string("peer.service", service),
            int("http.request_content_length", 200 + rng.below(2000) as i64),
            int("http.response_content_length", 100 + rng.below(900) as i64),
            int("http.resend_count", 0),
            string("http.flavor", "2.0"),
            boolean("http.keep_alive", true),
            string("code.function", "shop_client::internal::send_request"),
        ],
        ..Default::default()
    }
}

fn internal_span(rng: &mut XorShift, start: u64, end: u64) -> Span {
    let line = 40 + rng.below(400) as i64;
    let key = rng.below(1_000_000);
    Span {
        name: "render_order_summary".to_owned(),
        kind: span::SpanKind::Internal as i32,
        start_time_unix_nano: start,
        end_time_unix_nano: end,
        attributes: vec![
            string("code.function", "render_order_summary"),
            string("code.namespace", "shop::orders::view"),
            string("code.filepath", "src/orders/view.rs"),
            int("code.lineno", line),
            string("thread.name", "tokio-runtime-worker"),
            int("thread.id", rng.below(64) as i64),
            boolean("cache.hit", rng.below(3) != 0),
            string("cache.key", format!("order-summary:v3:{key}")),
            int("order.items", 1 + rng.below(12) as i64),
            string("feature_flag.variant", "summary-v2"),
            string("template.name", "orders/summary.html.hbs"),
            string(
                "session.id",
                format!("{:016x}{:016x}", rng.next_u64(), rng.next_u64()),
            ),
        ],
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Pre-encoded request pool
// ---------------------------------------------------------------------------------------------

/// One pre-encoded request and where its spans' trace IDs sit in it.
struct Template {
    body: Bytes,
    spans: u64,
    trace_id_offsets: Vec<usize>,
}

impl Template {
    fn new(request: &ExportTraceServiceRequest, spans: u64) -> Self {
        let body = Bytes::from(request.encode_to_vec());
        let trace_id_offsets = trace_id_offsets(&body);
        assert_eq!(
            trace_id_offsets.len() as u64,
            spans,
            "every span has a 16-byte trace ID"
        );
        Self {
            body,
            spans,
            trace_id_offsets,
        }
    }

    /// The body to send on the given round of the pool: as built on round 0, and with every trace
    /// ID XORed with the round's mask after that (the same mask for every piece of a trace, so the
    /// pieces still share one ID).
    fn body(&self, round: u64, seed: u64) -> Bytes {
        if round == 0 {
            return self.body.clone();
        }
        let mask = XorShift::new(seed ^ round.wrapping_mul(0xA076_1D64_78BD_642F)).id::<16>();
        let mut body = BytesMut::from(&self.body[..]);
        for &offset in &self.trace_id_offsets {
            for (byte, mask) in body[offset..offset + 16].iter_mut().zip(mask) {
                *byte ^= mask;
            }
        }
        body.freeze()
    }
}

/// The requests of a run, built and encoded before the timed phase.
struct Pool {
    templates: Vec<Template>,
    /// `spans_before[i]`: spans in the templates before `i`, for pacing.
    spans_before: Vec<u64>,
    spans: u64,
    span_bytes: u64,
}

impl Pool {
    /// Builds `spans` spans (rounded up to whole traces) in groups of `requests_per_trace`
    /// requests: a group's traces are laid out span index first, so request `k` of the group
    /// carries the `k`-th slice of every trace in the group.
    fn build(options: &Options, spans: u64) -> Self {
        let mut rng = XorShift::new(options.seed);
        let now_nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("the clock is after 1970")
            .as_nanos() as u64;
        let per_trace = options.spans_per_trace;
        let requests_per_group = options.requests_per_trace;
        let group_traces = (requests_per_group * options.batch).div_ceil(per_trace);
        let scope = scope();

        let mut pool = Self {
            templates: Vec::new(),
            spans_before: Vec::new(),
            spans: 0,
            span_bytes: 0,
        };
        while pool.spans < spans {
            let remaining = (spans - pool.spans) as usize;
            let traces = group_traces.min(remaining.div_ceil(per_trace));
            let group: Vec<Vec<Span>> = (0..traces)
                .map(|_| {
                    let error = rng.chance(options.error_percent);
                    build_trace(&mut rng, per_trace, error, now_nanos, options.span_bytes)
                })
                .collect();
            let mut interleaved: Vec<Span> = Vec::with_capacity(traces * per_trace);
            for index in 0..per_trace {
                interleaved.extend(group.iter().map(|trace| trace[index].clone()));
            }
            let per_request = interleaved.len().div_ceil(requests_per_group);
            for chunk in interleaved.chunks(per_request) {
                pool.push(chunk.to_vec(), &scope, options.resources_per_request);
            }
        }
        pool
    }

    /// Adds one request of `spans`, split into `resources` resource spans (consecutive slices,
    /// each under its own service instance).
    fn push(&mut self, spans: Vec<Span>, scope: &InstrumentationScope, resources: usize) {
        let count = spans.len() as u64;
        let instance = self.templates.len();
        self.span_bytes += spans
            .iter()
            .map(|span| span.encoded_len() as u64)
            .sum::<u64>();
        let per_resource = spans.len().div_ceil(resources.max(1)).max(1);
        let resource_spans = spans
            .chunks(per_resource)
            .enumerate()
            .map(|(r, spans)| {
                let service = SERVICES[(instance + r) % SERVICES.len()];
                ResourceSpans {
                    resource: Some(resource(service, (instance * resources + r) % 97)),
                    scope_spans: vec![ScopeSpans {
                        scope: Some(scope.clone()),
                        spans: spans.to_vec(),
                        schema_url: "https://opentelemetry.io/schemas/1.24.0".to_owned(),
                    }],
                    schema_url: "https://opentelemetry.io/schemas/1.24.0".to_owned(),
                }
            })
            .collect();
        let request = ExportTraceServiceRequest { resource_spans };
        self.templates.push(Template::new(&request, count));
        self.spans_before.push(self.spans);
        self.spans += count;
    }

    /// Average encoded size of a `Span` message (without the key and length in front of it).
    fn avg_span_bytes(&self) -> f64 {
        self.span_bytes as f64 / self.spans as f64
    }
}

/// Offsets of the 16 trace-ID bytes of every span in an encoded `ExportTraceServiceRequest`,
/// found with the gateway's own walker. Only ever walks bytes this program encoded, so malformed
/// input is a bug and panics.
fn trace_id_offsets(body: &[u8]) -> Vec<usize> {
    let parsed = parse_export_request(body).expect("the load generator encodes valid requests");
    parsed
        .spans
        .iter()
        .map(|span| {
            let (start, end) = span.range;
            let mut fields = FieldReader::at(&body[start..end], start);
            loop {
                match fields.next().expect("a span this program encoded") {
                    Some((1, Value::Len(id), at)) if id.len() == 16 => return at,
                    Some(_) => continue,
                    None => panic!("a span without a trace ID at byte {start}"),
                }
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Timed phase
// ---------------------------------------------------------------------------------------------

/// Hands out requests in order, pacing them to the rate and stopping at the total or deadline.
struct Schedule {
    pool: Pool,
    next: AtomicU64,
    start: Instant,
    deadline: Option<Instant>,
    total: Option<u64>,
    rate: u64,
    seed: u64,
}

/// One request to send: pool template `index` on pool round `round`, not before `due`.
struct Job {
    index: usize,
    round: u64,
    due: Option<Instant>,
}

impl Schedule {
    fn claim(&self) -> Option<Job> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let len = self.pool.templates.len() as u64;
        let (round, index) = (n / len, (n % len) as usize);
        let offset = round * self.pool.spans + self.pool.spans_before[index];
        if self.total.is_some_and(|total| offset >= total) {
            return None;
        }
        let due = (self.rate > 0)
            .then(|| self.start + Duration::from_secs_f64(offset as f64 / self.rate as f64));
        if let (Some(due), Some(deadline)) = (due, self.deadline) {
            if due >= deadline {
                return None;
            }
        }
        Some(Job { index, round, due })
    }
}

#[derive(Default)]
struct Counters {
    spans: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
    failures: AtomicU64,
    /// Each acknowledged request's latency (send to reply, retries included), in microseconds.
    latencies_us: std::sync::Mutex<Vec<u32>>,
}

struct Report {
    spans_sent: u64,
    requests: u64,
    retries: u64,
    failures: u64,
    elapsed: Duration,
    avg_span_bytes: f64,
    /// Acknowledged requests' latencies in microseconds, sorted.
    latencies_us: Vec<u32>,
}

impl Report {
    /// The latency below which `q` of the acknowledged requests were answered, in ms.
    fn latency_ms(&self, q: f64) -> f64 {
        let Some(last) = self.latencies_us.len().checked_sub(1) else {
            return 0.0;
        };
        let at = ((last as f64) * q).round() as usize;
        (f64::from(self.latencies_us[at]) / 1e3 * 100.0).round() / 100.0
    }

    fn to_json(&self) -> serde_json::Value {
        let elapsed_s = self.elapsed.as_secs_f64();
        serde_json::json!({
            "spans_sent": self.spans_sent,
            "requests": self.requests,
            "retries": self.retries,
            "failures": self.failures,
            "elapsed_s": (elapsed_s * 1e3).round() / 1e3,
            "spans_per_s": (self.spans_sent as f64 / elapsed_s).round(),
            "avg_span_bytes": (self.avg_span_bytes * 10.0).round() / 10.0,
            "latency_ms": {
                "p50": self.latency_ms(0.5),
                "p99": self.latency_ms(0.99),
                "p999": self.latency_ms(0.999),
                "max": self.latency_ms(1.0),
            },
        })
    }
}

async fn send_all(options: &Options, pool: Pool) -> anyhow::Result<Report> {
    let endpoint = Endpoint::from_shared(options.endpoint.clone())
        .with_context(|| format!("invalid endpoint {:?}", options.endpoint))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .tcp_nodelay(true);
    // Connect before the clock starts, one connection per worker.
    let mut clients = Vec::with_capacity(options.concurrency);
    for _ in 0..options.concurrency {
        let channel = endpoint
            .connect()
            .await
            .with_context(|| format!("connecting to {}", options.endpoint))?;
        let mut client = tonic::client::Grpc::new(channel);
        if options.compression == Compression::Gzip {
            client = client.send_compressed(CompressionEncoding::Gzip);
        }
        clients.push(client);
    }

    let avg_span_bytes = pool.avg_span_bytes();
    let start = Instant::now();
    let schedule = Arc::new(Schedule {
        pool,
        next: AtomicU64::new(0),
        start,
        deadline: options.duration.map(|duration| start + duration),
        total: options.total,
        rate: options.rate,
        seed: options.seed,
    });
    let counters = Arc::new(Counters::default());
    let workers: Vec<_> = clients
        .into_iter()
        .map(|client| tokio::spawn(worker(client, Arc::clone(&schedule), Arc::clone(&counters))))
        .collect();
    for worker in workers {
        worker.await.context("a worker panicked")?;
    }
    let elapsed = start.elapsed();
    let mut latencies_us = std::mem::take(&mut *counters.latencies_us.lock().unwrap());
    latencies_us.sort_unstable();

    Ok(Report {
        spans_sent: counters.spans.load(Ordering::Relaxed),
        requests: counters.requests.load(Ordering::Relaxed),
        retries: counters.retries.load(Ordering::Relaxed),
        failures: counters.failures.load(Ordering::Relaxed),
        elapsed,
        avg_span_bytes,
        latencies_us,
    })
}

async fn worker(
    mut client: tonic::client::Grpc<Channel>,
    schedule: Arc<Schedule>,
    counters: Arc<Counters>,
) {
    while let Some(job) = schedule.claim() {
        if let Some(due) = job.due {
            tokio::time::sleep_until(due).await;
        }
        if schedule
            .deadline
            .is_some_and(|deadline| Instant::now() >= deadline)
        {
            break;
        }
        let template = &schedule.pool.templates[job.index];
        let body = template.body(job.round, schedule.seed);
        let sent = Instant::now();
        match export(&mut client, body, &counters).await {
            Ok(()) => {
                let latency = sent.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
                counters.latencies_us.lock().unwrap().push(latency);
                counters.spans.fetch_add(template.spans, Ordering::Relaxed);
                counters.requests.fetch_add(1, Ordering::Relaxed);
            }
            Err(status) => {
                let failures = counters.failures.fetch_add(1, Ordering::Relaxed) + 1;
                if failures <= LOGGED_FAILURES {
                    eprintln!(
                        "tailgate-loadgen: request failed: {:?}: {}",
                        status.code(),
                        status.message()
                    );
                }
            }
        }
    }
}

/// Sends one request, retrying retryable statuses with capped exponential backoff.
async fn export(
    client: &mut tonic::client::Grpc<Channel>,
    body: Bytes,
    counters: &Counters,
) -> Result<(), tonic::Status> {
    let mut backoff = INITIAL_BACKOFF;
    let mut retries = 0;
    loop {
        client
            .ready()
            .await
            .map_err(|error| tonic::Status::unavailable(format!("channel not ready: {error}")))?;
        let request = tonic::Request::new(body.clone());
        let path = PathAndQuery::from_static(EXPORT_PATH);
        match client
            .unary::<_, Bytes, _>(request, path, RawBytesCodec)
            .await
        {
            Ok(_) => return Ok(()),
            Err(status) if is_retryable(status.code()) && retries < MAX_RETRIES => {
                retries += 1;
                counters.retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(status) => return Err(status),
        }
    }
}

fn is_retryable(code: Code) -> bool {
    matches!(code, Code::Unavailable | Code::ResourceExhausted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(args: &[&str]) -> anyhow::Result<Option<Options>> {
        Options::parse(args.iter().map(|arg| (*arg).to_owned()))
    }

    #[test]
    fn flags_parse_in_both_spellings() {
        let parsed = options(&["--total", "1000", "--rate=5000", "--compression", "gzip"])
            .unwrap()
            .unwrap();
        assert_eq!(parsed.total, Some(1000));
        assert_eq!(parsed.rate, 5000);
        assert_eq!(parsed.compression, Compression::Gzip);
        assert_eq!(parsed.batch, 512);
    }

    #[test]
    fn a_run_needs_a_total_or_a_duration() {
        assert!(options(&[]).is_err());
        assert!(options(&["--duration", "10s"]).unwrap().is_some());
        assert!(options(&["--print-span-size"]).unwrap().is_some());
    }

    #[test]
    fn bad_values_are_named_in_the_error() {
        let error = options(&["--total", "lots"]).unwrap_err();
        assert!(format!("{error:#}").contains("\"lots\""), "{error:#}");
        assert!(options(&["--total", "10", "--frobnicate", "1"]).is_err());
        assert!(options(&["--total", "10", "--compression", "brotli"]).is_err());
        assert!(options(&["--total", "10", "--requests-per-trace", "9"]).is_err());
    }

    #[test]
    fn durations_take_units() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("10 parsecs").is_err());
    }

    #[test]
    fn every_trace_is_spread_over_requests_per_trace_requests() {
        let options = options(&["--total", "4096", "--seed", "7"])
            .unwrap()
            .unwrap();
        let pool = Pool::build(&options, 4096);
        assert_eq!(pool.spans, 4096);
        assert_eq!(pool.templates.len(), 8);
        let mut requests_by_trace = std::collections::HashMap::<Vec<u8>, Vec<usize>>::new();
        for (index, template) in pool.templates.iter().enumerate() {
            let request = ExportTraceServiceRequest::decode(template.body.clone()).unwrap();
            let spans = &request.resource_spans[0].scope_spans[0].spans;
            assert_eq!(spans.len(), 512);
            for span in spans {
                let seen = requests_by_trace.entry(span.trace_id.clone()).or_default();
                if seen.last() != Some(&index) {
                    seen.push(index);
                }
            }
        }
        assert_eq!(requests_by_trace.len(), 4096 / 8);
        assert!(requests_by_trace
            .values()
            .all(|requests| requests.len() == 4));
    }

    #[test]
    fn later_rounds_change_trace_ids_consistently_and_nothing_else() {
        let options = options(&["--total", "100", "--seed", "3"])
            .unwrap()
            .unwrap();
        let pool = Pool::build(&options, 100);
        let template = &pool.templates[0];
        let original = ExportTraceServiceRequest::decode(template.body(0, 3)).unwrap();
        let mut shifted = ExportTraceServiceRequest::decode(template.body(1, 3)).unwrap();
        let (before, after) = (
            &original.resource_spans[0].scope_spans[0].spans,
            &mut shifted.resource_spans[0].scope_spans[0].spans,
        );
        let mut mapping = std::collections::HashMap::new();
        for (old, new) in before.iter().zip(after.iter_mut()) {
            assert_ne!(old.trace_id, new.trace_id);
            let previous = mapping.insert(old.trace_id.clone(), new.trace_id.clone());
            assert!(previous.is_none_or(|id| id == new.trace_id));
            new.trace_id = old.trace_id.clone();
        }
        assert_eq!(original, shifted);
    }

    #[test]
    fn spans_are_about_five_hundred_bytes() {
        let options = options(&["--print-span-size"]).unwrap().unwrap();
        let size = Pool::build(&options, 8192).avg_span_bytes();
        assert!((400.0..600.0).contains(&size), "{size}");
    }

    #[test]
    fn spans_are_built_to_the_requested_size() {
        for target in [200, 500, 2_000] {
            let mut options = options(&["--total", "1", "--seed", "3"]).unwrap().unwrap();
            options.span_bytes = Some(target);
            let size = Pool::build(&options, 4096).avg_span_bytes();
            let error = (size - target as f64).abs() / target as f64;
            assert!(error < 0.05, "{target}: {size}");
        }
        assert!(options(&["--total", "1", "--span-bytes", "20"]).is_err());
    }

    #[test]
    fn requests_carry_the_requested_number_of_resources() {
        let mut options = options(&[
            "--total",
            "1",
            "--seed",
            "3",
            "--resources-per-request",
            "4",
        ])
        .unwrap()
        .unwrap();
        options.batch = 64;
        let pool = Pool::build(&options, 1024);
        for template in &pool.templates {
            let request = ExportTraceServiceRequest::decode(&template.body[..]).unwrap();
            assert_eq!(request.resource_spans.len(), 4);
            let services: std::collections::HashSet<String> = request
                .resource_spans
                .iter()
                .map(|rs| format!("{:?}", rs.resource.as_ref().unwrap().attributes[4]))
                .collect();
            assert_eq!(services.len(), 4, "each resource is its own instance");
        }
        assert!(options_err(&[
            "--total",
            "1",
            "--resources-per-request",
            "0"
        ]));
    }

    fn options_err(args: &[&str]) -> bool {
        options(args).is_err()
    }
}
