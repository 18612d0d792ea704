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
//! Where the Collector forces a garbage collection above a limit, tailgate has the allocator
//! hand its free memory back to the OS: the allocator keeps freed pages for a while (the daemon
//! sets a 60 s purge delay, `main.rs`), so a reading just after the buffer drained still counts
//! them. The same knobs pace it: above the soft limit at most once per
//! `min_gc_interval_when_soft_limited` (default 10 s), above the hard limit at most once per
//! `min_gc_interval_when_hard_limited` (default 0: every reading), and the decision to refuse is
//! taken on the reading after it.
//!
//! In the Collector the processor's position in `processors` matters little (it is usually
//! first); tailgate accepts it anywhere in the list and always applies it at the door, before
//! anything else sees the request.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use tokio::time::Instant;

use crate::otlp::{BoxFuture, Incoming, Refusal, TraceConsumer};
use crate::telemetry::process::{self, MemoryRelease};
use crate::telemetry::{catalog, LogEvery};
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
    /// The least time between two returns of free memory to the OS while above the soft limit
    /// (the Collector's forced garbage collections). Default 10 s.
    #[serde(with = "duration::go_opt")]
    pub min_gc_interval_when_soft_limited: Option<Duration>,
    /// The same above the hard limit. Default 0: at every reading.
    #[serde(with = "duration::go_opt")]
    pub min_gc_interval_when_hard_limited: Option<Duration>,
}

/// The Collector's default `min_gc_interval_when_soft_limited`.
const DEFAULT_MIN_RELEASE_INTERVAL_SOFT: Duration = Duration::from_secs(10);

