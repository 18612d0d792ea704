//! The Collector's `memory_limiter` processor, as a gate in front of the pipeline: above the
//! soft limit (`limit - spike_limit`) new requests are refused with a retryable status
//! ([`Refusal::MemoryLimit`]: gRPC UNAVAILABLE, HTTP 503), so clients back off and retry; what
//! was already accepted stays in the buffer and is exported as usual, nothing is dropped.
//!
//! The resident set size is read every `check_interval`. Between two reads, every accepted
//! request's body size is added to the last reading, so a burst that arrives within one
//! interval trips the limit before the next read rather than after it (what the buffer holds is
//! about the size of what it accepted: ARCHITECTURE.md, "Spans stay encoded").
//!
//! In the Collector the processor's position in `processors` matters little (it is usually
//! first); tailgate accepts it anywhere in the list and always applies it at the door, before
//! anything else sees the request. Go's garbage-collection knobs have no meaning here: there is
//! no collector to run, memory is freed when traces are decided.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::otlp::{BoxFuture, Incoming, Refusal, TraceConsumer};
use crate::telemetry::{catalog, process, LogEvery};
use crate::yaml::{duration, ConfigError};

/// `processors.memory_limiter`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryLimiterConfig {
    #[serde(with = "duration::go")]
    pub check_interval: Duration,
    pub limit_mib: u64,
    /// Default: 20 % of the limit.
    pub spike_limit_mib: u64,
    /// Of the memory available (the cgroup's limit, else the machine's).
    pub limit_percentage: u64,
    pub spike_limit_percentage: u64,
    /// Go garbage-collection pacing: accepted, no effect (there is no garbage collector).
    #[serde(with = "duration::go_opt")]
    pub min_gc_interval_when_soft_limited: Option<Duration>,
    #[serde(with = "duration::go_opt")]
    pub min_gc_interval_when_hard_limited: Option<Duration>,
}

/// `memory_limiter`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryLimiterSettings {
    pub check_interval: Duration,
    pub limit_bytes: u64,
    pub spike_bytes: u64,
}

impl MemoryLimiterSettings {
    /// Above this, new data is refused.
    pub fn soft_limit(&self) -> u64 {
        self.limit_bytes - self.spike_bytes
    }
}

const MIB: u64 = 1024 * 1024;

impl MemoryLimiterConfig {
    /// The settings at `path`, or `None` with the errors added. `total` is the memory available
    /// to the process (for the percentage limits).
    pub fn settings(
        &self,
        path: &str,
        total: Option<u64>,
        errors: &mut Vec<ConfigError>,
    ) -> Option<MemoryLimiterSettings> {
        let before = errors.len();
        if self.check_interval.is_zero() {
            errors.push(ConfigError::new(
                format!("{path}.check_interval"),
                "check_interval must be greater than 0",
            ));
        }
        let (limit, spike) = match (self.limit_mib, self.limit_percentage) {
            (0, 0) => {
                errors.push(ConfigError::new(path, "set limit_mib or limit_percentage"));
                return None;
            }
            (mib, 0) => {
                if self.spike_limit_percentage != 0 {
                    errors.push(ConfigError::new(
                        format!("{path}.spike_limit_percentage"),
                        "spike_limit_percentage goes with limit_percentage; with limit_mib use spike_limit_mib",
                    ));
                }
                let spike = if self.spike_limit_mib == 0 {
                    mib * MIB / 5
                } else {
                    self.spike_limit_mib * MIB
                };
                if self.spike_limit_mib >= mib {
                    errors.push(ConfigError::new(
                        format!("{path}.spike_limit_mib"),
                        format!(
                            "spike_limit_mib ({}) must be smaller than limit_mib ({mib})",
                            self.spike_limit_mib
                        ),
                    ));
                }
                (mib * MIB, spike)
            }
            (0, pct) => {
                if pct > 100 || self.spike_limit_percentage >= pct {
                    errors.push(ConfigError::new(
                        format!("{path}.limit_percentage"),
                        "limit_percentage must be at most 100 and above spike_limit_percentage",
                    ));
                }
                let Some(total) = total else {
                    errors.push(ConfigError::new(
                        format!("{path}.limit_percentage"),
                        "the memory available to the process cannot be read here; use limit_mib",
                    ));
                    return None;
                };
                let spike_pct = if self.spike_limit_percentage == 0 {
                    pct / 5
                } else {
                    self.spike_limit_percentage
                };
                (total / 100 * pct, total / 100 * spike_pct)
            }
            _ => {
                errors.push(ConfigError::new(
                    path,
                    "set one of limit_mib and limit_percentage, not both",
                ));
                return None;
            }
        };
        (errors.len() == before).then_some(MemoryLimiterSettings {
            check_interval: self.check_interval,
            limit_bytes: limit,
            spike_bytes: spike,
        })
    }
}

