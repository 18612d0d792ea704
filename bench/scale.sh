#!/usr/bin/env bash
# Scaling the sampler tier at production size: one front-tier balancer and a tier of samplers
# with `cluster` on, all found through a DNS server (bench/dns_server.py), every sampler keeping
# everything (always_sample, decision_wait 20s, batch processor, default receive limits),
# exporting to a recording backend (tailgate-sink) that writes every span it receives. The load
# generator sends RATE spans/s through the balancer for DURATION; at EVENT_AT the scenario
# changes the tier. Afterwards the script prints, per scenario: spans acknowledged by the
# balancer, delivered (distinct), lost, duplicated, traces split (decided by more than one
# sampler), and the traces each sampler decided (bench/scale_check.py).
#
#   bench/scale.sh [SCENARIO...]   scenarios (default: all six, in this order):
#     join      3 samplers; a 4th joins the DNS answer
#     leave     4 samplers; one gets SIGTERM and leaves the answer
#     leave2    4 samplers; two get SIGTERM and leave the answer at once
#     rolling   3 samplers replaced one at a time with a surge of one: a new one joins, then an
#               old one leaves, three times
#     flap      3 samplers; a 4th joins and leaves within one resolution interval
#     kill      4 samplers; one is killed with SIGKILL: its own buffer is lost, and the script
#               prints what it held at its last scrape (at most 200 ms before the kill)
#
# Environment (all optional):
#   RATE=60000            spans/s through the balancer (20k per sampler with three)
#   DURATION=40           seconds of load
#   EVENT_AT=12           seconds into the load when the tier changes
#   DECISION_WAIT=20s
#   INTERVAL=1s           DNS resolution interval of the balancer and the samplers
#   LOADGEN_ARGS=         extra tailgate-loadgen flags
#   BASE_PORT=24000       ports BASE_PORT.. are used on 127.0.0.1 and on each sampler address
#
# Every process this script starts is stopped when it exits, however it exits. All traffic goes
# to 127.0.0.0/8.
set -euo pipefail

usage() { sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0"; }
case ${1:-} in -h | --help) usage; exit 0 ;; esac

