//! Retry policy for exports, per the OTLP specification: which failures are retryable, how long
//! to wait (server-given `RetryInfo` / `Retry-After` first, else capped exponential backoff with
//! jitter), and when to give up (`max_elapsed_time`). Pure functions (a capped server delay is counted), table-tested.

use serde::Deserialize;
use std::time::{Duration, SystemTime};

use crate::yaml::{duration, ConfigError};

/// The longest wait a server may ask for (`RetryInfo`, `Retry-After`). A backend that answers
/// with hours or years must not park an export worker that long: the wait is cut to this, and
/// `max_elapsed_time` still ends the retries.
pub const MAX_SERVER_DELAY: Duration = Duration::from_secs(300);

/// A `Retry-After` header value: delay-seconds or an HTTP-date (both allowed by the OTLP
/// specification and RFC 9110), as a wait from `now` ([`Backoff::next_wait`] caps it). A date
/// in the past means no wait; anything unreadable is ignored (`None`: backoff applies).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let wait = if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Longer than u64 seconds is as absurd as any other value past the cap.
        value
            .parse::<u64>()
            .map_or(Duration::MAX, Duration::from_secs)
    } else {
        let at = httpdate::parse_http_date(value).ok()?;
        at.duration_since(now).unwrap_or(Duration::ZERO)
    };
    Some(wait)
}

/// A gRPC `RetryInfo.retry_delay` as a wait ([`Backoff::next_wait`] caps it): negative parts
/// read as zero, nanos past a second ignored (`Duration::new` would carry them and could
/// overflow).
pub fn retry_info_delay(seconds: i64, nanos: i32) -> Duration {
    Duration::new(seconds.max(0) as u64, nanos.clamp(0, 999_999_999) as u32)
}

/// `retry_on_failure`, with the Collector's defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    pub enabled: bool,
    #[serde(with = "duration::go")]
    pub initial_interval: Duration,
    pub randomization_factor: f64,
    pub multiplier: f64,
    #[serde(with = "duration::go")]
    pub max_interval: Duration,
    /// 0 means retry forever.
    #[serde(with = "duration::go")]
    pub max_elapsed_time: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            initial_interval: Duration::from_secs(5),
            randomization_factor: 0.5,
            multiplier: 1.5,
            max_interval: Duration::from_secs(30),
            max_elapsed_time: Duration::from_secs(300),
        }
    }
}

impl RetryConfig {
    pub fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        if !(0.0..=1.0).contains(&self.randomization_factor) {
            errors.push(ConfigError::new(
                format!("{path}.randomization_factor"),
                format!(
                    "randomization_factor must be within [0, 1], got {}",
                    self.randomization_factor
                ),
            ));
        }
        if self.multiplier < 1.0 {
            errors.push(ConfigError::new(
                format!("{path}.multiplier"),
                format!("multiplier must be at least 1, got {}", self.multiplier),
            ));
        }
    }
}

/// What a refusal says about the request itself, when the receiver refused it whole for what it
/// is rather than for its own state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Refused {
    /// Nothing specific: a transport failure, or a status about the receiver's state.
    #[default]
    Unspecific,
    /// Over the receiver's size limit (gRPC RESOURCE_EXHAUSTED without RetryInfo, HTTP 413):
    /// the request must be split, not dropped.
    TooLarge,
    /// Malformed or invalid data (gRPC INVALID_ARGUMENT, HTTP 400): some of it, perhaps one
    /// trace, must be isolated from the rest.
    Invalid,
    /// A tailgate sampler that is leaving its cluster and takes no more peer traffic (gRPC
    /// FAILED_PRECONDITION with [`PEER_LEAVING`]).
    PeerLeaving,
}

/// The status message a leaving sampler refuses peer traffic with.
pub use crate::otlp::LEAVING_MESSAGE as PEER_LEAVING;

/// How an export attempt failed.
#[derive(Debug, Clone, PartialEq)]
pub struct SendError {
    pub retryable: bool,
    /// A delay the server asked for (gRPC `RetryInfo`, HTTP `Retry-After`).
    pub retry_after: Option<Duration>,
    pub refused: Refused,
    pub message: String,
}

impl SendError {
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            retryable: false,
            retry_after: None,
            refused: Refused::Unspecific,
            message: message.into(),
        }
    }

    pub fn retryable(message: impl Into<String>) -> Self {
        Self {
            retryable: true,
            retry_after: None,
            refused: Refused::Unspecific,
            message: message.into(),
        }
    }
}