/// Reads the process's memory in bytes.
pub type MemoryReader = fn() -> Option<u64>;

/// The running limiter: a reading every `check_interval`, and the consumer it guards.
pub struct MemoryLimiter {
    soft: u64,
    /// The last reading.
    measured: AtomicU64,
    /// Body bytes accepted since the last reading.
    since: AtomicU64,
    refusing: AtomicBool,
    refused: metrics::Counter,
    log: LogEvery,
    inner: Arc<dyn TraceConsumer>,
}

impl MemoryLimiter {
    /// Starts the readings (until `stop`) and returns `inner` guarded by the limit.
    pub fn start(
        settings: &MemoryLimiterSettings,
        inner: Arc<dyn TraceConsumer>,
        stop: CancellationToken,
    ) -> Arc<Self> {
        Self::start_with(settings, inner, stop, process::rss_bytes)
    }

    /// [`Self::start`] with another memory reader (tests).
    pub fn start_with(
        settings: &MemoryLimiterSettings,
        inner: Arc<dyn TraceConsumer>,
        stop: CancellationToken,
        read: MemoryReader,
    ) -> Arc<Self> {
        let limiter = Arc::new(Self {
            soft: settings.soft_limit(),
            measured: AtomicU64::new(read().unwrap_or(0)),
            since: AtomicU64::new(0),
            refusing: AtomicBool::new(false),
            refused: catalog::MEMORY_LIMITER_REFUSED_REQUESTS.counter(&[]),
            log: LogEvery::new(Duration::from_secs(10)),
            inner,
        });
        catalog::MEMORY_LIMITER_SOFT_LIMIT
            .gauge(&[])
            .set(settings.soft_limit() as f64);
        limiter.measure(read);
        let interval = settings.check_interval;
        let this = Arc::clone(&limiter);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(interval) => this.measure(read),
                }
            }
        });
        limiter
    }

    fn measure(&self, read: MemoryReader) {
        if let Some(bytes) = read() {
            self.measured.store(bytes, Ordering::Relaxed);
            self.since.store(0, Ordering::Relaxed);
            let over = bytes >= self.soft;
            let was = self.refusing.swap(over, Ordering::Relaxed);
            if over && !was {
                tracing::warn!(
                    "memory_limiter: {} MiB in use, above the soft limit of {} MiB: refusing new data with a retryable status until it falls",
                    bytes / MIB,
                    self.soft / MIB
                );
            } else if was && !over {
                tracing::info!("memory_limiter: back under the soft limit; accepting data again");
            }
        }
    }

    /// Whether a request of `bytes` would take the process over the soft limit.
    fn over(&self, bytes: u64) -> bool {
        if self.refusing.load(Ordering::Relaxed) {
            return true;
        }
        let since = self.since.load(Ordering::Relaxed);
        self.measured.load(Ordering::Relaxed) + since + bytes >= self.soft
    }
}