rate=${RATE:-60000}
duration=${DURATION:-40}
event_at=${EVENT_AT:-12}
decision_wait=${DECISION_WAIT:-20s}
interval=${INTERVAL:-1s}
base=${BASE_PORT:-24000}
read -r -a loadgen_args <<<"${LOADGEN_ARGS:-}"
scenarios=("$@")
((${#scenarios[@]})) || scenarios=(join leave leave2 rolling flap kill)

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
cargo build --release --bins
bin=${CARGO_TARGET_DIR:-$repo/target}/release

otlp_port=$base health_port=$((base + 1)) metrics_port=$((base + 2))
lb_port=$((base + 10)) lb_health=$((base + 11)) lb_metrics=$((base + 12))
sink_port=$((base + 20)) dns_port=$((base + 30))
name=samplers.scale.test

workdir=$(mktemp -d "${TMPDIR:-/tmp}/tailgate-scale.XXXXXX")
pids=()
declare -A sampler_pid

alive() { kill -0 "$1" 2>/dev/null; }

stop() { # pid: SIGTERM, up to 90 s to exit, then SIGKILL
  local pid=$1
  alive "$pid" || { wait "$pid" 2>/dev/null || true; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 900); do alive "$pid" || break; sleep 0.1; done
  alive "$pid" && kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local pid
  for pid in ${pids[@]+"${pids[@]}"}; do alive "$pid" && kill -KILL "$pid" 2>/dev/null; done
  wait 2>/dev/null || true
  rm -rf "$workdir"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

fail() { echo "scale.sh: $*" >&2; exit 1; }

wait_http() { # url
  for _ in $(seq 300); do
    curl -sf -o /dev/null "$1" && return 0
    sleep 0.1
  done
  fail "$1 never answered"
}

metric() { # url name -> value summed over series (0 if absent)
  curl -sf "$1" | awk -v n="$2" '$1 == n || index($1, n "{") == 1 { s += $2 } END { print s + 0 }'
}

set_dns() { # last octets...
  : >"$workdir/dns.answer.new"
  local last
  for last in "$@"; do echo "127.0.0.$last" >>"$workdir/dns.answer.new"; done
  mv "$workdir/dns.answer.new" "$workdir/dns.answer"
}

resolver() {
  cat <<EOF
dns:
  hostname: $name
  port: "$otlp_port"
  interval: $interval
  nameserver: 127.0.0.1:$dns_port
EOF
}

start_sampler() { # last octet
  local last=$1 host=127.0.0.$1
  cat >"$workdir/sampler-$last.yaml" <<EOF
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: $host:$otlp_port
processors:
  tail_sampling:
    decision_wait: $decision_wait
    num_traces: 2000000
    policies:
      - name: all
        type: always_sample
    cluster:
      endpoint: $host:$otlp_port
      resolver:
$(resolver | sed 's/^/        /')
  batch:
exporters:
  otlp:
    endpoint: 127.0.0.1:$sink_port
    tls: {insecure: true}
    compression: none
    headers: {x-sampler: "$host"}
extensions:
  health_check:
    endpoint: $host:$health_port
service:
  extensions: [health_check]
  shutdown_grace_period: 60s
  telemetry:
    logs:
      level: info
    metrics:
      address: $host:$metrics_port
  pipelines:
    traces:
      receivers: [otlp]
      processors: [tail_sampling, batch]
      exporters: [otlp]
EOF
  "$bin/tailgate" --config "$workdir/sampler-$last.yaml" >"$workdir/sampler-$last.log" 2>&1 &
  sampler_pid[$last]=$!
  pids+=($!)
  wait_http "http://$host:$health_port/"
}

sampler_metrics() { echo "http://127.0.0.$1:$metrics_port/metrics"; }

start_balancer() {
  cat >"$workdir/balancer.yaml" <<EOF
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:$lb_port
exporters:
  loadbalancing:
    protocol:
      otlp:
        tls: {insecure: true}
        compression: none
        retry_on_failure: {initial_interval: 100ms, max_interval: 1s, max_elapsed_time: 0s}
    resolver:
$(resolver | sed 's/^/      /')
extensions:
  health_check:
    endpoint: 127.0.0.1:$lb_health
service:
  extensions: [health_check]
  telemetry:
    metrics:
      address: 127.0.0.1:$lb_metrics
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [loadbalancing]
EOF
  "$bin/tailgate" --config "$workdir/balancer.yaml" >"$workdir/balancer.log" 2>&1 &
  balancer_pid=$!
  pids+=($!)
  wait_http "http://127.0.0.1:$lb_health/"
}

wait_backends() { # n
  for _ in $(seq 600); do
    [[ $(metric "http://127.0.0.1:$lb_metrics/metrics" otelcol_loadbalancer_num_backends) == "$1" ]] && return 0
    sleep 0.1
  done
  fail "the balancer never saw $1 samplers"
}

leave() { # last octets...: out of DNS and SIGTERM at once, then wait for them to exit
  local keep=() last
  for last in "${current[@]}"; do
    [[ " $* " == *" $last "* ]] || keep+=("$last")
  done
  current=("${keep[@]}")
  set_dns "${current[@]}"
  for last in "$@"; do kill -TERM "${sampler_pid[$last]}"; done
  for last in "$@"; do wait "${sampler_pid[$last]}" || echo "sampler $last exited with $?" >&2; done
}

join() { # last octet
  start_sampler "$1"
  current+=("$1")
  set_dns "${current[@]}"
}

# The scenario's change to the tier, at EVENT_AT.
event() {
  case $1 in
    join) join 5 ;;
    leave) leave 3 ;;
    leave2) leave 3 4 ;;
    rolling)
      local old new=5
      for old in 2 3 4; do
        join $new
        sleep 3
        leave "$old"
        new=$((new + 1))
      done
      ;;
    flap)
      start_sampler 5
      set_dns "${current[@]}" 5
      sleep 0.4
      set_dns "${current[@]}"
      kill -TERM "${sampler_pid[5]}"
      wait "${sampler_pid[5]}" || true
      ;;
    kill)
      # Scrape the victim every 200 ms until the kill, so what it held is known.
      local held=0
      for _ in $(seq 5); do held=$(metric "$(sampler_metrics 3)" tailgate_buffered_spans); sleep 0.2; done
      kill -KILL "${sampler_pid[3]}"
      wait "${sampler_pid[3]}" 2>/dev/null || true
      current=(2 4 5)
      set_dns "${current[@]}"
      echo "$held" >"$workdir/killed_held"
      ;;
  esac
}

