#!/usr/bin/env node
// Async-job traces from the OpenTelemetry JS SDK: an API enqueues a job, a worker runs it later.
//
// Usage: node async_jobs.js PROTOCOL ENDPOINT [JOBS]
//
// PROTOCOL picks the SDK's trace exporter: `http/json` (@opentelemetry/exporter-trace-otlp-http),
// `http/protobuf` (@opentelemetry/exporter-trace-otlp-proto) or `grpc`
// (@opentelemetry/exporter-trace-otlp-grpc). ENDPOINT is the OTLP/HTTP base URL
// (`http://127.0.0.1:4318`, `/v1/traces` is appended) or the OTLP/gRPC endpoint
// (`http://127.0.0.1:4317`). JOBS defaults to 20.
//
// The same scenario as tests/clients/async_jobs.py, in the same shape. Two tracer providers stand
// for two services on two hosts, each with its own resource (`service.name` = `api` and
// `worker`) and its own exporter:
//
// 1. API phase, for every job: a `POST /orders` SERVER span and its child `enqueue job` PRODUCER
//    span; the producer's W3C `traceparent` is injected into the job "message" (an object). Both
//    spans end and the API provider is force-flushed, so the API half of every trace is exported
//    first.
// 2. A 300 ms pause: the job sits in the queue (it models the scenario; it is not a
//    synchronization point).
// 3. Worker phase, for every job: the context is extracted from the message, a `process job`
//    CONSUMER span starts under it, with a `db query` CLIENT child. The worker provider is
//    force-flushed, so the worker half arrives in separate export calls, after the API half.
//
// Kinds of job (1-based): `error` every 5th (`db query` has status ERROR); `slow` every 7th that
// is not an error (`process job` ends 2.5 s after `POST /orders` started, by explicit end times,
// no real waiting); `normal` the rest.
//
// At the end one JSON line goes to stdout:
// {"jobs": [{"job": 1, "trace_id": "<32 hex>", "kind": "normal", "spans": 4}, ...]}
// The exit status is 0 only if every export call succeeded and every flush completed.

'use strict';

const api = require('@opentelemetry/api');
const { W3CTraceContextPropagator, ExportResultCode } = require('@opentelemetry/core');
const { resourceFromAttributes } = require('@opentelemetry/resources');
const { BasicTracerProvider, BatchSpanProcessor } = require('@opentelemetry/sdk-trace-base');

const QUEUE_DELAY_MS = 300;
const SLOW_TRACE_MS = 2500;
const SPANS_PER_JOB = 4;

const propagator = new W3CTraceContextPropagator();

function makeExporter(protocol, endpoint) {
  switch (protocol) {
    case 'http/json': {
      const { OTLPTraceExporter } = require('@opentelemetry/exporter-trace-otlp-http');
      return new OTLPTraceExporter({ url: `${endpoint}/v1/traces` });
    }
    case 'http/protobuf': {
      const { OTLPTraceExporter } = require('@opentelemetry/exporter-trace-otlp-proto');
      return new OTLPTraceExporter({ url: `${endpoint}/v1/traces` });
    }
    case 'grpc': {
      // An `http://` URL makes the gRPC exporter use a plaintext channel.
      const { OTLPTraceExporter } = require('@opentelemetry/exporter-trace-otlp-grpc');
      return new OTLPTraceExporter({ url: endpoint });
    }
    default:
      throw new Error(`unknown protocol ${protocol}; use http/json, http/protobuf or grpc`);
  }
}

// Wraps the SDK's exporter to count export calls and failures, so the exit status tells.
class CheckedExporter {
  constructor(inner) {
    this.inner = inner;
    this.calls = 0;
    this.failures = [];
  }
  export(spans, done) {
    this.inner.export(spans, (result) => {
      this.calls += 1;
      if (result.code !== ExportResultCode.SUCCESS) {
        this.failures.push(String(result.error));
      }
      done(result);
    });
  }
  forceFlush() {
    return this.inner.forceFlush();
  }
  shutdown() {
    return this.inner.shutdown();
  }
}

function makeProvider(service, protocol, endpoint) {
  const exporter = new CheckedExporter(makeExporter(protocol, endpoint));
  const provider = new BasicTracerProvider({
    resource: resourceFromAttributes({ 'service.name': service }),
    spanProcessors: [new BatchSpanProcessor(exporter)],
  });
  return { provider, exporter };
}