impl TraceConsumer for MemoryLimiter {
    fn consume<'a>(&'a self, request: Incoming<'a>) -> BoxFuture<'a, Result<(), Refusal>> {
        let bytes = request.body.len() as u64;
        if self.over(bytes) {
            self.refused.increment(1);
            if self.log.ready() {
                tracing::warn!("memory_limiter: refused a request of {bytes} bytes above the soft limit (counted in tailgate_memory_limiter_refused_requests)");
            }
            return Box::pin(async { Err(Refusal::MemoryLimit) });
        }
        self.since.fetch_add(bytes, Ordering::Relaxed);
        self.inner.consume(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn settings(yaml: &str) -> Result<MemoryLimiterSettings, Vec<ConfigError>> {
        let c: MemoryLimiterConfig = crate::yaml::parse_block(
            "processors.memory_limiter",
            serde_yaml::from_str(yaml).unwrap(),
        )
        .map_err(|e| vec![e])?;
        let mut errors = vec![];
        match c.settings("processors.memory_limiter", Some(1000 * MIB), &mut errors) {
            Some(s) if errors.is_empty() => Ok(s),
            _ => Err(errors),
        }
    }

    #[test]
    fn limits_in_mib_or_percent_with_the_collectors_default_spike() {
        let s = settings("{check_interval: 1s, limit_mib: 500}").unwrap();
        assert_eq!((s.limit_bytes, s.spike_bytes), (500 * MIB, 100 * MIB));
        let s = settings("{check_interval: 1s, limit_mib: 500, spike_limit_mib: 50}").unwrap();
        assert_eq!(s.soft_limit(), 450 * MIB);
        let s = settings("{check_interval: 1s, limit_percentage: 80, spike_limit_percentage: 20}")
            .unwrap();
        assert_eq!((s.limit_bytes, s.spike_bytes), (800 * MIB, 200 * MIB));
    }

    #[test]
    fn bad_limits_are_errors_at_their_path() {
        let first = |yaml: &str| settings(yaml).unwrap_err()[0].to_string();
        assert!(first("{limit_mib: 100}").starts_with("processors.memory_limiter.check_interval"));
        assert!(first("{check_interval: 1s}").contains("set limit_mib or limit_percentage"));
        assert!(
            first("{check_interval: 1s, limit_mib: 100, spike_limit_mib: 100}")
                .starts_with("processors.memory_limiter.spike_limit_mib")
        );
        assert!(
            first("{check_interval: 1s, limit_mib: 100, limit_percentage: 50}")
                .contains("not both")
        );
        assert!(
            first("{check_interval: 1s, limit_mib: 100, ballast_size_mib: 10}")
                .starts_with("processors.memory_limiter.ballast_size_mib")
        );
    }

    struct Counting(AtomicUsize);

    impl TraceConsumer for Counting {
        fn consume<'a>(&'a self, _: Incoming<'a>) -> BoxFuture<'a, Result<(), Refusal>> {
            self.0.fetch_add(1, Ordering::Relaxed);
            Box::pin(async { Ok(()) })
        }
    }

    static MEMORY: AtomicU64 = AtomicU64::new(0);

    fn fake_memory() -> Option<u64> {
        Some(MEMORY.load(Ordering::Relaxed))
    }

    async fn send(limiter: &MemoryLimiter, body: &[u8]) -> Result<(), Refusal> {
        let parsed = crate::otlp::parse_export_request(&[]).unwrap();
        limiter
            .consume(Incoming {
                body,
                parsed,
                hops: 0,
            })
            .await
    }

    /// On the paused clock: under the soft limit data goes through; a reading above it refuses
    /// new data until a reading below it; a burst within one interval trips it before the next
    /// reading.
    #[tokio::test(start_paused = true)]
    async fn above_the_soft_limit_new_data_is_refused_until_memory_falls() {
        let s = MemoryLimiterSettings {
            check_interval: Duration::from_secs(1),
            limit_bytes: 100 * MIB,
            spike_bytes: 20 * MIB,
        };
        MEMORY.store(50 * MIB, Ordering::Relaxed);
        let inner = Arc::new(Counting(AtomicUsize::new(0)));
        let stop = CancellationToken::new();
        let limiter = MemoryLimiter::start_with(&s, inner.clone(), stop.clone(), fake_memory);
        assert_eq!(send(&limiter, b"x").await, Ok(()));

        MEMORY.store(85 * MIB, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(1001)).await;
        assert_eq!(send(&limiter, b"x").await, Err(Refusal::MemoryLimit));

        MEMORY.store(60 * MIB, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(send(&limiter, b"x").await, Ok(()));
        // 60 MiB measured: 19 MiB more within the interval fits, the next MiB does not.
        let big = vec![0u8; 19 * MIB as usize];
        assert_eq!(send(&limiter, &big).await, Ok(()));
        assert_eq!(
            send(&limiter, &vec![0u8; MIB as usize]).await,
            Err(Refusal::MemoryLimit)
        );
        assert_eq!(inner.0.load(Ordering::Relaxed), 3);
        stop.cancel();
    }
}
