#!/usr/bin/env bash
# End-to-end benchmark of the sampler tier: a release `tailgate` with an OTLP/gRPC receiver, the
# `tail_sampling` processor (errors + 10 % probabilistic) and the `debug` exporter (so no disk or
# network sink is measured), driven by `tailgate-loadgen` over 127.0.0.1. The gateway and the
# load generator are pinned to different CPUs so the gateway's CPU time is its own.
#
#   bench/sampler.sh          CPU mode: decision_wait 1s; reports the gateway's CPU-seconds per
#                             million spans (budget: under 1), spans/s and peak RSS.
#   bench/sampler.sh memory   memory mode: decision_wait 10m, so every span stays buffered; reports
#                             resident bytes per buffered span and its ratio to the average encoded
#                             span size (budget: under 1.3; 0.5 with BUFFER_COMPRESSION=zstd), and
#                             the gateway's CPU while ingesting.
#   bench/sampler.sh lateness decision timing: sends at RATE spans/s for DURATION with decision_wait
#                             1s and reads tailgate_decision_lateness_seconds from /metrics halfway
#                             and at the end (budget: within 50 ms of the deadline).
#   bench/sampler.sh overload sends SPANS (default 16M) at RATE (default 13M spans/s, about 10x
#                             what the gateway takes) with CONCURRENCY requests in flight,
#                             decision_wait 5s and
#                             max_buffered_bytes = MAX_BUFFERED_BYTES (OVERFLOW=block adds
#                             block_on_overflow); kept traces go to a file exporter and are checked
#                             whole (bench/check_traces.py). Reports peak RSS against the limit,
#                             the client's retries and failures, throughput and whole traces.
#
# Environment (all optional):
#   SPANS=2000000         spans to send (cpu and memory modes; overload: 16777216)
#   WARMUP_SPANS=0        cpu mode: spans sent first and not measured. A gateway started empty
#                         grows its buffer to a decision_wait of traffic (faulting in every page of
#                         it) once in its life; a warm-up of a few seconds of load measures the
#                         steady state a long-running gateway is in instead
#   NUM_TRACES=200000     cpu mode's num_traces. One-span traces at saturation (~650k traces/s)
#                         outnumber it, so every trace is decided early, at ingest
#   BUFFER_COMPRESSION=none  none or zstd (buffer_compression)
#   RATE=                 spans/s (lateness: 200000; overload: 13000000)
#   DURATION=20s          lateness mode
#   CONCURRENCY=64        overload mode's requests in flight
#   MAX_BUFFERED_BYTES=268435456  overload mode's limit (256 MiB)
#   OVERFLOW=decide       overload mode: decide (oldest traces decided early) or block
#   MEMORY_LIMIT_MIB=     overload mode: bound memory with the memory_limiter processor
#                         (limit_mib this, spike_limit_mib a fifth, check_interval 100ms) instead
#                         of max_buffered_bytes; the peak RSS is reported against the limit
#   PORT=14317            OTLP/gRPC port the gateway listens on (127.0.0.1)
#   METRICS_PORT=18888    the gateway's own metrics port (127.0.0.1)
#   GATEWAY_CPU=1         CPU the gateway is pinned to
#   LOADGEN_CPU=0         CPU the load generator is pinned to
#   GATEWAY_BIN=          the tailgate binary to measure (default: this checkout's release build)
#   LOADGEN_ARGS=         extra tailgate-loadgen flags, e.g. "--compression gzip --spans-per-trace 20"
#
# Every process this script starts is stopped when it exits, however it exits.
set -euo pipefail

usage() { sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0"; }

mode=${1:-cpu}
case $mode in
  cpu | memory | lateness | overload) ;;
  -h | --help) usage; exit 0 ;;
  *) echo "sampler.sh: unknown mode '$mode' (expected cpu, memory, lateness or overload)" >&2; exit 2 ;;
esac

spans=${SPANS:-2000000}
port=${PORT:-14317}
metrics_port=${METRICS_PORT:-18888}
gateway_cpu=${GATEWAY_CPU:-1}
loadgen_cpu=${LOADGEN_CPU:-0}
read -r -a loadgen_args <<<"${LOADGEN_ARGS:-}"

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
cargo build --release --bins
bin_dir=${CARGO_TARGET_DIR:-$repo/target}/release
gateway_bin=${GATEWAY_BIN:-$bin_dir/tailgate}
loadgen_bin=$bin_dir/tailgate-loadgen

