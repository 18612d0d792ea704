#!/usr/bin/env bash
# Compares tailgate with rotel (a Rust OpenTelemetry collector) on the same load, same machine,
# same run: tailgate-loadgen sends SPANS spans (512-span requests of ~500-byte spans, 8 spans per
# trace) as fast as it can over OTLP/gRPC to 127.0.0.1, and for each process under test the
# script reports its CPU-seconds per million spans, the spans per second the load generator got
# through, and the process's peak RSS.
#
#   sampler         tailgate, tail_sampling: errors + 10 % probabilistic, decision_wait 1s,
#                   kept traces exported over OTLP/gRPC to the sink
#   always_sample   tailgate, tail_sampling with always_sample (every span buffered 1 s, decided,
#                   exported to the sink)
#   front           tailgate's front tier: exporters.loadbalancing with a static resolver whose
#                   only backend is the sink
#   rotel_blackhole rotel-agent receiving and decoding only (--exporter blackhole)
#   rotel_otlp      rotel-agent passing everything through to the sink over OTLP/gRPC
#
# The load generator and the sink (a second tailgate: OTLP receiver -> debug exporter, no
# processors) are pinned to one CPU (LOADGEN_CPU), the process under test to the other
# (TARGET_CPU), so its CPU time is its own. Each configuration runs RUNS times; the table shows
# the median of each column (each column's own median).
#
# rotel-agent comes from the PyPI package `rotel`, which ships it inside its wheel: set ROTEL to
# a rotel-agent binary, or the script downloads the wheel once with `pip download --no-deps
# rotel` into target/bench-tools/ and unpacks it there.
#
# Environment (all optional):
#   SPANS=4000000      spans per run
#   RUNS=3             runs per configuration
#   ONLY=              space-separated subset of rows, e.g. "sampler rotel_blackhole"
#   PORT=14317         OTLP/gRPC port of the process under test (127.0.0.1)
#   SINK_PORT=14319    OTLP/gRPC port of the sink
#   METRICS_PORT=18888 tailgate's own metrics port
#   TARGET_CPU=1 LOADGEN_CPU=0
#   LOADGEN_ARGS=      extra tailgate-loadgen flags
#   ROTEL=             path to rotel-agent
#   BASELINE_TAILGATE= another tailgate binary (an earlier build) to compare with in the same run:
#                      rows `sampler@baseline`, `always_sample@baseline` and `front@baseline` run
#                      it on the same config as the row without the suffix
#
# Runs are interleaved (run 1 of every row, then run 2 of every row, ...), so a change in the
# machine's load during the script spreads over every row instead of skewing one.
#
# Every process this script starts is stopped when it exits, however it exits. All traffic goes
# to 127.0.0.1.
set -euo pipefail

usage() { sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0"; }
case ${1:-} in
  -h | --help) usage; exit 0 ;;
  "") ;;
  *) echo "compare.sh: no arguments expected (see --help)" >&2; exit 2 ;;
esac

spans=${SPANS:-4000000}
runs=${RUNS:-3}
port=${PORT:-14317}
sink_port=${SINK_PORT:-14319}
metrics_port=${METRICS_PORT:-18888}
target_cpu=${TARGET_CPU:-1}
loadgen_cpu=${LOADGEN_CPU:-0}
read -r -a loadgen_args <<<"${LOADGEN_ARGS:-}"
rows=(sampler always_sample front rotel_blackhole rotel_otlp)
[[ -z ${ONLY:-} ]] || read -r -a rows <<<"$ONLY"

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
cargo build --release --bins
target_dir=${CARGO_TARGET_DIR:-$repo/target}
tailgate_bin=$target_dir/release/tailgate
loadgen_bin=$target_dir/release/tailgate-loadgen

workdir=$(mktemp -d "${TMPDIR:-/tmp}/tailgate-compare.XXXXXX")
pids=()

# --- process handling -----------------------------------------------------------------------

alive() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [[ ${stat%% *} != Z ]]
}

