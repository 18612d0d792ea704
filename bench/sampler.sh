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
#                             span size (budget: under 1.3).
#
# Environment (all optional):
#   SPANS=2000000         spans to send
#   PORT=14317            OTLP/gRPC port the gateway listens on (127.0.0.1)
#   METRICS_PORT=18888    the gateway's own metrics port (127.0.0.1)
#   GATEWAY_CPU=1         CPU the gateway is pinned to
#   LOADGEN_CPU=0         CPU the load generator is pinned to
#   LOADGEN_ARGS=         extra tailgate-loadgen flags, e.g. "--compression gzip --spans-per-trace 20"
#
# Every process this script starts is stopped when it exits, however it exits.
set -euo pipefail

usage() { sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0"; }

mode=${1:-cpu}
case $mode in
  cpu | memory) ;;
  -h | --help) usage; exit 0 ;;
  *) echo "sampler.sh: unknown mode '$mode' (expected cpu or memory)" >&2; exit 2 ;;
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
gateway_bin=$bin_dir/tailgate
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

write_config() { # decision_wait num_traces
  cat >"$workdir/config.yaml" <<EOF
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:$port
processors:
  tail_sampling:
    decision_wait: $1
    num_traces: $2
    policies:
      - name: errors
        type: status_code
        status_code: {status_codes: [ERROR]}
      - name: baseline
        type: probabilistic
        probabilistic: {sampling_percentage: 10}
exporters:
  debug:
    verbosity: basic
service:
  telemetry:
    metrics:
      address: 127.0.0.1:$metrics_port
  pipelines:
    traces:
      receivers: [otlp]
      processors: [tail_sampling]
      exporters: [debug]
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
  local status=0
  ${pin_loadgen[@]+"${pin_loadgen[@]}"} "$loadgen_bin" \
    --endpoint "http://127.0.0.1:$port" --total "$spans" --rate 0 \
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
  write_config 1s 200000
  start_gateway
  local ticks_before ticks_after hz result sent rate hwm cpu_s per_million
  hz=$(getconf CLK_TCK)
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
  echo "sampler tier, CPU mode: $sent spans, decision_wait 1s, errors + 10% probabilistic, debug exporter"
  echo "  throughput           $(calc %.0f "$rate") spans/s"
  echo "  gateway CPU          $cpu_s s = $per_million CPU-s per million spans (budget < 1)"
  echo "  gateway peak RSS     $(calc %.1f "$hwm / 1024") MiB"
  echo "{\"mode\":\"cpu\",\"spans\":$sent,\"spans_per_s\":$rate,\"cpu_s\":$cpu_s,\"cpu_s_per_million_spans\":$per_million,\"peak_rss_bytes\":$((hwm * 1024))}"
}

memory_mode() {
  local span_bytes rss_before rss_after hwm result sent per_span ratio
  span_bytes=$("$loadgen_bin" --print-span-size ${loadgen_args[@]+"${loadgen_args[@]}"})
  # num_traces = spans: never fewer than the traces sent, so nothing is evicted.
  write_config 10m "$spans"
  start_gateway
  sleep 1
  rss_before=$(status_kib VmRSS)
  run_loadgen
  # Let requests still being handed from the receiver to the buffer land.
  sleep 2
  alive "$gateway_pid" || fail "gateway exited before the measurement was read"
  rss_after=$(status_kib VmRSS)
  hwm=$(status_kib VmHWM)
  stop_gateway

  sent=$(json_num spans_sent "$result")
  per_span=$(calc %.1f "($rss_after - $rss_before) * 1024 / $sent")
  ratio=$(calc %.3f "$per_span / $span_bytes")
  echo "loadgen: $result"
  echo "sampler tier, memory mode: $sent spans buffered (decision_wait 10m), average encoded span $span_bytes B"
  echo "  RSS before / after   $(calc %.1f "$rss_before / 1024") / $(calc %.1f "$rss_after / 1024") MiB (peak $(calc %.1f "$hwm / 1024") MiB)"
  echo "  resident per span    $per_span B = $ratio x the encoded span (budget < 1.3)"
  echo "{\"mode\":\"memory\",\"spans\":$sent,\"avg_span_bytes\":$span_bytes,\"rss_before_bytes\":$((rss_before * 1024)),\"rss_after_bytes\":$((rss_after * 1024)),\"resident_bytes_per_span\":$per_span,\"ratio_to_encoded\":$ratio}"
}

"${mode}_mode"