/// `memory_limiter`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryLimiterSettings {
    pub check_interval: Duration,
    pub limit_bytes: u64,
    pub spike_bytes: u64,
    /// Least time between two returns of free memory to the OS above the soft limit, and above
    /// the hard limit.
    pub min_release_interval_soft: Duration,
    pub min_release_interval_hard: Duration,
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
            min_release_interval_soft: self
                .min_gc_interval_when_soft_limited
                .unwrap_or(DEFAULT_MIN_RELEASE_INTERVAL_SOFT),
            min_release_interval_hard: self.min_gc_interval_when_hard_limited.unwrap_or_default(),
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
    released: metrics::Counter,
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
        Self::start_with(
            settings,
            inner,
            stop,
            process::rss_bytes,
            process::memory_release(),
        )
    }

    /// [`Self::start`] with another memory reader and release (tests).
    pub fn start_with(
        settings: &MemoryLimiterSettings,
        inner: Arc<dyn TraceConsumer>,
        stop: CancellationToken,
        read: MemoryReader,
        release: Option<MemoryRelease>,
    ) -> Arc<Self> {
        let limiter = Arc::new(Self {
            soft: settings.soft_limit(),
            measured: AtomicU64::new(read().unwrap_or(0)),
            since: AtomicU64::new(0),
            refusing: AtomicBool::new(false),
            refused: catalog::MEMORY_LIMITER_REFUSED_REQUESTS.counter(&[]),
            released: catalog::MEMORY_LIMITER_RELEASES.counter(&[]),
            log: LogEvery::new(Duration::from_secs(10)),
            inner,
        });
        catalog::MEMORY_LIMITER_SOFT_LIMIT
            .gauge(&[])
            .set(settings.soft_limit() as f64);
        if let Some(bytes) = read() {
            limiter.record(bytes);
        }
        let settings = settings.clone();
        let this = Arc::clone(&limiter);
        tokio::spawn(async move {
            let mut last_release = None;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(settings.check_interval) => {
                        this.check(&settings, read, release, &mut last_release).await
                    }
                }
            }
        });
        limiter
    }

    /// One reading; above the soft limit, free memory is handed back to the OS first if the
    /// last time was long enough ago, and the reading after it is the one that counts.
    async fn check(
        &self,
        settings: &MemoryLimiterSettings,
        read: MemoryReader,
        release: Option<MemoryRelease>,
        last_release: &mut Option<Instant>,
    ) {
        let Some(mut bytes) = read() else { return };
        if let Some(release) = release.filter(|_| bytes >= self.soft) {
            let gap = if bytes >= settings.limit_bytes {
                settings.min_release_interval_hard
            } else {
                settings.min_release_interval_soft
            };
            if last_release.is_none_or(|at: Instant| at.elapsed() >= gap) {
                // A madvise call per free run of pages, possibly hundreds of MB of them: not on
                // a worker thread.
                if tokio::task::spawn_blocking(release).await.is_ok() {
                    self.released.increment(1);
                }
                *last_release = Some(Instant::now());
                bytes = read().unwrap_or(bytes);
            }
        }
        self.record(bytes);
    }

    /// Takes a reading as the current memory in use: refusing or not from now on.
    fn record(&self, bytes: u64) {
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

    /// A 100 MiB limit, soft at 80, read every second, the Collector's release pacing.
    fn limits_100_mib_soft_80() -> MemoryLimiterSettings {
        MemoryLimiterSettings {
            check_interval: Duration::from_secs(1),
            limit_bytes: 100 * MIB,
            spike_bytes: 20 * MIB,
            min_release_interval_soft: Duration::from_secs(10),
            min_release_interval_hard: Duration::ZERO,
        }
    }

    /// A limiter with [`limits_100_mib_soft_80`] in front of a counting consumer, with its stop.
    fn start_limiter(
        read: MemoryReader,
        release: Option<MemoryRelease>,
    ) -> (Arc<MemoryLimiter>, Arc<Counting>, CancellationToken) {
        let inner = Arc::new(Counting(AtomicUsize::new(0)));
        let stop = CancellationToken::new();
        let limiter = MemoryLimiter::start_with(
            &limits_100_mib_soft_80(),
            inner.clone(),
            stop.clone(),
            read,
            release,
        );
        (limiter, inner, stop)
    }

    /// On the paused clock: under the soft limit data goes through; a reading above it refuses
    /// new data until a reading below it; a burst within one interval trips it before the next
    /// reading.
    #[tokio::test(start_paused = true)]
    async fn above_the_soft_limit_new_data_is_refused_until_memory_falls() {
        MEMORY.store(50 * MIB, Ordering::Relaxed);
        let (limiter, inner, stop) = start_limiter(fake_memory, None);
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

    /// The process's memory for the release test, and what a release would free of it.
    static HELD: AtomicU64 = AtomicU64::new(0);
    static FREEABLE: AtomicU64 = AtomicU64::new(0);
    static RELEASES: AtomicUsize = AtomicUsize::new(0);

    fn held_memory() -> Option<u64> {
        Some(HELD.load(Ordering::Relaxed))
    }

    fn release_freeable() {
        RELEASES.fetch_add(1, Ordering::Relaxed);
        HELD.fetch_sub(FREEABLE.swap(0, Ordering::Relaxed), Ordering::Relaxed);
    }

    /// On the paused clock: above the soft limit free memory is returned to the OS before the
    /// limiter decides, and the reading after it decides; above the soft limit at most once per
    /// `min_gc_interval_when_soft_limited`, above the hard limit at every reading.
    #[tokio::test(start_paused = true)]
    async fn above_the_soft_limit_free_memory_is_released_before_refusing() {
        HELD.store(50 * MIB, Ordering::Relaxed);
        let (limiter, inner, stop) = start_limiter(held_memory, Some(release_freeable));
        let releases = || RELEASES.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(releases(), 0, "under the soft limit nothing is released");

        // t = 1.5 s: 90 MiB, 30 of it free. The reading at 2 s releases it and reads 60.
        HELD.store(90 * MIB, Ordering::Relaxed);
        FREEABLE.store(30 * MIB, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(releases(), 1);
        assert_eq!(send(&limiter, b"x").await, Ok(()));

        // 90 MiB again, 30 free: within 10 s of the last release it is not released.
        HELD.store(90 * MIB, Ordering::Relaxed);
        FREEABLE.store(30 * MIB, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(9)).await; // t = 11.5 s
        assert_eq!(releases(), 1);
        assert_eq!(send(&limiter, b"x").await, Err(Refusal::MemoryLimit));
        // The reading at 12 s is 10 s after the release at 2 s.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(releases(), 2);
        assert_eq!(send(&limiter, b"x").await, Ok(()));

        // Above the hard limit with nothing to free: released at every reading, refused.
        HELD.store(120 * MIB, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(3)).await; // readings at 13, 14, 15 s
        assert_eq!(releases(), 5);
        assert_eq!(send(&limiter, b"x").await, Err(Refusal::MemoryLimit));
        FREEABLE.store(50 * MIB, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(releases(), 6);
        assert_eq!(send(&limiter, b"x").await, Ok(()));
        assert_eq!(inner.0.load(Ordering::Relaxed), 3);
        stop.cancel();
    }

    #[test]
    fn release_pacing_defaults_to_the_collectors_and_reads_its_keys() {
        let s = settings("{check_interval: 1s, limit_mib: 500}").unwrap();
        assert_eq!(s.min_release_interval_soft, Duration::from_secs(10));
        assert_eq!(s.min_release_interval_hard, Duration::ZERO);
        let s = settings(
            "{check_interval: 1s, limit_mib: 500, min_gc_interval_when_soft_limited: 3s, min_gc_interval_when_hard_limited: 500ms}",
        )
        .unwrap();
        assert_eq!(s.min_release_interval_soft, Duration::from_secs(3));
        assert_eq!(s.min_release_interval_hard, Duration::from_millis(500));
    }
}