function kindOf(job) {
  if (job % 5 === 0) return 'error';
  if (job % 7 === 0) return 'slow';
  return 'normal';
}

// Handles POST /orders for each job and enqueues it; returns the queued messages.
function apiPhase(tracer, jobs) {
  const queued = [];
  for (const job of jobs) {
    const started = Date.now();
    const server = tracer.startSpan('POST /orders', {
      kind: api.SpanKind.SERVER,
      startTime: started,
      attributes: { 'http.request.method': 'POST', 'http.route': '/orders', 'job.id': job },
    });
    const producer = tracer.startSpan(
      'enqueue job',
      { kind: api.SpanKind.PRODUCER, attributes: { 'messaging.operation.type': 'send', 'job.id': job } },
      api.trace.setSpan(api.ROOT_CONTEXT, server),
    );
    const message = { job_id: job };
    propagator.inject(api.trace.setSpan(api.ROOT_CONTEXT, producer), message, api.defaultTextMapSetter);
    producer.end();
    server.end();
    queued.push({ job, traceId: server.spanContext().traceId, started, message });
  }
  return queued;
}

// Takes each job off the queue and runs it under the context carried in its message.
function workerPhase(tracer, queued) {
  for (const item of queued) {
    const kind = kindOf(item.job);
    const parent = propagator.extract(api.ROOT_CONTEXT, item.message, api.defaultTextMapGetter);
    const now = Date.now();
    const consumer = tracer.startSpan(
      'process job',
      { kind: api.SpanKind.CONSUMER, startTime: now, attributes: { 'messaging.operation.type': 'process', 'job.id': item.job } },
      parent,
    );
    const db = tracer.startSpan(
      'db query',
      {
        kind: api.SpanKind.CLIENT,
        startTime: now,
        attributes: { 'db.system.name': 'postgresql', 'db.query.text': 'UPDATE orders SET state = $1' },
      },
      api.trace.setSpan(api.ROOT_CONTEXT, consumer),
    );
    if (kind === 'error') {
      db.setStatus({ code: api.SpanStatusCode.ERROR, message: 'deadlock detected' });
    }
    if (kind === 'slow') {
      const end = Math.max(item.started + SLOW_TRACE_MS, now + 2);
      db.end(end - 1);
      consumer.end(end);
    } else {
      db.end();
      consumer.end();
    }
    const got = consumer.spanContext().traceId;
    if (got !== item.traceId) {
      throw new Error(`job ${item.job}: worker span joined trace ${got}, not ${item.traceId}`);
    }
  }
}

async function main() {
  const [protocol, endpoint, jobsArg] = process.argv.slice(2);
  if (!protocol || !endpoint) {
    console.error('usage: node async_jobs.js PROTOCOL ENDPOINT [JOBS]');
    return 2;
  }
  const count = jobsArg === undefined ? 20 : Number(jobsArg);
  if (!Number.isInteger(count) || count < 1) {
    console.error('JOBS must be a whole number of at least 1');
    return 2;
  }
  const jobs = Array.from({ length: count }, (_, i) => i + 1);
  const apiSide = makeProvider('api', protocol, endpoint);
  const workerSide = makeProvider('worker', protocol, endpoint);

  const queued = apiPhase(apiSide.provider.getTracer('async_jobs.api'), jobs);
  await apiSide.provider.forceFlush();

  await new Promise((resolve) => setTimeout(resolve, QUEUE_DELAY_MS));

  workerPhase(workerSide.provider.getTracer('async_jobs.worker'), queued);
  await workerSide.provider.forceFlush();

  await apiSide.provider.shutdown();
  await workerSide.provider.shutdown();

  const report = {
    jobs: queued.map((q) => ({ job: q.job, trace_id: q.traceId, kind: kindOf(q.job), spans: SPANS_PER_JOB })),
  };
  console.log(JSON.stringify(report));

  const failures = [...apiSide.exporter.failures, ...workerSide.exporter.failures];
  const calls = apiSide.exporter.calls + workerSide.exporter.calls;
  if (failures.length > 0 || calls === 0) {
    console.error(`async_jobs.js: ${failures.length} of ${calls} export calls failed: ${failures.join('; ')}`);
    return 1;
  }
  return 0;
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (error) => {
    console.error(error && error.stack ? error.stack : error);
    process.exitCode = 1;
  },
);