/// OTLP/gRPC: is this status code retryable? `ResourceExhausted` is, only with `RetryInfo`.
pub fn grpc_code_is_retryable(code: tonic::Code, has_retry_info: bool) -> bool {
    use tonic::Code::*;
    match code {
        Cancelled | DeadlineExceeded | Aborted | OutOfRange | Unavailable | DataLoss => true,
        ResourceExhausted => has_retry_info,
        _ => false,
    }
}

/// OTLP/gRPC: what a failed status says about the request.
pub fn grpc_refusal(code: tonic::Code, has_retry_info: bool, message: &str) -> Refused {
    match code {
        tonic::Code::ResourceExhausted if !has_retry_info => Refused::TooLarge,
        // A tonic server (a Rust backend, or another tailgate) answers a message over its limit
        // with OUT_OF_RANGE, which is retryable: sent again whole it fails forever.
        tonic::Code::OutOfRange if message.contains("message length too large") => {
            Refused::TooLarge
        }
        tonic::Code::InvalidArgument => Refused::Invalid,
        tonic::Code::FailedPrecondition if message.contains(PEER_LEAVING) => Refused::PeerLeaving,
        _ => Refused::Unspecific,
    }
}

/// OTLP/HTTP: what a failed response status says about the request.
pub fn http_refusal(status: u16) -> Refused {
    match status {
        413 => Refused::TooLarge,
        400 => Refused::Invalid,
        _ => Refused::Unspecific,
    }
}

/// OTLP/HTTP: is this response status retryable?
pub fn http_status_is_retryable(status: u16) -> bool {
    matches!(status, 429 | 502 | 503 | 504)
}

/// Exponential backoff state for one batch.
#[derive(Debug)]
pub struct Backoff {
    config: RetryConfig,
    next: Duration,
    elapsed: Duration,
    seed: u64,
}

impl Backoff {
    pub fn new(config: &RetryConfig, seed: u64) -> Self {
        Self {
            config: config.clone(),
            next: config.initial_interval,
            elapsed: Duration::ZERO,
            seed: seed | 1,
        }
    }

    /// The wait before the next attempt, or `None` when retrying must stop.
    pub fn next_wait(&mut self, server_delay: Option<Duration>) -> Option<Duration> {
        if !self.config.enabled {
            return None;
        }
        let wait = match server_delay {
            Some(d) if d > MAX_SERVER_DELAY => {
                crate::telemetry::catalog::EXPORTER_BAD_RESPONSES
                    .counter(&["retry_delay_capped"])
                    .increment(1);
                MAX_SERVER_DELAY
            }
            Some(d) => d,
            None => {
                let jitter = self.config.randomization_factor * (2.0 * self.random() - 1.0);
                let base = self.next.as_secs_f64();
                self.next = Duration::from_secs_f64(
                    (base * self.config.multiplier).min(self.config.max_interval.as_secs_f64()),
                );
                Duration::from_secs_f64((base * (1.0 + jitter)).max(0.0))
            }
        };
        let max = self.config.max_elapsed_time;
        let elapsed = self.elapsed.checked_add(wait)?;
        if !max.is_zero() && elapsed > max {
            return None;
        }
        self.elapsed = elapsed;
        Some(wait)
    }

    fn random(&mut self) -> f64 {
        // xorshift64: jitter only needs to spread retries, not be unpredictable.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        (self.seed >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_jitter_and_multiplier_are_config_errors_naming_the_path() {
        let bad = RetryConfig {
            randomization_factor: 1.5,
            multiplier: 0.5,
            ..RetryConfig::default()
        };
        let mut errors = Vec::new();
        bad.validate("exporters.otlp.retry_on_failure", &mut errors);
        let errors: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            errors,
            [
                "exporters.otlp.retry_on_failure.randomization_factor: randomization_factor must be within [0, 1], got 1.5",
                "exporters.otlp.retry_on_failure.multiplier: multiplier must be at least 1, got 0.5",
            ]
        );
        // The edges are allowed.
        let edges = RetryConfig {
            randomization_factor: 1.0,
            multiplier: 1.0,
            ..RetryConfig::default()
        };
        let mut errors = Vec::new();
        edges.validate("r", &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        let mut errors = Vec::new();
        RetryConfig::default().validate("r", &mut errors);
        assert!(errors.is_empty());
    }

