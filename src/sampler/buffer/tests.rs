//! Buffer behaviour under tokio's paused clock: decision timing, whole traces, late spans,
//! the `num_traces` limit, and shutdown.

use super::*;
use crate::otlp::group::group_by_trace;
use crate::otlp::proto::views;
use crate::otlp::write::framed_spans;
use crate::otlp::{Origin, SpanSummary};
use crate::policy::{PolicyConfig, TraceView};
use bytes::Bytes;
use prost::Message;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(10);

fn policies(yaml: &str) -> PolicySet {
    let configs: Vec<PolicyConfig> = serde_yaml::from_str(yaml).unwrap();
    PolicySet::new(&configs, false)
}

fn always() -> PolicySet {
    policies("[{name: all, type: always_sample}]")
}

fn settings(num_traces: usize) -> BufferSettings {
    BufferSettings {
        decision_wait: WAIT,
        wait_after_root: Duration::ZERO,
        max_trace_bytes: 0,
        block_on_overflow: false,
        num_traces,
        max_buffered_bytes: 0,
        compression: BufferCompression::None,
        sampled_cache_size: 100,
        non_sampled_cache_size: 100,
        drop_pending_on_shutdown: false,
        dry_run: false,
        record_policy: false,
    }
}

/// An encoded request with one span per `(trace byte, span byte, status code)`. Span byte 1 is
/// the trace's root; the others are its children.
fn request(spans: &[(u8, u8, i32)]) -> Vec<u8> {
    let spans: Vec<Bytes> = spans
        .iter()
        .map(|&(t, s, code)| {
            let mut status = Vec::new();
            if code != 0 {
                status.push(3 << 3);
                crate::otlp::wire::put_varint(&mut status, code as u64);
            }
            views::Span {
                trace_id: Bytes::from(vec![t; 16]),
                span_id: Bytes::from(vec![s; 8]),
                parent_span_id: if s == 1 {
                    Bytes::new()
                } else {
                    Bytes::from(vec![1; 8])
                },
                name: format!("span-{s}"),
                start_time_unix_nano: 1_000,
                end_time_unix_nano: 2_000,
                status: status.into(),
                ..Default::default()
            }
            .encode_to_vec()
            .into()
        })
        .collect();
    let scope = views::ScopeSpans {
        spans,
        ..Default::default()
    }
    .encode_to_vec();
    let rs = views::ResourceSpans {
        resource: Bytes::from_static(b"\x0a\x08\x0a\x01k\x12\x03\x0a\x01v"),
        scope_spans: vec![scope.into()],
        ..Default::default()
    }
    .encode_to_vec();
    views::ExportTraceServiceRequest {
        resource_spans: vec![rs.into()],
    }
    .encode_to_vec()
}

async fn ingest(buffer: &TraceBuffer, spans: &[(u8, u8, i32)]) -> IngestOutcome {
    let body = request(spans);
    let parsed = crate::otlp::parse_export_request(&body).unwrap();
    buffer.ingest(parsed, &body).await.unwrap()
}

/// `(trace byte, span byte)` of every span in a kept message.
fn span_ids(kept: &SpanBatch) -> Vec<(u8, u8)> {
    let mut ids: Vec<(u8, u8)> = kept
        .chunks
        .iter()
        .flat_map(|c| c.spans())
        .map(|s| {
            let span = views::Span::decode(s).unwrap();
            (span.trace_id[0], span.span_id[0])
        })
        .collect();
    ids.sort();
    ids
}

fn start(
    settings: BufferSettings,
    policies: PolicySet,
) -> (
    Arc<TraceBuffer>,
    mpsc::Receiver<SpanBatch>,
    CancellationToken,
) {
    let (tx, rx) = mpsc::channel(64);
    let buffer = TraceBuffer::new(settings, policies, tx);
    let stop = CancellationToken::new();
    buffer.spawn_deciders(stop.clone());
    (buffer, rx, stop)
}

#[tokio::test(start_paused = true)]
async fn a_trace_is_decided_exactly_decision_wait_after_its_first_span() {
    let (buffer, mut out, _stop) = start(settings(100), always());
    let first_span_at = Instant::now();
    ingest(&buffer, &[(1, 1, 0)]).await;
    // Just before the deadline nothing has been decided.
    tokio::time::sleep(WAIT - Duration::from_millis(1)).await;
    assert!(matches!(out.try_recv(), Err(TryRecvError::Empty)));
    let kept = out.recv().await.unwrap();
    assert_eq!(
        Instant::now() - first_span_at,
        WAIT,
        "decided at the deadline, to the millisecond"
    );
    assert_eq!(span_ids(&kept), vec![(1, 1)]);
    assert_eq!(buffer.live_traces(), 0);
}