run_scenario() {
  local scenario=$1 first
  case $scenario in
    join | rolling | flap) first=(2 3 4) ;;
    leave | leave2 | kill) first=(2 3 4 5) ;;
    *) fail "unknown scenario '$scenario'" ;;
  esac
  rm -f "$workdir"/*.log "$workdir/records" "$workdir/records.senders" "$workdir/killed_held"
  current=("${first[@]}")
  set_dns "${current[@]}"
  python3 "$repo/bench/dns_server.py" "$dns_port" "$name" "$workdir/dns.answer" &
  local dns_pid=$!
  pids+=($dns_pid)
  "$bin/tailgate-sink" --listen "127.0.0.1:$sink_port" --out "$workdir/records" \
    >"$workdir/sink.log" 2>&1 &
  local sink_pid=$!
  pids+=($sink_pid)
  local last
  for last in "${first[@]}"; do start_sampler "$last"; done
  start_balancer
  wait_backends "${#first[@]}"

  "$bin/tailgate-loadgen" --endpoint "http://127.0.0.1:$lb_port" --rate "$rate" \
    --duration "${duration}s" --concurrency 8 ${loadgen_args[@]+"${loadgen_args[@]}"} \
    >"$workdir/loadgen.json" 2>"$workdir/loadgen.log" &
  local loadgen_pid=$!
  pids+=($loadgen_pid)
  sleep "$event_at"
  event "$scenario"
  wait "$loadgen_pid" || fail "$scenario: the load generator failed: $(cat "$workdir/loadgen.log")"
  local report acknowledged failures
  report=$(<"$workdir/loadgen.json")
  acknowledged=$(sed -n 's/.*"spans_sent":\([0-9]*\).*/\1/p' <<<"$report")
  failures=$(sed -n 's/.*"failures":\([0-9]*\).*/\1/p' <<<"$report")
  # Every trace is due DECISION_WAIT after its first span: wait for that, then for the
  # backend to stop receiving.
  sleep "${decision_wait%s}"
  local before=-1 now
  while now=$(stat -c %s "$workdir/records" 2>/dev/null || echo 0); [[ $now != "$before" ]]; do
    before=$now
    sleep 3
  done
  # Stop the tier: out of DNS first, so no sampler waits out its leave period.
  set_dns
  for last in "${current[@]}"; do kill -TERM "${sampler_pid[$last]}" 2>/dev/null || true; done
  for last in "${current[@]}"; do stop "${sampler_pid[$last]}"; done
  stop "$balancer_pid"
  stop "$sink_pid"
  kill "$dns_pid" 2>/dev/null || true
  wait "$dns_pid" 2>/dev/null || true
  local checked
  checked=$(python3 "$repo/bench/scale_check.py" "$workdir/records" 8 "$acknowledged")
  local held=
  [[ -f $workdir/killed_held ]] && held=", \"killed_sampler_held\": $(<"$workdir/killed_held")"
  echo "{\"scenario\": \"$scenario\", \"loadgen_failures\": $failures${held}, \"check\": $checked}"
  grep -h -E "WARN|ERROR" "$workdir"/sampler-*.log "$workdir/balancer.log" 2>/dev/null |
    sed 's/\x1b\[[0-9;]*m//g; s/^[^ ]* *//' | cut -c1-160 | sort | uniq -c | sort -rn | head -5 >&2 || true
}

for scenario in "${scenarios[@]}"; do
  run_scenario "$scenario"
done