    #[test]
    fn grpc_codes_follow_the_otlp_retry_table() {
        use tonic::Code::*;
        for (code, info, want) in [
            (Unavailable, false, true),
            (DeadlineExceeded, false, true),
            (Aborted, false, true),
            (OutOfRange, false, true),
            (DataLoss, false, true),
            (Cancelled, false, true),
            (ResourceExhausted, false, false),
            (ResourceExhausted, true, true),
            (InvalidArgument, false, false),
            (Unauthenticated, false, false),
            (PermissionDenied, false, false),
            (Internal, false, false),
            (Unimplemented, false, false),
        ] {
            assert_eq!(grpc_code_is_retryable(code, info), want, "{code:?} {info}");
        }
    }

    #[test]
    fn refusals_say_whether_to_split_isolate_or_re_route() {
        use tonic::Code::*;
        for (code, info, message, want) in [
            (
                ResourceExhausted,
                false,
                "message too large",
                Refused::TooLarge,
            ),
            (ResourceExhausted, true, "slow down", Refused::Unspecific),
            (InvalidArgument, false, "bad utf-8", Refused::Invalid),
            (
                FailedPrecondition,
                false,
                PEER_LEAVING,
                Refused::PeerLeaving,
            ),
            (FailedPrecondition, false, "other", Refused::Unspecific),
            (Unavailable, false, PEER_LEAVING, Refused::Unspecific),
        ] {
            assert_eq!(
                grpc_refusal(code, info, message),
                want,
                "{code:?} {message}"
            );
        }
        assert_eq!(http_refusal(413), Refused::TooLarge);
        assert_eq!(http_refusal(400), Refused::Invalid);
        assert_eq!(http_refusal(503), Refused::Unspecific);
    }

    #[test]
    fn http_statuses_follow_the_otlp_retry_table() {
        for (status, want) in [
            (429, true),
            (502, true),
            (503, true),
            (504, true),
            (400, false),
            (500, false),
            (401, false),
        ] {
            assert_eq!(http_status_is_retryable(status), want, "{status}");
        }
    }

    #[test]
    fn backoff_grows_by_the_multiplier_up_to_the_cap_without_jitter() {
        let config = RetryConfig {
            initial_interval: Duration::from_secs(1),
            randomization_factor: 0.0,
            multiplier: 2.0,
            max_interval: Duration::from_secs(5),
            max_elapsed_time: Duration::from_secs(20),
            ..Default::default()
        };
        let mut b = Backoff::new(&config, 42);
        // Bounded, so a backoff that never stops fails here instead of hanging the test.
        let waits: Vec<u64> = std::iter::from_fn(|| b.next_wait(None))
            .take(100)
            .map(|d| d.as_secs())
            .collect();
        assert_eq!(waits, vec![1, 2, 4, 5, 5]); // a sixth 5 s wait would pass 20 s
    }

    /// How many server delays have been counted as capped so far (all tests share the series).
    fn capped_count() -> u64 {
        use crate::telemetry::catalog::{Storage, EXPORTER_BAD_RESPONSES};
        EXPORTER_BAD_RESPONSES
            .series()
            .iter()
            .find(|s| s.values.iter().any(|v| &**v == "retry_delay_capped"))
            .map_or(0, |s| match &s.storage {
                Storage::Value(v) => v.load(std::sync::atomic::Ordering::Relaxed),
                Storage::Histogram(_) => panic!("retry_delay_capped is a counter"),
            })
    }

    #[test]
    fn a_server_delay_of_exactly_the_cap_is_taken_and_not_counted_as_capped() {
        let unlimited = RetryConfig {
            max_elapsed_time: Duration::ZERO,
            ..Default::default()
        };
        let mut b = Backoff::new(&unlimited, 1);
        // Other tests cap a handful of delays in parallel; a thousand here cannot hide.
        let before = capped_count();
        for _ in 0..1000 {
            assert_eq!(b.next_wait(Some(MAX_SERVER_DELAY)), Some(MAX_SERVER_DELAY));
        }
        let at_the_cap = capped_count() - before;
        assert!(
            at_the_cap < 1000,
            "{at_the_cap} delays of exactly the cap counted as capped"
        );
        let before = capped_count();
        for _ in 0..1000 {
            let over = MAX_SERVER_DELAY + Duration::from_nanos(1);
            assert_eq!(b.next_wait(Some(over)), Some(MAX_SERVER_DELAY));
        }
        assert!(capped_count() - before >= 1000);
    }