workdir=$(mktemp -d "${TMPDIR:-/tmp}/tailgate-bench.XXXXXX")
gateway_pid=
loadgen_pid=

# --- process handling -----------------------------------------------------------------------

# True while the process exists and has not exited (an exited child stays a zombie until waited
# for, and `kill -0` succeeds on zombies, so look at its state instead).
alive() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [[ ${stat%% *} != Z ]]
}

# SIGTERM, then up to 60 s for a graceful shutdown, then SIGKILL. Prints nothing on a clean stop.
stop_gateway() {
  [[ -n $gateway_pid ]] || return 0
  local pid=$gateway_pid status=0
  gateway_pid=
  if ! alive "$pid"; then
    wait "$pid" 2>/dev/null || true # it already exited, and whoever noticed said so
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 600); do
    alive "$pid" || break
    sleep 0.1
  done
  if alive "$pid"; then
    echo "sampler.sh: gateway still running 60 s after SIGTERM; killing it" >&2
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || status=$?
  if ((status != 0)); then
    echo "sampler.sh: gateway exited with status $status after SIGTERM; log tail:" >&2
    tail -n 20 "$workdir/gateway.log" >&2 || true
  fi
}

cleanup() {
  if [[ -n $loadgen_pid ]]; then
    kill -TERM "$loadgen_pid" 2>/dev/null || true
    wait "$loadgen_pid" 2>/dev/null || true
  fi
  stop_gateway
  rm -rf "$workdir"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

fail() {
  echo "sampler.sh: $*" >&2
  if [[ -s $workdir/gateway.log ]]; then
    echo "--- gateway log (last 30 lines) ---" >&2
    tail -n 30 "$workdir/gateway.log" >&2
  fi
  exit 1
}

# Pin to a CPU when there are at least two and taskset exists; otherwise run unpinned.
pin_gateway=()
pin_loadgen=()
if command -v taskset >/dev/null && (($(nproc) >= 2)); then
  pin_gateway=(taskset -c "$gateway_cpu")
  pin_loadgen=(taskset -c "$loadgen_cpu")
else
  echo "sampler.sh: fewer than 2 CPUs or no taskset; running unpinned, CPU numbers include contention" >&2
fi

port_open() { (: <"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# --- gateway --------------------------------------------------------------------------------

compression=${BUFFER_COMPRESSION:-none}

# decision_wait num_traces [extra tail_sampling lines] [exporter block]
write_config() {
  local exporter=${4:-"  debug:
    verbosity: basic"}
  local name=${exporter%%:*}
  name=${name// /}
  cat >"$workdir/config.yaml" <<EOF
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:$port
processors:
${memory_limiter_block:-}
  tail_sampling:
    decision_wait: $1
    num_traces: $2
    buffer_compression: $compression
${3:-}
    policies:
      - name: errors
        type: status_code
        status_code: {status_codes: [ERROR]}
      - name: baseline
        type: probabilistic
        probabilistic: {sampling_percentage: 10}
exporters:
$exporter
service:
  telemetry:
    metrics:
      address: 127.0.0.1:$metrics_port
  pipelines:
    traces:
      receivers: [otlp]
      processors: [${memory_limiter_block:+memory_limiter, }tail_sampling]
      exporters: [$name]
EOF
}

start_gateway() {
  for p in "$port" "$metrics_port"; do
    ! port_open "$p" || fail "127.0.0.1:$p is already in use; set PORT / METRICS_PORT"
  done
  # taskset execs the gateway, so $! is the gateway's own pid.
  ${pin_gateway[@]+"${pin_gateway[@]}"} "$gateway_bin" --config "$workdir/config.yaml" \
    >"$workdir/gateway.log" 2>&1 &
  gateway_pid=$!
  for _ in $(seq 300); do
    alive "$gateway_pid" || fail "gateway exited during startup"
    if port_open "$port"; then
      return 0
    fi
    sleep 0.1
  done
  fail "gateway did not listen on 127.0.0.1:$port within 30 s"
}

# utime + stime of the whole process (all threads), in clock ticks.
cpu_ticks() {
  local stat fields
  stat=$(<"/proc/$gateway_pid/stat")
  stat=${stat##*) } # fields from 3 (state) on; utime and stime are fields 14 and 15
  read -r -a fields <<<"$stat"
  echo $((fields[11] + fields[12]))
}

status_kib() { awk -v key="$1:" '$1 == key { print $2 }' "/proc/$gateway_pid/status"; }

# --- load -----------------------------------------------------------------------------------

# Sends the spans and leaves the loadgen's JSON line in $result. The loadgen runs in the
# background and is waited for, so a signal to this script interrupts the wait and the EXIT trap
# stops the loadgen too. LOADGEN_ARGS come last and so can override --total and --rate.
run_loadgen() {
  local status=0 amount=(--total "$spans" --rate 0)
  (($# == 0)) || amount=("$@")
  ${pin_loadgen[@]+"${pin_loadgen[@]}"} "$loadgen_bin" \
    --endpoint "http://127.0.0.1:$port" "${amount[@]}" \
    ${loadgen_args[@]+"${loadgen_args[@]}"} >"$workdir/loadgen.json" &
  loadgen_pid=$!
  wait "$loadgen_pid" || status=$?
  loadgen_pid=
  result=$(<"$workdir/loadgen.json")
  ((status == 0)) || fail "loadgen failed (status $status)${result:+: $result}"
  alive "$gateway_pid" || fail "gateway exited while under load"
}

# json_num KEY JSON: a number from the loadgen's flat JSON line.
json_num() { sed -n "s/.*\"$1\":\([-0-9.eE+]*\).*/\1/p" <<<"$2"; }

calc() { awk "BEGIN { printf \"$1\", $2 }"; }

# --- modes ----------------------------------------------------------------------------------

cpu_mode() {
  write_config 1s "${NUM_TRACES:-200000}"
  start_gateway
  local ticks_before ticks_after hz result sent rate hwm cpu_s per_million
  hz=$(getconf CLK_TCK)
  local warmup=${WARMUP_SPANS:-0}
  if ((warmup > 0)); then
    # Its own run (a fresh seed, so new trace IDs); the measured run starts right after, while
    # the buffer still holds the warm-up's last decision_wait.
    run_loadgen --total "$warmup" --rate 0
  fi
  ticks_before=$(cpu_ticks)
  run_loadgen
  # Let the last traces reach decision_wait and go through the policies and the exporter.
  sleep 3
  alive "$gateway_pid" || fail "gateway exited before the measurement was read"
  ticks_after=$(cpu_ticks)
  hwm=$(status_kib VmHWM)
  stop_gateway

  sent=$(json_num spans_sent "$result")
  rate=$(json_num spans_per_s "$result")
  cpu_s=$(calc %.3f "($ticks_after - $ticks_before) / $hz")
  per_million=$(calc %.3f "$cpu_s / $sent * 1000000")
  echo "loadgen: $result"
  echo "sampler tier, CPU mode: $sent spans after a warm-up of $warmup, decision_wait 1s, errors + 10% probabilistic, debug exporter"
  echo "  throughput           $(calc %.0f "$rate") spans/s"
  echo "  gateway CPU          $cpu_s s = $per_million CPU-s per million spans (budget < 1)"
  echo "  gateway peak RSS     $(calc %.1f "$hwm / 1024") MiB"
  echo "{\"mode\":\"cpu\",\"warmup_spans\":$warmup,\"spans\":$sent,\"spans_per_s\":$rate,\"cpu_s\":$cpu_s,\"cpu_s_per_million_spans\":$per_million,\"peak_rss_bytes\":$((hwm * 1024))}"
}

memory_mode() {
  local span_bytes rss_before rss_after hwm result sent per_span ratio hz ticks_before ticks_after
  local cpu_s budget=1.3
  [[ $compression == none ]] || budget=0.5
  span_bytes=$("$loadgen_bin" --print-span-size ${loadgen_args[@]+"${loadgen_args[@]}"})
  # num_traces = spans: never fewer than the traces sent, so nothing is evicted.
  write_config 10m "$spans"
  start_gateway
  sleep 1
  hz=$(getconf CLK_TCK)
  rss_before=$(status_kib VmRSS)
  ticks_before=$(cpu_ticks)
  run_loadgen
  # Let requests still being handed from the receiver to the buffer land.
  sleep 2
  alive "$gateway_pid" || fail "gateway exited before the measurement was read"
  rss_after=$(status_kib VmRSS)
  hwm=$(status_kib VmHWM)
  ticks_after=$(cpu_ticks)
  stop_gateway

  sent=$(json_num spans_sent "$result")
  per_span=$(calc %.1f "($rss_after - $rss_before) * 1024 / $sent")
  ratio=$(calc %.3f "$per_span / $span_bytes")
  cpu_s=$(calc %.3f "($ticks_after - $ticks_before) / $hz")
  echo "loadgen: $result"
  echo "sampler tier, memory mode: $sent spans buffered (decision_wait 10m, buffer_compression $compression), average encoded span $span_bytes B"
  echo "  RSS before / after   $(calc %.1f "$rss_before / 1024") / $(calc %.1f "$rss_after / 1024") MiB (peak $(calc %.1f "$hwm / 1024") MiB)"
  echo "  resident per span    $per_span B = $ratio x the encoded span (budget < $budget)"
  echo "  ingest CPU           $cpu_s s = $(calc %.3f "$cpu_s / $sent * 1000000") CPU-s per million spans"
  echo "{\"mode\":\"memory\",\"compression\":\"$compression\",\"spans\":$sent,\"avg_span_bytes\":$span_bytes,\"rss_before_bytes\":$((rss_before * 1024)),\"rss_after_bytes\":$((rss_after * 1024)),\"resident_bytes_per_span\":$per_span,\"ratio_to_encoded\":$ratio,\"ingest_cpu_s_per_million_spans\":$(calc %.3f "$cpu_s / $sent * 1000000")}"
}

# Starts the loadgen in the background with the given flags (its JSON line to loadgen.json).
start_loadgen() {
  ${pin_loadgen[@]+"${pin_loadgen[@]}"} "$loadgen_bin" --endpoint "http://127.0.0.1:$port" "$@" \
    ${loadgen_args[@]+"${loadgen_args[@]}"} >"$workdir/loadgen.json" &
  loadgen_pid=$!
}

# Waits for the background loadgen; sets $result and $loadgen_status.
finish_loadgen() {
  loadgen_status=0
  wait "$loadgen_pid" || loadgen_status=$?
  loadgen_pid=
  result=$(<"$workdir/loadgen.json")
}

# The lateness histogram's buckets as "le count" lines.
lateness_buckets() {
  curl -sf "http://127.0.0.1:$metrics_port/metrics" |
    sed -n 's/^tailgate_decision_lateness_seconds_bucket{le="\([^"]*\)"} \([0-9.e+]*\)$/\1 \2/p'
}

# Summarises bucket lines: decisions, the share within 50 ms, the bucket holding p50/p99/max.
lateness_summary() {
  awk '{ le[NR] = $1; n[NR] = $2 } END {
    total = n[NR]; if (total == 0) { print "no decisions yet"; exit }
    for (i = 1; i <= NR; i++) {
      if (le[i] == "0.05") within = n[i]
      if (p50 == "" && n[i] >= total * 0.5) p50 = le[i]
      if (p99 == "" && n[i] >= total * 0.99) p99 = le[i]
      if (pmax == "" && n[i] >= total) pmax = le[i]
    }
    printf "%d decisions, %.4f%% within 50 ms; p50 <= %s s, p99 <= %s s, max <= %s s\n",
      total, within / total * 100, p50, p99, pmax
  }'
}

lateness_mode() {
  local rate=${RATE:-200000} duration=${DURATION:-20s} half end
  command -v curl >/dev/null || fail "lateness mode needs curl"
  write_config 1s 1000000
  start_gateway
  half=$(awk -v d="${duration%s}" 'BEGIN { print d / 2 }')
  start_loadgen --rate "$rate" --duration "$duration"
  sleep "$half"
  echo "halfway: $(lateness_buckets | lateness_summary)"
  finish_loadgen
  ((loadgen_status == 0)) || fail "loadgen failed (status $loadgen_status): $result"
  sleep 2
  end=$(lateness_buckets)
  stop_gateway
  echo "loadgen: $result"
  echo "sampler tier, decision lateness at $rate spans/s for $duration (decision_wait 1s):"
  echo "  end:     $(lateness_summary <<<"$end")"
  echo "  buckets: $(tr '\n' ' ' <<<"$end")"
}

overload_mode() {
  local rate=${RATE:-13000000} concurrency=${CONCURRENCY:-64}
  # Whole groups of the loadgen's 4 requests x 512 spans, so that every trace is sent whole (a
  # run stopped by time would cut the last traces short).
  local total=$(((${SPANS:-16777216} + 2047) / 2048 * 2048))
  local limit=${MAX_BUFFERED_BYTES:-268435456} overflow=${OVERFLOW:-decide} extra hz
  local ticks_before ticks_after hwm sent rate_got retries failures check peak=0 rss counters
  command -v python3 >/dev/null || fail "overload mode needs python3 (to check kept traces)"
  command -v curl >/dev/null || fail "overload mode needs curl"
  extra="    max_buffered_bytes: $limit"
  [[ $overflow == block ]] && extra="$extra
    block_on_overflow: true"
  if [[ -n ${MEMORY_LIMIT_MIB:-} ]]; then
    # The memory limiter alone bounds memory: no byte limit on the buffer.
    extra=""
    limit=0
    memory_limiter_block="  memory_limiter:
    check_interval: 100ms
    limit_mib: $MEMORY_LIMIT_MIB
    spike_limit_mib: $((MEMORY_LIMIT_MIB / 5))"
  fi
  # num_traces well above what fits in max_buffered_bytes, so the byte limit is the one reached.
  write_config 5s 200000 "$extra" "  file:
    path: $workdir/kept.bin
    format: proto"
  start_gateway
  hz=$(getconf CLK_TCK)
  ticks_before=$(cpu_ticks)
  start_loadgen --rate "$rate" --total "$total" --concurrency "$concurrency"
  while alive "$loadgen_pid"; do
    rss=$(status_kib VmRSS)
    ((rss > peak)) && peak=$rss
    sleep 0.2
  done
  finish_loadgen
  # Let every buffered trace reach its deadline and the file exporter write it.
  sleep 7
  alive "$gateway_pid" || fail "gateway exited under overload"
  ticks_after=$(cpu_ticks)
  hwm=$(status_kib VmHWM)
  counters=$(curl -sf "http://127.0.0.1:$metrics_port/metrics" |
    grep -E '^(tailgate_traces_decided_early_total|tailgate_buffer_overflow_refusals_total|otelcol_receiver_refused_spans|tailgate_memory_limiter_refused_requests)' |
    tr '\n' ' ' || true)
  stop_gateway
  check=$(python3 "$repo/bench/check_traces.py" "$workdir/kept.bin" 8) || true
  sent=$(json_num spans_sent "$result")
  rate_got=$(json_num spans_per_s "$result")
  retries=$(json_num retries "$result")
  failures=$(json_num failures "$result")
  echo "loadgen (exit status $loadgen_status): $result"
  echo "sampler tier, overload: offered $rate spans/s, $concurrency requests in flight, $total spans; decision_wait 5s, max_buffered_bytes $limit, overflow=$overflow, buffer_compression $compression"
  echo "  throughput           $(calc %.0f "$rate_got") spans/s accepted ($sent spans)"
  echo "  client               $retries retries, $failures failed requests"
  echo "  gateway CPU          $(calc %.2f "($ticks_after - $ticks_before) / $hz") s"
  echo "  peak RSS             $(calc %.1f "$hwm / 1024") MiB (VmHWM; sampled every 0.2 s: $(calc %.1f "$peak / 1024") MiB); max_buffered_bytes $(calc %.1f "$limit / 1048576") MiB${MEMORY_LIMIT_MIB:+, memory_limiter limit_mib $MEMORY_LIMIT_MIB}"
  echo "  counters             $counters"
  echo "  kept traces          $check"
}

"${mode}_mode"