#[tokio::test(start_paused = true)]
async fn spans_of_a_trace_sent_in_separate_requests_leave_together() {
    let (buffer, mut out, _stop) = start(settings(100), always());
    ingest(&buffer, &[(1, 1, 0), (2, 1, 0), (1, 2, 0)]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    ingest(&buffer, &[(1, 3, 0), (2, 2, 0)]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    ingest(&buffer, &[(1, 4, 0)]).await;
    let mut kept = Vec::new();
    while kept.len() < 6 {
        kept.extend(span_ids(&out.recv().await.unwrap()));
    }
    kept.sort();
    assert_eq!(kept, vec![(1, 1), (1, 2), (1, 3), (1, 4), (2, 1), (2, 2)]);
    assert_eq!(buffer.buffered_spans(), 0);
}

#[tokio::test(start_paused = true)]
async fn only_traces_the_policies_keep_are_exported() {
    let errors =
        policies("[{name: errors, type: status_code, status_code: {status_codes: [ERROR]}}]");
    let (buffer, mut out, _stop) = start(settings(100), errors);
    ingest(&buffer, &[(1, 1, 0), (2, 1, 0), (3, 1, 1)]).await;
    ingest(&buffer, &[(2, 2, 2)]).await; // trace 2's second span is an error
    let kept = out.recv().await.unwrap();
    assert_eq!(span_ids(&kept), vec![(2, 1), (2, 2)]);
    // Nothing else follows: the other traces were decided in the same round and dropped.
    tokio::time::sleep(WAIT).await;
    assert!(matches!(out.try_recv(), Err(TryRecvError::Empty)));
}

#[tokio::test(start_paused = true)]
async fn late_spans_follow_the_decision() {
    let errors =
        policies("[{name: errors, type: status_code, status_code: {status_codes: [ERROR]}}]");
    let (buffer, mut out, _stop) = start(settings(100), errors);
    ingest(&buffer, &[(1, 1, 2), (2, 1, 0)]).await;
    out.recv().await.unwrap();
    // Trace 1 was kept: its late span goes out at once. Trace 2 was not: its late span is dropped,
    // even though it is an error (the decision stands).
    let outcome = ingest(&buffer, &[(1, 2, 0), (2, 2, 2)]).await;
    assert_eq!(outcome.forwarded_late, 1);
    assert_eq!(outcome.dropped_late, 1);
    assert_eq!(span_ids(&out.try_recv().unwrap()), vec![(1, 2)]);
    assert_eq!(
        buffer.live_traces(),
        0,
        "late spans do not start new traces"
    );
}

#[tokio::test(start_paused = true)]
async fn without_a_cached_decision_a_late_span_starts_a_new_trace() {
    let mut s = settings(100);
    s.sampled_cache_size = 0;
    s.non_sampled_cache_size = 0;
    let (buffer, mut out, _stop) = start(s, always());
    ingest(&buffer, &[(1, 1, 0)]).await;
    out.recv().await.unwrap();
    let outcome = ingest(&buffer, &[(1, 2, 0)]).await;
    assert_eq!(outcome.buffered, 1);
    assert_eq!(buffer.live_traces(), 1);
}

#[tokio::test(start_paused = true)]
async fn at_num_traces_the_oldest_trace_is_decided_early() {
    let (buffer, mut out, _stop) = start(settings(2), always());
    ingest(&buffer, &[(1, 1, 0)]).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    ingest(&buffer, &[(2, 1, 0)]).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let outcome = ingest(&buffer, &[(3, 1, 0), (2, 2, 0)]).await;
    assert_eq!(outcome.decided_early, 1);
    assert_eq!(buffer.live_traces(), 2);
    // The oldest trace (1) went out early, well before its deadline.
    assert_eq!(span_ids(&out.try_recv().unwrap()), vec![(1, 1)]);
    // Its late spans follow the early decision.
    assert_eq!(ingest(&buffer, &[(1, 2, 0)]).await.forwarded_late, 1);
}

#[tokio::test(start_paused = true)]
async fn drain_decides_every_pending_trace() {
    let (buffer, mut out, stop) = start(settings(100), always());
    ingest(&buffer, &[(1, 1, 0), (2, 1, 0)]).await;
    stop.cancel();
    buffer.drain().await;
    let mut kept = span_ids(&out.recv().await.unwrap());
    while let Ok(more) = out.try_recv() {
        kept.extend(span_ids(&more));
    }
    kept.sort();
    assert_eq!(kept, vec![(1, 1), (2, 1)]);
    assert_eq!(buffer.live_traces(), 0);
}

#[tokio::test(start_paused = true)]
async fn drop_pending_traces_on_shutdown_drops_instead_of_deciding() {
    let mut s = settings(100);
    s.drop_pending_on_shutdown = true;
    let (buffer, mut out, stop) = start(s, always());
    ingest(&buffer, &[(1, 1, 0), (2, 1, 0)]).await;
    stop.cancel();
    buffer.drain().await;
    assert!(matches!(out.try_recv(), Err(TryRecvError::Empty)));
    assert_eq!(buffer.live_traces(), 0);
    assert_eq!(buffer.buffered_spans(), 0);
}

#[test]
fn buffered_span_bytes_are_copied_not_pinned_to_the_request() {
    let body = request(&[(1, 1, 0), (1, 2, 0)]);
    let parsed = crate::otlp::parse_export_request(&body).unwrap();
    let origins: Vec<Arc<Origin>> = parsed.origins.into_iter().map(Arc::new).collect();
    let groups = group_by_trace(&parsed.spans, &origins, &body);
    assert_eq!(groups.len(), 1);
    let chunk = &groups[0].chunks[0];
    let body_range = body.as_ptr_range();
    assert!(!body_range.contains(&chunk.run.as_ptr()));
    // The chunk holds the spans byte for byte.
    let spans: Vec<&[u8]> = chunk.spans().collect();
    assert_eq!(
        spans[0],
        &body[parsed.spans[0].range.0..parsed.spans[0].range.1]
    );
}

#[tokio::test(start_paused = true)]
async fn a_root_span_brings_the_decision_forward_with_decision_wait_after_root_received() {
    let mut s = settings(100);
    s.wait_after_root = Duration::from_secs(2);
    let (buffer, mut out, _stop) = start(s, always());
    let t0 = Instant::now();
    ingest(&buffer, &[(1, 2, 0), (2, 2, 0)]).await; // children first: no root yet
    tokio::time::sleep(Duration::from_secs(1)).await;
    ingest(&buffer, &[(1, 1, 0)]).await; // trace 1's root arrives at t0 + 1 s
    let kept = out.recv().await.unwrap();
    assert_eq!(
        Instant::now() - t0,
        Duration::from_secs(3),
        "root arrival + 2 s"
    );
    assert_eq!(span_ids(&kept), vec![(1, 1), (1, 2)]);
    // Trace 2 never got its root: it waits the full decision_wait.
    let kept = out.recv().await.unwrap();
    assert_eq!(Instant::now() - t0, WAIT);
    assert_eq!(span_ids(&kept), vec![(2, 2)]);
}

#[tokio::test(start_paused = true)]
async fn a_trace_past_maximum_trace_size_bytes_is_decided_not_sampled_at_once() {
    let mut s = settings(100);
    let one_span = request(&[(1, 2, 0)]).len();
    s.max_trace_bytes = one_span * 2; // room for about two spans
    let (buffer, mut out, _stop) = start(s, always());
    ingest(&buffer, &[(1, 1, 0), (2, 1, 0)]).await;
    let outcome = ingest(&buffer, &[(1, 2, 0), (1, 3, 0), (1, 4, 0)]).await;
    assert_eq!(outcome.too_large, 1);
    assert_eq!(buffer.live_traces(), 1);
    // Its later spans follow the not-sampled decision; trace 2 is unaffected.
    assert_eq!(ingest(&buffer, &[(1, 5, 0)]).await.dropped_late, 1);
    assert_eq!(span_ids(&out.recv().await.unwrap()), vec![(2, 1)]);
}

#[tokio::test(start_paused = true)]
async fn block_on_overflow_holds_a_request_until_decisions_make_room() {
    let mut s = settings(2);
    s.block_on_overflow = true;
    s.decision_wait = Duration::from_secs(3);
    let (buffer, mut out, _stop) = start(s, always());
    let started = Instant::now();
    ingest(&buffer, &[(1, 1, 0), (2, 1, 0)]).await;
    // Trace 3 arrives at the limit: it waits (not refused) until traces 1 and 2 are decided.
    let outcome = ingest(&buffer, &[(3, 1, 0)]).await;
    assert_eq!(outcome.buffered, 1);
    assert_eq!(Instant::now() - started, Duration::from_secs(3));
    let mut kept = Vec::new();
    while kept.len() < 2 {
        kept.extend(span_ids(&out.recv().await.unwrap()));
    }
    kept.sort();
    assert_eq!(kept, vec![(1, 1), (2, 1)]);
    assert_eq!(buffer.live_traces(), 1);
}

#[tokio::test(start_paused = true)]
async fn block_on_overflow_takes_spans_of_known_traces_at_num_traces() {
    let errors =
        policies("[{name: errors, type: status_code, status_code: {status_codes: [ERROR]}}]");
    let mut s = settings(2);
    s.block_on_overflow = true;
    s.decision_wait = Duration::from_secs(3);
    let (buffer, mut out, _stop) = start(s, errors);
    ingest(&buffer, &[(1, 1, 0), (2, 1, 0)]).await;
    // At num_traces: more spans of trace 1 add no trace, so they are taken at once.
    let asked = Instant::now();
    assert_eq!(ingest(&buffer, &[(1, 2, 2)]).await.buffered, 1);
    assert_eq!(Instant::now(), asked, "not held");
    // Trace 1 (now an error) is kept; trace 2 is not. Trace 3 waited for that room.
    let outcome = ingest(&buffer, &[(3, 1, 0)]).await;
    assert_eq!(outcome.buffered, 1);
    assert_eq!(span_ids(&out.recv().await.unwrap()), vec![(1, 1), (1, 2)]);
    // A late span of the decided trace 2 is taken while trace 3 and a new one fill the buffer.
    ingest(&buffer, &[(4, 1, 0)]).await;
    let asked = Instant::now();
    assert_eq!(ingest(&buffer, &[(2, 2, 0)]).await.dropped_late, 1);
    assert_eq!(Instant::now(), asked, "a decided trace's span is not held");
}

#[tokio::test(start_paused = true)]
async fn block_on_overflow_refuses_requests_instead_of_deciding_early() {
    let mut s = settings(2);
    s.block_on_overflow = true;
    let (buffer, mut out, _stop) = start(s, always());
    ingest(&buffer, &[(1, 1, 0), (2, 1, 0)]).await;
    let body = request(&[(3, 1, 0)]);
    let parsed = crate::otlp::parse_export_request(&body).unwrap();
    let asked = Instant::now();
    assert_eq!(buffer.ingest(parsed, &body).await, Err(Overflow));
    assert_eq!(
        Instant::now() - asked,
        super::limits::OVERFLOW_MAX_WAIT,
        "refused once the bounded wait found no room (decision_wait is 10 s)"
    );
    assert_eq!(buffer.live_traces(), 2);
    assert!(
        matches!(out.try_recv(), Err(TryRecvError::Empty)),
        "nothing decided early"
    );
    // Once the buffered traces are decided there is room again.
    out.recv().await.unwrap();
    let parsed = crate::otlp::parse_export_request(&body).unwrap();
    // Taken whole, into room made by decisions, not by deciding another trace early.
    assert_eq!(
        buffer.ingest(parsed, &body).await,
        Ok(IngestOutcome {
            buffered: 1,
            ..IngestOutcome::default()
        })
    );
}

#[tokio::test(start_paused = true)]
async fn at_max_buffered_bytes_the_oldest_traces_are_decided_early() {
    let (probe, _out, _stop) = start(settings(100), always());
    ingest(&probe, &[(9, 1, 0)]).await;
    let per_trace = probe.buffered_bytes();
    assert!(per_trace > TRACE_OVERHEAD, "{per_trace}");
    let mut s = settings(100);
    s.max_buffered_bytes = per_trace * 3;
    let (buffer, mut out, _stop) = start(s, always());
    for t in 1..=3 {
        assert_eq!(
            ingest(&buffer, &[(t, 1, 0)]).await.decided_early_for_bytes,
            0
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(buffer.buffered_bytes(), per_trace * 3);
    // A fourth trace passes the limit: the oldest one is decided now, and only it.
    let outcome = ingest(&buffer, &[(4, 1, 0)]).await;
    assert_eq!(outcome.decided_early_for_bytes, 1);
    assert_eq!(outcome.decided_early, 0);
    assert_eq!(span_ids(&out.recv().await.unwrap()), vec![(1, 1)]);
    assert_eq!(buffer.live_traces(), 3);
    // Three one-span traces of the same size as before: exactly three traces' worth.
    assert_eq!(buffer.buffered_bytes(), per_trace * 3);
    // Its late spans follow the decision.
    assert_eq!(ingest(&buffer, &[(1, 2, 0)]).await.forwarded_late, 1);
}

#[tokio::test(start_paused = true)]
async fn block_on_overflow_refuses_requests_at_max_buffered_bytes() {
    let mut s = settings(100);
    s.block_on_overflow = true;
    s.max_buffered_bytes = 1;
    let (buffer, mut out, _stop) = start(s, always());
    // Below the limit a request is taken whole, even if it passes the limit.
    ingest(&buffer, &[(1, 1, 0), (2, 1, 0)]).await;
    let body = request(&[(3, 1, 0)]);
    let parsed = crate::otlp::parse_export_request(&body).unwrap();
    assert_eq!(buffer.ingest(parsed, &body).await, Err(Overflow));
    assert_eq!(buffer.live_traces(), 2);
    out.recv().await.unwrap();
    assert_eq!(buffer.buffered_bytes(), 0);
    let parsed = crate::otlp::parse_export_request(&body).unwrap();
    // Taken whole, into room made by decisions, not by deciding another trace early.
    assert_eq!(
        buffer.ingest(parsed, &body).await,
        Ok(IngestOutcome {
            buffered: 1,
            ..IngestOutcome::default()
        })
    );
}

#[tokio::test(start_paused = true)]
async fn compressed_traces_are_decided_on_their_summaries_and_exported_byte_for_byte() {
    let mut s = settings(100);
    s.compression = BufferCompression::Zstd;
    let errors = "[{name: errors, type: status_code, status_code: {status_codes: [ERROR]}}]";
    let (buffer, mut out, _stop) = start(s, policies(errors));
    let spans = [(1, 1, 0), (1, 2, 2), (1, 3, 0), (2, 1, 0), (2, 2, 0)];
    ingest(&buffer, &spans).await;
    ingest(&buffer, &[(1, 4, 0)]).await;
    let kept = out.recv().await.unwrap();
    assert_eq!(span_ids(&kept), vec![(1, 1), (1, 2), (1, 3), (1, 4)]);
    // The exported spans are the received bytes.
    let body = request(&spans);
    let parsed = crate::otlp::parse_export_request(&body).unwrap();
    let sent: Vec<&[u8]> = parsed.spans[..3]
        .iter()
        .map(|s| &body[s.range.0..s.range.1])
        .collect();
    let exported: Vec<&[u8]> = kept.chunks.iter().flat_map(|c| c.spans()).collect();
    for span in sent {
        assert!(exported.contains(&span));
    }
    assert_eq!(buffer.live_traces(), 0);
    assert_eq!(buffer.buffered_bytes(), 0);
}

#[test]
fn a_span_summary_replaces_the_walk_at_decision_time() {
    // The view the buffer builds from stored summaries equals the one walking the spans gives.
    let body = request(&[(1, 1, 0), (1, 2, 2), (1, 3, 1)]);
    let parsed = crate::otlp::parse_export_request(&body).unwrap();
    let origins: Vec<Arc<Origin>> = parsed.origins.into_iter().map(Arc::new).collect();
    let groups = group_by_trace(&parsed.spans, &origins, &body);
    let walked = TraceView::from_chunks([1; 16], &groups[0].chunks);
    let codec = Codec::new(false);
    let ranges: Vec<(usize, usize)> = parsed.spans.iter().map(|s| s.range).collect();
    let summaries: Vec<SpanSummary> = parsed
        .spans
        .iter()
        .map(|s| SpanSummary::of(&s.info, s.range.1 - s.range.0))
        .collect();
    let stored = codec.store(Arc::clone(&origins[0]), &body, &ranges, &summaries);
    let from_summaries: Vec<_> = framed_spans(stored.raw_run().unwrap())
        .zip(stored.summaries())
        .map(|(bytes, summary)| summary.info([1; 16], bytes))
        .collect();
    let walked: Vec<_> = walked.spans.iter().map(|s| s.info).collect();
    assert_eq!(from_summaries, walked);
}

fn carried(entries: &[(u8, Duration)]) -> Carried {
    entries.iter().map(|&(t, d)| ([t; 16], d)).collect()
}

async fn ingest_carried(buffer: &TraceBuffer, spans: &[(u8, u8, i32)], carried: &Carried) {
    let body = request(spans);
    let parsed = crate::otlp::parse_export_request(&body).unwrap();
    buffer
        .ingest_with(parsed, &body, Some(carried))
        .await
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_handed_over_trace_keeps_the_deadline_it_had_at_its_previous_owner() {
    let (buffer, mut out, _stop) = start(settings(100), always());
    let t0 = Instant::now();
    // Trace 1 arrives with 3 s left, trace 2 with more than a whole decision_wait (capped).
    let moved = carried(&[(1, Duration::from_secs(3)), (2, WAIT * 2)]);
    ingest_carried(&buffer, &[(1, 1, 0), (2, 1, 0)], &moved).await;
    let kept = out.recv().await.unwrap();
    assert_eq!(Instant::now() - t0, Duration::from_secs(3));
    assert_eq!(span_ids(&kept), vec![(1, 1)]);
    let kept = out.recv().await.unwrap();
    assert_eq!(
        Instant::now() - t0,
        WAIT,
        "a carried deadline never exceeds decision_wait"
    );
    assert_eq!(span_ids(&kept), vec![(2, 1)]);
}

#[tokio::test(start_paused = true)]
async fn a_carried_deadline_earlier_than_the_local_one_wins_for_a_trace_already_here() {
    let (buffer, mut out, _stop) = start(settings(100), always());
    let t0 = Instant::now();
    // The trace's second span reached this sampler first (its full wait starts now)...
    ingest(&buffer, &[(5, 2, 0)]).await;
    tokio::time::advance(Duration::from_secs(1)).await;
    // ...then its previous owner hands over the first span with 2 s left.
    ingest_carried(
        &buffer,
        &[(5, 1, 0)],
        &carried(&[(5, Duration::from_secs(2))]),
    )
    .await;
    let kept = out.recv().await.unwrap();
    assert_eq!(Instant::now() - t0, Duration::from_secs(3));
    assert_eq!(span_ids(&kept), vec![(5, 1), (5, 2)], "decided whole");
}

#[tokio::test(start_paused = true)]
async fn taken_traces_report_the_time_they_still_had_to_wait() {
    let (buffer, _out, _stop) = start(settings(100), always());
    ingest(&buffer, &[(1, 1, 0), (1, 2, 0), (2, 1, 0)]).await;
    tokio::time::advance(Duration::from_secs(4)).await;
    let mut taken = buffer.take_traces(|id| id[0] == 1);
    assert_eq!(taken.len(), 1);
    let trace = taken.pop().unwrap();
    assert_eq!(trace.id, [1; 16]);
    assert_eq!(trace.remaining, WAIT - Duration::from_secs(4));
    assert_eq!(trace.chunks.iter().map(|c| c.spans).sum::<u32>(), 2);
    assert_eq!(buffer.live_traces(), 1, "trace 2 stays");
}

#[tokio::test(start_paused = true)]
async fn adopted_decisions_make_late_spans_follow_them() {
    use crate::otlp::handoff::MovedDecision;
    let (buffer, mut out, _stop) = start(settings(100), always());
    buffer.adopt_decisions(&[
        MovedDecision {
            fingerprint: fingerprint(&[7; 16]),
            sampled: true,
        },
        MovedDecision {
            fingerprint: fingerprint(&[8; 16]),
            sampled: false,
        },
    ]);
    let outcome = ingest(&buffer, &[(7, 3, 0), (8, 3, 0), (9, 1, 0)]).await;
    assert_eq!(
        outcome.forwarded_late, 1,
        "the kept trace's span goes out at once"
    );
    assert_eq!(
        outcome.dropped_late, 1,
        "the dropped trace's span is dropped"
    );
    assert_eq!(outcome.buffered, 1, "an unknown trace is buffered");
    let kept = out.recv().await.unwrap();
    assert_eq!(span_ids(&kept), vec![(7, 3)]);
}

#[tokio::test(start_paused = true)]
async fn decisions_whose_trace_moved_are_found_by_ring_position() {
    use crate::routing::ring::position_of;
    let (buffer, mut out, _stop) = start(settings(100), always());
    ingest(&buffer, &[(1, 1, 0), (2, 1, 0), (3, 1, 0)]).await;
    tokio::time::advance(WAIT).await;
    // One batch per shard's decision round: count spans, not batches (the shard a trace lands
    // in is seeded per process).
    let mut decided = 0;
    while decided < 3 {
        decided += out.recv().await.unwrap().span_count();
    }
    // Pretend only trace 2's position moved to another sampler.
    let moved_position = position_of(&[2; 16]);
    let foreign = buffer.foreign_decisions(|position| position == moved_position);
    assert_eq!(foreign.len(), 1, "{foreign:?}");
    let (position, decision) = foreign[0];
    assert_eq!(position, moved_position);
    assert_eq!(decision.fingerprint, fingerprint(&[2; 16]));
    assert!(decision.sampled);
}

#[test]
fn traces_spread_over_the_shards_whatever_their_ids_share() {
    // Trace IDs that differ only in their first byte (what an unseeded "last bytes" shard
    // function put all in one shard) still spread over several shards.
    let shards: std::collections::BTreeSet<usize> = (0..=255u8)
        .map(|b| {
            let mut id = [0u8; 16];
            id[0] = b;
            shard::shard_of(&id)
        })
        .collect();
    assert!(shards.len() > SHARDS / 2, "{shards:?}");
}

/// A policy that reports when it starts judging a trace and then waits to be released, so a
/// test can act while a decision is being taken.
struct Gate {
    entered: std::sync::Mutex<std::sync::mpsc::Sender<()>>,
    release: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
    keep: bool,
}

impl crate::policy::Policy for Gate {
    fn evaluate(
        &self,
        _: &TraceView<'_>,
    ) -> Result<crate::policy::Decision, crate::policy::PolicyError> {
        self.entered.lock().unwrap().send(()).unwrap();
        self.release.lock().unwrap().recv().unwrap();
        Ok(if self.keep {
            crate::policy::Decision::Sampled
        } else {
            crate::policy::Decision::NotSampled
        })
    }
}

/// Starts `drain` with a [`Gate`] policy on a trace, ingests more spans of that trace and a new
/// trace while the gate holds the decision, then releases it. Returns what was exported and the
/// two ingest outcomes.
async fn ingest_while_judging(keep: bool) -> (Vec<(u8, u8)>, IngestOutcome, IngestOutcome) {
    let (entered_tx, entered) = std::sync::mpsc::channel();
    let (release, release_rx) = std::sync::mpsc::channel();
    let gate = Gate {
        entered: std::sync::Mutex::new(entered_tx),
        release: std::sync::Mutex::new(release_rx),
        keep,
    };
    let set = PolicySet::from_policies(vec![("gate", Box::new(gate))]);
    let (tx, mut out) = mpsc::channel(64);
    let buffer = TraceBuffer::new(settings(100), set, tx);
    ingest(&buffer, &[(1, 1, 0)]).await;
    let draining = tokio::spawn({
        let buffer = Arc::clone(&buffer);
        async move { buffer.drain().await }
    });
    tokio::task::spawn_blocking(move || entered.recv_timeout(Duration::from_secs(30)))
        .await
        .unwrap()
        .expect("the policy was asked to judge trace 1");
    // The policy is running: the shard must still take spans, of this trace and of others.
    let joined = tokio::time::timeout(Duration::from_secs(30), ingest(&buffer, &[(1, 2, 0)]))
        .await
        .expect("ingest was not blocked by the decision in progress");
    assert_eq!(
        buffer.live_traces(),
        0,
        "the joining span started no new trace"
    );
    // Trace 1's second decision (none: it is not judged twice) would block here forever.
    release.send(()).unwrap();
    draining.await.unwrap();
    let mut kept = Vec::new();
    while let Ok(batch) = out.try_recv() {
        kept.extend(span_ids(&batch));
    }
    kept.sort();
    let late = ingest(&buffer, &[(1, 3, 0)]).await;
    (kept, joined, late)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_arriving_while_their_trace_is_judged_go_out_with_the_kept_trace() {
    let (kept, joined, late) = ingest_while_judging(true).await;
    assert_eq!(joined.buffered, 1);
    assert_eq!(
        kept,
        vec![(1, 1), (1, 2)],
        "the joined span left with its trace"
    );
    assert_eq!(
        late.forwarded_late, 1,
        "afterwards, the cache has the decision"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_arriving_while_their_trace_is_judged_are_dropped_with_a_dropped_trace() {
    let (kept, joined, late) = ingest_while_judging(false).await;
    assert_eq!(joined.buffered, 1);
    assert_eq!(kept, Vec::<(u8, u8)>::new());
    assert_eq!(late.dropped_late, 1);
}

/// Every span of a batch with its `tailsampling.sampled` value, and every scope's
/// `tailsampling.policy` value.
/// `(trace byte, span byte, tailsampling.sampled)` of each span.
type MarkedSpans = Vec<(u8, u8, Option<bool>)>;

fn annotations(batch: &SpanBatch) -> (MarkedSpans, Vec<Option<String>>) {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
    use opentelemetry_proto::tonic::trace::v1::Span;
    let mut spans = Vec::new();
    let mut scopes = Vec::new();
    for chunk in &batch.chunks {
        let scope = chunk
            .origin
            .scope
            .as_deref()
            .map(|s| InstrumentationScope::decode(s).unwrap())
            .unwrap_or_default();
        scopes.push(
            scope
                .attributes
                .iter()
                .find(|kv| kv.key == "tailsampling.policy")
                .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    Value::StringValue(s) => Some(s.clone()),
                    _ => None,
                }),
        );
        for bytes in chunk.spans() {
            let span = Span::decode(bytes).unwrap();
            let sampled = span
                .attributes
                .iter()
                .find(|kv| kv.key == "tailsampling.sampled")
                .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    Value::BoolValue(b) => Some(*b),
                    _ => None,
                });
            spans.push((span.trace_id[0], span.span_id[0], sampled));
        }
    }
    spans.sort();
    (spans, scopes)
}

#[tokio::test(start_paused = true)]
async fn dry_run_forwards_every_trace_marked_with_the_decision_it_would_take() {
    let errors =
        policies("[{name: errors, type: status_code, status_code: {status_codes: [ERROR]}}]");
    let mut s = settings(100);
    s.dry_run = true;
    let (buffer, mut out, _stop) = start(s, errors);
    ingest(&buffer, &[(1, 1, 2), (2, 1, 0), (2, 2, 0)]).await;
    let mut spans = Vec::new();
    while spans.len() < 3 {
        spans.extend(annotations(&out.recv().await.unwrap()).0);
    }
    spans.sort();
    assert_eq!(
        spans,
        vec![(1, 1, Some(true)), (2, 1, Some(false)), (2, 2, Some(false))]
    );
    // A late span of the trace that would have been dropped is forwarded too, marked false.
    let late = ingest(&buffer, &[(2, 3, 0)]).await;
    assert_eq!(
        late.dropped_late, 1,
        "counted as following a not-sampled decision"
    );
    let (spans, _) = annotations(&out.try_recv().unwrap());
    assert_eq!(spans, vec![(2, 3, Some(false))]);
}

#[tokio::test(start_paused = true)]
async fn record_policy_names_the_policy_that_kept_the_trace_on_its_scopes() {
    let set = policies(
        "[{name: slow, type: latency, latency: {threshold_ms: 5000}},
          {name: errors, type: status_code, status_code: {status_codes: [ERROR]}}]",
    );
    let mut s = settings(100);
    s.record_policy = true;
    let (buffer, mut out, _stop) = start(s, set);
    ingest(&buffer, &[(1, 1, 2), (1, 2, 0), (2, 1, 0)]).await;
    let (spans, scopes) = annotations(&out.recv().await.unwrap());
    assert_eq!(
        spans,
        vec![(1, 1, None), (1, 2, None)],
        "span bytes untouched"
    );
    assert!(!scopes.is_empty());
    assert!(
        scopes.iter().all(|p| p.as_deref() == Some("errors")),
        "{scopes:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_reload_applies_new_policies_to_traces_already_buffered() {
    let errors =
        policies("[{name: errors, type: status_code, status_code: {status_codes: [ERROR]}}]");
    let (buffer, mut out, _stop) = start(settings(100), errors);
    let start_at = Instant::now();
    ingest(&buffer, &[(1, 1, 0)]).await;
    let mut shorter = settings(100);
    shorter.decision_wait = Duration::from_secs(2);
    buffer.reload(shorter, always());
    // A trace that arrives after the reload waits the new decision_wait, even though an older
    // trace with a later deadline is queued before it.
    ingest(&buffer, &[(2, 1, 0)]).await;
    assert_eq!(span_ids(&out.recv().await.unwrap()), vec![(2, 1)]);
    assert_eq!(Instant::now() - start_at, Duration::from_secs(2));
    // Trace 1 keeps its deadline (the old 10 s) and is judged by the new policy: kept, though
    // the old policy would have dropped it.
    assert_eq!(span_ids(&out.recv().await.unwrap()), vec![(1, 1)]);
    assert_eq!(Instant::now() - start_at, WAIT);
}

#[tokio::test(start_paused = true)]
async fn two_buffered_traces_with_one_fingerprint_are_both_decided() {
    // Trace IDs whose halves cancel out in the fingerprint (hi ^ lo.rotate_left(29)): a crafted
    // collision. Both are buffered (the map is keyed by the whole ID) and both are decided; the
    // cache keeps the first decision.
    let a = [7u8; 16];
    let target = fingerprint(&a);
    let lo = u64::from_le_bytes([7; 8]) ^ 1;
    let hi = target ^ lo.rotate_left(29);
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&hi.to_le_bytes());
    b[8..].copy_from_slice(&lo.to_le_bytes());
    assert_ne!(a, b);
    assert_eq!(fingerprint(&a), fingerprint(&b));
    let (buffer, mut out, _stop) = start(settings(100), always());
    let body = |id: [u8; 16]| {
        let span = views::Span {
            trace_id: Bytes::copy_from_slice(&id),
            span_id: Bytes::from(vec![1; 8]),
            name: "s".into(),
            ..Default::default()
        }
        .encode_to_vec();
        let scope = views::ScopeSpans {
            spans: vec![span.into()],
            ..Default::default()
        }
        .encode_to_vec();
        let rs = views::ResourceSpans {
            scope_spans: vec![scope.into()],
            ..Default::default()
        }
        .encode_to_vec();
        views::ExportTraceServiceRequest {
            resource_spans: vec![rs.into()],
        }
        .encode_to_vec()
    };
    for id in [a, b] {
        let request = body(id);
        let parsed = crate::otlp::parse_export_request(&request).unwrap();
        buffer.ingest(parsed, &request).await.unwrap();
    }
    let mut decided = 0;
    while decided < 2 {
        decided += out.recv().await.unwrap().span_count();
    }
    assert_eq!(buffer.live_traces(), 0);
}

/// Trace bytes (for `request`'s `[t; 16]` IDs) that land in `n` different shards, so a test
/// crosses shards whatever this process's shard seed is. (The shard function only picks the
/// inputs; the assertions are about decisions.)
fn traces_in_distinct_shards(n: usize) -> Vec<u8> {
    let mut seen = std::collections::HashSet::new();
    let picked: Vec<u8> = (1..=255u8)
        .filter(|&t| seen.insert(shard::shard_of(&[t; 16])))
        .take(n)
        .collect();
    assert_eq!(picked.len(), n, "only {} shards reached", picked.len());
    picked
}

#[tokio::test(start_paused = true)]
async fn the_oldest_trace_is_decided_early_even_when_it_sits_in_another_shard() {
    let ids = traces_in_distinct_shards(4);
    let (buffer, mut out, _stop) = start(settings(3), always());
    // Oldest first: ids[0], ids[1], ids[2], each in its own shard.
    for &t in &ids[..3] {
        ingest(&buffer, &[(t, 1, 0)]).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // A fourth trace, in a fourth shard, passes num_traces: the oldest overall goes, not the
    // oldest of the new trace's shard (which holds nothing else).
    let outcome = ingest(&buffer, &[(ids[3], 1, 0)]).await;
    assert_eq!(outcome.decided_early, 1);
    assert_eq!(span_ids(&out.try_recv().unwrap()), vec![(ids[0], 1)]);
    // Then the next oldest, again from another shard.
    let fifth = traces_in_distinct_shards(5)[4];
    assert_eq!(ingest(&buffer, &[(fifth, 1, 0)]).await.decided_early, 1);
    assert_eq!(span_ids(&out.try_recv().unwrap()), vec![(ids[1], 1)]);
    assert_eq!(buffer.live_traces(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_request_far_over_num_traces_decides_exactly_the_oldest_across_the_shards() {
    // Forty traces, one a millisecond, spread over the shards; then one request starting ten
    // more: the ten oldest of all go, whichever shards they sit in, and no other.
    let (buffer, mut out, _stop) = start(settings(40), always());
    for t in 1..=40u8 {
        ingest(&buffer, &[(t, 1, 0)]).await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let newcomers: Vec<(u8, u8, i32)> = (41..=50u8).map(|t| (t, 1, 0)).collect();
    let outcome = ingest(&buffer, &newcomers).await;
    assert_eq!(outcome.decided_early, 10);
    let mut decided = span_ids(&out.try_recv().unwrap());
    decided.sort();
    assert_eq!(decided, (1..=10u8).map(|t| (t, 1)).collect::<Vec<_>>());
    assert!(out.try_recv().is_err(), "only the ten oldest are decided");
    assert_eq!(buffer.live_traces(), 40);
}

#[tokio::test(start_paused = true)]
async fn a_stale_queue_entry_does_not_let_a_younger_trace_go_early_first() {
    // x and z share a shard, y sits in another; oldest first: x, y, z. x's root brings its
    // deadline forward (a second queue entry; the first goes stale once x is decided). Three
    // newcomers take the buffer two over num_traces: x goes first, by its root deadline, and
    // leaves its stale entry at the front of its shard's arrival queue, older than anything
    // live; then y must go, older than z, though z's shard looks older.
    let shard_of = |t: u8| shard::shard_of(&[t; 16]);
    let (x, z) = (1..=255u8)
        .flat_map(|a| (a + 1..=255u8).map(move |b| (a, b)))
        .find(|&(a, b)| shard_of(a) == shard_of(b))
        .unwrap();
    let y = (1..=255u8).find(|&t| shard_of(t) != shard_of(x)).unwrap();
    let newcomers: Vec<(u8, u8, i32)> = (1..=255u8)
        .filter(|&t| ![x, y, z].contains(&t))
        .take(3)
        .map(|t| (t, 2, 0)) // not roots: due a whole decision_wait from now
        .collect();
    let mut s = settings(4);
    s.wait_after_root = Duration::from_secs(1);
    let (buffer, mut out, _stop) = start(s, always());
    for t in [x, y, z] {
        ingest(&buffer, &[(t, 2, 0)]).await; // children: no root yet
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    ingest(&buffer, &[(x, 1, 0)]).await;
    let outcome = ingest(&buffer, &newcomers).await;
    assert_eq!(outcome.decided_early, 2);
    let mut decided = span_ids(&out.try_recv().unwrap());
    decided.sort();
    let mut want = vec![(x, 1), (x, 2), (y, 2)];
    want.sort();
    assert_eq!(decided, want);
}

#[tokio::test(start_paused = true)]
async fn each_shards_decision_cache_sends_late_spans_the_right_way() {
    // Traces in several shards, half kept and half dropped: each late span finds its own
    // trace's decision in its own shard's cache.
    let ids = traces_in_distinct_shards(6);
    let (buffer, mut out, _stop) = start(
        settings(100),
        policies("[{name: errors, type: status_code, status_code: {status_codes: [ERROR]}}]"),
    );
    let first: Vec<(u8, u8, i32)> = ids
        .iter()
        .enumerate()
        .map(|(i, &t)| (t, 1, if i % 2 == 0 { 2 } else { 0 }))
        .collect();
    ingest(&buffer, &first).await;
    let mut kept = Vec::new();
    while kept.len() < 3 {
        kept.extend(span_ids(&out.recv().await.unwrap()));
    }
    kept.sort();
    let mut want: Vec<(u8, u8)> = ids.iter().step_by(2).map(|&t| (t, 1)).collect();
    want.sort();
    assert_eq!(kept, want);
    let late: Vec<(u8, u8, i32)> = ids.iter().map(|&t| (t, 2, 0)).collect();
    let outcome = ingest(&buffer, &late).await;
    assert_eq!(
        (
            outcome.forwarded_late,
            outcome.dropped_late,
            outcome.buffered
        ),
        (3, 3, 0)
    );
}