    #[test]
    fn jitter_follows_marsaglias_xorshift64_exactly() {
        // The waits for one seed, computed outside this code from Marsaglia's xorshift64
        // (13, 7, 17), the top 53 bits as the uniform draw, and the default factor and
        // multiplier: a changed generator or formula shows here.
        let config = RetryConfig {
            initial_interval: Duration::from_secs(10),
            max_elapsed_time: Duration::ZERO,
            ..Default::default()
        };
        let mut b = Backoff::new(&config, 0x1234_5678_9abc_def0);
        let want = [
            14.941414234139936,
            9.193616124103212,
            30.476485547538445,
            33.005838110887694,
        ];
        for (i, want) in want.into_iter().enumerate() {
            let got = b.next_wait(None).unwrap().as_secs_f64();
            assert!(
                (got - want).abs() < 1e-6,
                "wait {i}: {got} s, want {want} s"
            );
        }
    }

    #[test]
    fn jitter_stays_within_the_randomization_factor() {
        let config = RetryConfig {
            initial_interval: Duration::from_secs(10),
            max_elapsed_time: Duration::ZERO,
            ..Default::default()
        };
        for seed in 0..50 {
            let wait = Backoff::new(&config, seed)
                .next_wait(None)
                .unwrap()
                .as_secs_f64();
            assert!((5.0..=15.0).contains(&wait), "{wait}");
        }
    }

    #[test]
    fn a_server_given_delay_wins_and_disabled_retry_never_waits() {
        let mut b = Backoff::new(&RetryConfig::default(), 1);
        assert_eq!(
            b.next_wait(Some(Duration::from_millis(1500))),
            Some(Duration::from_millis(1500))
        );
        let mut off = Backoff::new(
            &RetryConfig {
                enabled: false,
                ..Default::default()
            },
            1,
        );
        assert_eq!(off.next_wait(None), None);
    }

    #[test]
    fn a_tonic_servers_over_limit_answer_is_split_not_retried_whole() {
        let message = "Error, decoded message length too large: found 4239301 bytes, the limit is: 4194304 bytes";
        assert_eq!(
            grpc_refusal(tonic::Code::OutOfRange, false, message),
            Refused::TooLarge
        );
        assert_eq!(
            grpc_refusal(tonic::Code::OutOfRange, false, "sequence out of range"),
            Refused::Unspecific
        );
    }

    #[test]
    fn absurd_server_delays_are_capped_and_never_overflow() {
        let mut b = Backoff::new(
            &RetryConfig {
                max_elapsed_time: Duration::ZERO,
                ..Default::default()
            },
            1,
        );
        for _ in 0..3 {
            assert_eq!(b.next_wait(Some(Duration::MAX)), Some(MAX_SERVER_DELAY));
        }
        assert_eq!(
            b.next_wait(Some(retry_info_delay(i64::MAX, i32::MAX))),
            Some(MAX_SERVER_DELAY)
        );
        assert_eq!(retry_info_delay(-5, -1), Duration::ZERO);
        assert_eq!(
            retry_info_delay(2, 500_000_000),
            Duration::from_millis(2500)
        );
        // With the default max_elapsed_time (300 s) a capped delay still ends the retries.
        let mut b = Backoff::new(&RetryConfig::default(), 1);
        assert_eq!(
            b.next_wait(Some(Duration::from_secs(86_400))),
            Some(MAX_SERVER_DELAY)
        );
        assert_eq!(b.next_wait(Some(Duration::from_secs(1))), None);
    }

    #[test]
    fn retry_after_is_read_as_seconds_or_as_an_http_date() {
        let now = httpdate::parse_http_date("Wed, 02 Dec 2026 10:00:00 GMT").unwrap();
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(" 7 ", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Wed, 02 Dec 2026 10:00:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        // RFC 850 and asctime forms, which RFC 9110 says recipients must accept.
        assert_eq!(
            parse_retry_after("Wednesday, 02-Dec-26 10:01:00 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            parse_retry_after("Wed Dec  2 10:00:05 2026", now),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            parse_retry_after("Wed, 02 Dec 2026 09:00:00 GMT", now),
            Some(Duration::ZERO),
            "a date in the past: retry now"
        );
        let far = parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT", now).unwrap();
        assert!(far > Duration::from_secs(86_400 * 365 * 7000));
        assert_eq!(
            parse_retry_after("99999999999999999999", now),
            Some(Duration::MAX),
            "longer than u64 seconds: as long as it gets (the backoff caps it)"
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-3", now), None);
    }
}
