//! The shutdown sequence, in one place and in order, upstream first. Each phase has a deadline
//! carved out of `service.shutdown_grace_period`, measured from the signal:
//!
//! | phase | until | what happens |
//! |---|---|---|
//! | 1. leave | 50 % | health turns 503; a clustered sampler stops owning traces, hands its buffer to its peers and keeps forwarding what still arrives until the resolver drops it |
//! | 2. stop intake | 60 % | the receivers stop accepting; requests in flight finish |
//! | 3. settle | 80 % | the sampler hands off what a peer now owns, stops its deciders and decides (or drops, with `drop_pending_traces_on_shutdown`) every buffered trace |
//! | 4. drain | 100 % | the export pipeline's input is closed, the batcher flushes, the exporters (or the balancer's per-sampler queues) send what is queued; what is still unsent then is counted and logged |
//! | 5. telemetry | +2 s | background tasks (resolvers) and the metrics and health servers stop |
//!
//! A phase that finishes early leaves its time to the next ones. The grace period is a hard
//! bound: a phase still running at its deadline is abandoned (and says so), and [`Shutdown::run`]
//! returns by the end of the grace period whatever its peers and backends do.

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Stages;
use crate::telemetry::Health;

/// How long the telemetry servers get to stop after the grace period's phases.
const TELEMETRY_STOP: Duration = Duration::from_secs(2);

/// Everything shutdown stops, in the order it stops them.
pub(super) struct Shutdown {
    pub grace: Duration,
    pub health: Health,
    pub receivers_stop: CancellationToken,
    pub receivers: Vec<JoinHandle<()>>,
    pub stages: Stages,
    pub background: CancellationToken,
    pub operations_stop: CancellationToken,
    pub operations: Vec<JoinHandle<std::io::Result<()>>>,
}

/// The phases' deadlines.
struct Deadlines {
    leave: Instant,
    stop_intake: Instant,
    settle: Instant,
    drain: Instant,
}

impl Deadlines {
    fn from(start: Instant, grace: Duration) -> Self {
        let at = |percent: u32| start + grace * percent / 100;
        Self {
            leave: at(50),
            stop_intake: at(60),
            settle: at(80),
            drain: at(100),
        }
    }
}

impl Shutdown {
    pub async fn run(self) {
        let deadlines = Deadlines::from(Instant::now(), self.grace);
        tracing::info!(grace = ?self.grace, "shutting down");
        self.health.set_ready(false);

        // 1. Leave.
        if let Stages::Sampler {
            sampler: Some(sampler),
            ..
        } = &self.stages
        {
            sampler.leave(deadlines.leave).await;
        }

        // 2. Stop intake.
        self.receivers_stop.cancel();
        for task in self.receivers {
            if tokio::time::timeout_at(deadlines.stop_intake, task)
                .await
                .is_err()
            {
                tracing::warn!("a receiver did not stop in its share of the grace period");
            }
        }

        // 3. Settle, and 4. drain.
        match self.stages {
            Stages::Balancer(balancer) => balancer.shutdown(deadlines.drain).await,
            Stages::Sampler { sampler, pipeline } => {
                if let Some(sampler) = &sampler {
                    let settle = sampler.settle(deadlines.settle);
                    if tokio::time::timeout_at(deadlines.settle, settle)
                        .await
                        .is_err()
                    {
                        let lost = sampler.buffered_spans();
                        crate::telemetry::catalog::SPANS_DROPPED
                            .counter(&["shutdown_timeout"])
                            .increment(lost as u64);
                        tracing::error!(
                            spans = lost,
                            "the buffer did not settle in its share of the grace period; \
                             spans still buffered are lost (counted in tailgate_spans_dropped)"
                        );
                    }
                }
                pipeline.shutdown(deadlines.drain).await;
            }
        }

        // 5. Telemetry.
        self.background.cancel();
        self.operations_stop.cancel();
        for task in self.operations {
            let _ = tokio::time::timeout(TELEMETRY_STOP, task).await;
        }
        tracing::info!("shutdown complete");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_phase_ends_at_its_share_of_the_grace_period() {
        let start = Instant::now();
        let d = Deadlines::from(start, Duration::from_secs(30));
        assert_eq!(d.leave - start, Duration::from_secs(15));
        assert_eq!(d.stop_intake - start, Duration::from_secs(18));
        assert_eq!(d.settle - start, Duration::from_secs(24));
        assert_eq!(d.drain - start, Duration::from_secs(30));
    }
}
