#!/usr/bin/env bash
# Ingest latency under a regex- and OTTL-heavy policy set: a release `tailgate` sampler
# (decision_wait 1s, the `debug` exporter at `basic`, so no sink is measured) with twelve
# policies that walk every span's attributes (string_attribute regexes that never match, so every
# value is tried; OTTL conditions with IsMatch), driven by `tailgate-loadgen` at RATE spans/s.
# The load generator reports each acknowledged request's latency; the p99 is what a client
# waits while the deciders run those policies. With policies run under a shard lock, a request
# whose traces fall in a shard being decided waits for the whole decision round.
#
#   bench/latency.sh                 the build of this checkout
#   BEFORE=path/to/tailgate bench/latency.sh
#                                    also another build, runs interleaved (after, before, after,
#                                    before...) so both see the same machine
#
# Environment (all optional):
#   RATE=200000    spans/s
#   DURATION=20s   load per run
#   RUNS=2         runs per binary
#   CONCURRENCY=8  requests in flight
#   PORT=15317     OTLP/gRPC port (127.0.0.1)
#
# Prints one line per run: binary, spans/s achieved, latency p50/p99/p999/max (ms). Every process
# it starts is stopped when it exits.
set -euo pipefail

rate=${RATE:-200000}
duration=${DURATION:-20s}
runs=${RUNS:-2}
concurrency=${CONCURRENCY:-8}
port=${PORT:-15317}

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
cargo build --release --bins
bin=${CARGO_TARGET_DIR:-$repo/target}/release

workdir=$(mktemp -d "${TMPDIR:-/tmp}/tailgate-latency.XXXXXX")
gateway_pid=
cleanup() {
  [ -n "$gateway_pid" ] && kill "$gateway_pid" 2> /dev/null && wait "$gateway_pid" 2> /dev/null
  rm -rf "$workdir"
}
trap cleanup EXIT

cat > "$workdir/config.yaml" << EOF
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:$port
processors:
  tail_sampling:
    decision_wait: 1s
    num_traces: 1000000
    policies:
      - {name: errors, type: status_code, status_code: {status_codes: [ERROR]}}
      - {name: re-route, type: string_attribute, string_attribute: {key: http.route, values: ['^/internal/.*/debug\$', '.*admin.*panel.*'], enabled_regex_matching: true}}
      - {name: re-target, type: string_attribute, string_attribute: {key: http.target, values: ['.*[?&]trace=(on|1|yes)(&.*)?\$'], enabled_regex_matching: true}}
      - {name: re-agent, type: string_attribute, string_attribute: {key: user_agent.original, values: ['.*(curl|wget|python-requests)/[0-9.]+\$'], enabled_regex_matching: true}}
      - {name: re-statement, type: string_attribute, string_attribute: {key: db.statement, values: ['.*(?i:drop|truncate)\\s+table.*'], enabled_regex_matching: true}}
      - {name: re-host, type: string_attribute, string_attribute: {key: net.host.name, values: ['.*\\.canary\\..*'], enabled_regex_matching: true}}
      - {name: re-client, type: string_attribute, string_attribute: {key: client.address, values: ['^192\\.168\\..*'], enabled_regex_matching: true}}
      - name: ottl-slow-db
        type: ottl_condition
        ottl_condition:
          span: ['attributes["db.system"] == "oracle" and end_time_unix_nano - start_time_unix_nano > 5000000000']
      - name: ottl-match
        type: ottl_condition
        ottl_condition:
          span: ['IsMatch(attributes["http.target"], ".*debug=true.*")', 'IsMatch(name, "^(PATCH|DELETE) /admin.*")']
      - name: ottl-status
        type: ottl_condition
        ottl_condition:
          span: ['attributes["http.status_code"] >= 599', 'status.message == "quota"']
      - name: ottl-events
        type: ottl_condition
        ottl_condition:
          spanevent: ['name == "panic"']
      - {name: baseline, type: probabilistic, probabilistic: {sampling_percentage: 1}}
exporters:
  debug:
    verbosity: basic
service:
  telemetry:
    logs:
      level: warn
  pipelines:
    traces:
      receivers: [otlp]
      processors: [tail_sampling]
      exporters: [debug]
EOF

run_one() {
  local label=$1 binary=$2
  "$binary" --config "$workdir/config.yaml" > "$workdir/gateway.log" 2>&1 &
  gateway_pid=$!
  for _ in $(seq 100); do
    (exec 3<> "/dev/tcp/127.0.0.1/$port") 2> /dev/null && break
    sleep 0.1
  done
  local report
  report=$("$bin/tailgate-loadgen" --endpoint "http://127.0.0.1:$port" --rate "$rate" \
    --duration "$duration" --concurrency "$concurrency" --seed 7)
  kill "$gateway_pid"
  wait "$gateway_pid" 2> /dev/null || true
  gateway_pid=
  python3 - "$label" "$report" << 'PY'
import json, sys
label, report = sys.argv[1], json.loads(sys.argv[2])
l = report["latency_ms"]
print(f"{label:8} spans/s {report['spans_per_s']:>8.0f}  failures {report['failures']}  "
      f"latency ms p50 {l['p50']:>7.2f}  p99 {l['p99']:>7.2f}  p999 {l['p999']:>7.2f}  max {l['max']:>7.2f}")
PY
}

for _ in $(seq "$runs"); do
  run_one after "$bin/tailgate"
  if [ -n "${BEFORE:-}" ]; then
    run_one before "$BEFORE"
  fi
done