# SIGTERM, up to 30 s to exit, then SIGKILL.
stop() {
  local pid=$1
  alive "$pid" || { wait "$pid" 2>/dev/null || true; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 300); do
    alive "$pid" || break
    sleep 0.1
  done
  alive "$pid" && kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local pid
  for pid in ${pids[@]+"${pids[@]}"}; do
    stop "$pid"
  done
  rm -rf "$workdir"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

fail() {
  echo "compare.sh: $*" >&2
  for log in "$workdir"/*.log; do
    [[ -s $log ]] || continue
    echo "--- $(basename "$log") (last 20 lines) ---" >&2
    tail -n 20 "$log" >&2
  done
  exit 1
}

pin_target=()
pin_loadgen=()
if command -v taskset >/dev/null && (($(nproc) >= 2)); then
  pin_target=(taskset -c "$target_cpu")
  pin_loadgen=(taskset -c "$loadgen_cpu")
else
  echo "compare.sh: fewer than 2 CPUs or no taskset; running unpinned" >&2
fi

port_open() { (: <"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # pid port
  for _ in $(seq 300); do
    alive "$1" || fail "process $1 exited during startup"
    port_open "$2" && return 0
    sleep 0.1
  done
  fail "nothing listens on 127.0.0.1:$2 after 30 s"
}

# --- rotel ----------------------------------------------------------------------------------

find_rotel() {
  if [[ -n ${ROTEL:-} ]]; then
    [[ -x $ROTEL ]] || fail "ROTEL=$ROTEL is not an executable"
    echo "$ROTEL"
    return
  fi
  local dir=$target_dir/bench-tools/rotel
  if [[ ! -x $dir/rotel/rotel-agent ]]; then
    echo "compare.sh: fetching rotel-agent from the PyPI package rotel (pip download)" >&2
    rm -rf "$dir"
    mkdir -p "$dir"
    python3 -m pip download --quiet --no-deps --dest "$dir" rotel >&2 ||
      fail "pip download rotel failed; set ROTEL to a rotel-agent binary"
    (cd "$dir" && python3 -m zipfile -e ./*.whl .) || fail "cannot unpack the rotel wheel"
    chmod +x "$dir/rotel/rotel-agent"
  fi
  echo "$dir/rotel/rotel-agent"
}

# --- configurations -------------------------------------------------------------------------

write_tailgate_config() { # row -> $workdir/<row>.yaml
  local row=$1 file=$workdir/$1.yaml
  local receivers="receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:$port"
  local telemetry="service:
  telemetry:
    metrics:
      address: 127.0.0.1:$metrics_port"
  local otlp="exporters:
  otlp:
    endpoint: 127.0.0.1:$sink_port
    tls: {insecure: true}
    compression: none"
  case $row in
    sampler | always_sample)
      local policies
      if [[ $row == sampler ]]; then
        policies="      - name: errors
        type: status_code
        status_code: {status_codes: [ERROR]}
      - name: baseline
        type: probabilistic
        probabilistic: {sampling_percentage: 10}"
      else
        policies="      - name: everything
        type: always_sample"
      fi
      cat >"$file" <<EOF
$receivers
processors:
  tail_sampling:
    decision_wait: 1s
    num_traces: 1000000
    policies:
$policies
$otlp
$telemetry
  pipelines:
    traces:
      receivers: [otlp]
      processors: [tail_sampling]
      exporters: [otlp]
EOF
      ;;
    front)
      cat >"$file" <<EOF
$receivers
exporters:
  loadbalancing:
    routing_key: traceID
    protocol:
      otlp:
        tls: {insecure: true}
        compression: none
    resolver:
      static:
        hostnames: [127.0.0.1:$sink_port]
$telemetry
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [loadbalancing]
EOF
      ;;
  esac
}

write_sink_config() {
  cat >"$workdir/sink.yaml" <<EOF
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:$sink_port
exporters:
  debug:
    verbosity: basic
service:
  telemetry:
    logs:
      level: warn
    metrics:
      level: none
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [debug]
EOF
}

# --- one run --------------------------------------------------------------------------------

# utime + stime of a process (all threads), in clock ticks.
cpu_ticks() {
  local stat fields
  stat=$(<"/proc/$1/stat")
  stat=${stat##*) }
  read -r -a fields <<<"$stat"
  echo $((fields[11] + fields[12]))
}

json_num() { sed -n "s/.*\"$1\":\([-0-9.eE+]*\).*/\1/p" <<<"$2"; }
calc() { awk "BEGIN { printf \"$1\", $2 }"; }

# Starts the process under test for a row; sets $target_pid.
start_target() {
  local row=$1
  for p in "$port" "$metrics_port"; do
    ! port_open "$p" || fail "127.0.0.1:$p is already in use; set PORT / METRICS_PORT"
  done
  case $row in
    rotel_blackhole | rotel_otlp)
      local exporter=(--exporter blackhole)
      [[ $row == rotel_otlp ]] && exporter=(--exporter otlp
        --otlp-exporter-endpoint "http://127.0.0.1:$sink_port" --otlp-exporter-protocol grpc
        --otlp-exporter-compression none)
      ${pin_target[@]+"${pin_target[@]}"} "$rotel_bin" start \
        --otlp-grpc-endpoint "127.0.0.1:$port" --otlp-http-endpoint "127.0.0.1:$((port + 1))" \
        --pid-file "$workdir/rotel.pid" --log-file "$workdir/rotel-agent.log" \
        "${exporter[@]}" >"$workdir/target.log" 2>&1 &
      ;;
    *@baseline)
      [[ -x ${BASELINE_TAILGATE:-} ]] || fail "$row needs BASELINE_TAILGATE, a tailgate binary"
      write_tailgate_config "${row%@baseline}"
      ${pin_target[@]+"${pin_target[@]}"} "$BASELINE_TAILGATE" --config "$workdir/${row%@baseline}.yaml" \
        >"$workdir/target.log" 2>&1 &
      ;;
    *)
      write_tailgate_config "$row"
      ${pin_target[@]+"${pin_target[@]}"} "$tailgate_bin" --config "$workdir/$row.yaml" \
        >"$workdir/target.log" 2>&1 &
      ;;
  esac
  target_pid=$!
  pids+=("$target_pid")
  wait_port "$target_pid" "$port"
}

