#!/usr/bin/env python3
"""Async-job traces from the OpenTelemetry Python SDK: an API enqueues a job, a worker runs it later.

Usage: async_jobs.py ENDPOINT [JOBS]

ENDPOINT is an OTLP/gRPC endpoint (``http://127.0.0.1:4317``); JOBS defaults to 20.

This is the pattern tailgate exists for. Two TracerProviders stand for two services on two hosts,
with their own resources (``service.name`` = ``api`` and ``worker``) and their own OTLP exporters:

1. API phase, for every job: a ``POST /orders`` SERVER span and its child ``enqueue job`` PRODUCER
   span; the producer's W3C ``traceparent`` is injected into the job "message" (a dict). Both spans
   end and the API provider is force-flushed, so the API half of every trace is exported first.
2. The script sleeps 300 ms: the job sits in the queue. (This models the scenario; it is not a
   synchronization point.)
3. Worker phase, for every job: the context is extracted from the message, a ``process job``
   CONSUMER span starts under it, with a ``db query`` CLIENT child. The worker provider is
   force-flushed, so the worker half arrives in separate export calls, after the API half.

Kinds of job (1-based job numbers):

- ``error``: every 5th job; the ``db query`` span has status ERROR.
- ``slow``: every 7th job that is not an error; the worker spans are given explicit end times so that
  ``process job`` ends 2.5 s after ``POST /orders`` started (start and end are passed as nanosecond
  timestamps, no real waiting), which a 2000 ms latency policy keeps.
- ``normal``: the rest, a few hundred milliseconds end to end with no error. Keep JOBS small enough
  (hundreds) that the worker phase ends well inside 2 s of the API phase.

At the end one JSON line goes to stdout:
``{"jobs": [{"job": 1, "trace_id": "<32 hex>", "kind": "normal", "spans": 4}, ...]}``.
The exit status is 0 only if every export call succeeded and every flush completed.
"""

import argparse
import json
import sys
import time

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

QUEUE_DELAY_S = 0.3
SLOW_TRACE_NS = 2_500_000_000
SPANS_PER_JOB = 4
FLUSH_TIMEOUT_MS = 30_000

PROPAGATOR = TraceContextTextMapPropagator()


class CheckedExporter(SpanExporter):
    """Wraps the OTLP exporter to count export calls and failures, so the exit status tells."""

    def __init__(self, inner):
        self.inner = inner
        self.calls = 0
        self.failures = 0

    def export(self, spans):
        result = self.inner.export(spans)
        self.calls += 1
        if result != SpanExportResult.SUCCESS:
            self.failures += 1
        return result

    def shutdown(self):
        self.inner.shutdown()

    def force_flush(self, timeout_millis=FLUSH_TIMEOUT_MS):
        return self.inner.force_flush(timeout_millis)


def make_provider(service, endpoint):
    exporter = CheckedExporter(OTLPSpanExporter(endpoint=endpoint, insecure=True))
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider, exporter


def kind_of(job):
    if job % 5 == 0:
        return "error"
    if job % 7 == 0:
        return "slow"
    return "normal"


def api_phase(tracer, jobs):
    """Handles POST /orders for each job and enqueues it; returns the queued messages."""
    queued = []
    for job in jobs:
        started = time.time_ns()
        server = tracer.start_span(
            "POST /orders",
            kind=SpanKind.SERVER,
            start_time=started,
            attributes={"http.request.method": "POST", "http.route": "/orders", "job.id": job},
        )
        producer = tracer.start_span(
            "enqueue job",
            context=trace.set_span_in_context(server),
            kind=SpanKind.PRODUCER,
            attributes={"messaging.operation.type": "send", "job.id": job},
        )
        message = {"job_id": job}
        PROPAGATOR.inject(message, context=trace.set_span_in_context(producer))
        producer.end()
        server.end()
        trace_id = format(server.get_span_context().trace_id, "032x")
        queued.append({"job": job, "trace_id": trace_id, "started": started, "message": message})
    return queued


def worker_phase(tracer, queued):
    """Takes each job off the queue and runs it under the context carried in its message."""
    for item in queued:
        job = item["job"]
        kind = kind_of(job)
        parent = PROPAGATOR.extract(item["message"])
        now = time.time_ns()
        consumer = tracer.start_span(
            "process job",
            context=parent,
            kind=SpanKind.CONSUMER,
            start_time=now,
            attributes={"messaging.operation.type": "process", "job.id": job},
        )
        db = tracer.start_span(
            "db query",
            context=trace.set_span_in_context(consumer),
            kind=SpanKind.CLIENT,
            start_time=now,
            attributes={"db.system.name": "postgresql", "db.query.text": "UPDATE orders SET state = $1"},
        )
        if kind == "error":
            db.set_status(Status(StatusCode.ERROR, "deadlock detected"))
        if kind == "slow":
            end = max(item["started"] + SLOW_TRACE_NS, now + 2_000_000)
            db.end(end_time=end - 1_000_000)
            consumer.end(end_time=end)
        else:
            db.end()
            consumer.end()
        got = format(consumer.get_span_context().trace_id, "032x")
        if got != item["trace_id"]:
            raise SystemExit(f"job {job}: worker span joined trace {got}, not {item['trace_id']}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("endpoint", help="OTLP/gRPC endpoint, e.g. http://127.0.0.1:4317")
    parser.add_argument("jobs", nargs="?", type=int, default=20, help="number of jobs (default 20)")
    args = parser.parse_args()
    if args.jobs < 1:
        parser.error("jobs must be at least 1")

    api_provider, api_exporter = make_provider("api", args.endpoint)
    worker_provider, worker_exporter = make_provider("worker", args.endpoint)
    jobs = range(1, args.jobs + 1)

    queued = api_phase(api_provider.get_tracer("async_jobs.api"), jobs)
    flushed = api_provider.force_flush(FLUSH_TIMEOUT_MS)

    time.sleep(QUEUE_DELAY_S)

    worker_phase(worker_provider.get_tracer("async_jobs.worker"), queued)
    flushed = worker_provider.force_flush(FLUSH_TIMEOUT_MS) and flushed

    api_provider.shutdown()
    worker_provider.shutdown()

    report = {
        "jobs": [
            {"job": q["job"], "trace_id": q["trace_id"], "kind": kind_of(q["job"]), "spans": SPANS_PER_JOB}
            for q in queued
        ]
    }
    print(json.dumps(report), flush=True)

    failures = api_exporter.failures + worker_exporter.failures
    if failures or not flushed:
        print(
            f"async_jobs.py: {failures} failed export calls "
            f"(api {api_exporter.calls} calls, worker {worker_exporter.calls} calls), flushed={flushed}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