# One run of a row; sets $run_result to "cpu_per_million spans_per_s peak_rss_mib". (Not run in
# a subshell, so that the EXIT trap knows every process it started.)
run_once() {
  local row=$1 ticks_before ticks_after hwm result status=0 sent rate
  start_target "$row"
  ticks_before=$(cpu_ticks "$target_pid")
  ${pin_loadgen[@]+"${pin_loadgen[@]}"} "$loadgen_bin" --endpoint "http://127.0.0.1:$port" \
    --total "$spans" --rate 0 ${loadgen_args[@]+"${loadgen_args[@]}"} \
    >"$workdir/loadgen.json" 2>"$workdir/loadgen.log" &
  local loadgen_pid=$!
  pids+=("$loadgen_pid")
  wait "$loadgen_pid" || status=$?
  result=$(<"$workdir/loadgen.json")
  ((status == 0)) || fail "$row: loadgen failed (status $status): $result"
  alive "$target_pid" || fail "$row: the process under test exited under load"
  # Let the last traces reach decision_wait and the exporters drain.
  sleep 3
  ticks_after=$(cpu_ticks "$target_pid")
  hwm=$(awk '$1 == "VmHWM:" { print $2 }' "/proc/$target_pid/status")
  stop "$target_pid"
  sent=$(json_num spans_sent "$result")
  rate=$(json_num spans_per_s "$result")
  run_result="$(calc %.3f "($ticks_after - $ticks_before) / $hz / $sent * 1000000") $(calc %.0f "$rate") $(calc %.1f "$hwm / 1024")"
}

median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# --- main -----------------------------------------------------------------------------------

hz=$(getconf CLK_TCK)
rotel_bin=
for row in "${rows[@]}"; do
  case $row in
    sampler | always_sample | front | sampler@baseline | always_sample@baseline | front@baseline) ;;
    rotel_blackhole | rotel_otlp) [[ -n $rotel_bin ]] || rotel_bin=$(find_rotel) ;;
    *) fail "unknown row '$row' (rows: sampler always_sample front rotel_blackhole rotel_otlp)" ;;
  esac
done

write_sink_config
! port_open "$sink_port" || fail "127.0.0.1:$sink_port is already in use; set SINK_PORT"
${pin_loadgen[@]+"${pin_loadgen[@]}"} "$tailgate_bin" --config "$workdir/sink.yaml" \
  >/dev/null 2>"$workdir/sink.log" &
sink_pid=$!
pids+=("$sink_pid")
wait_port "$sink_pid" "$sink_port"

declare -A cpu rate rss
for row in "${rows[@]}"; do : >"$workdir/$row.runs"; done
for i in $(seq "$runs"); do
  for row in "${rows[@]}"; do
    run_once "$row"
    echo "$row run $i: $run_result (CPU-s per million spans, spans/s, peak RSS MiB)" >&2
    echo "$run_result" >>"$workdir/$row.runs"
  done
done
for row in "${rows[@]}"; do
  cpu[$row]=$(awk '{ print $1 }' "$workdir/$row.runs" | median)
  rate[$row]=$(awk '{ print $2 }' "$workdir/$row.runs" | median)
  rss[$row]=$(awk '{ print $3 }' "$workdir/$row.runs" | median)
done

echo
echo "$(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs, $spans spans per run, median of $runs runs"
printf '%-24s %14s %12s %14s %10s\n' row "CPU-s/M spans" "spans/s" "peak RSS MiB" "x rotel rx"
for row in "${rows[@]}"; do
  ratio=-
  [[ -n ${cpu[rotel_blackhole]:-} ]] && ratio=$(calc %.2f "${cpu[$row]} / ${cpu[rotel_blackhole]}")
  printf '%-24s %14s %12s %14s %10s\n' "$row" "${cpu[$row]}" "${rate[$row]}" "${rss[$row]}" "$ratio"
done
