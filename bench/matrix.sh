#!/usr/bin/env bash
# The sampler tier's CPU cost per million spans across load shapes (issue 10's "performance
# stays": with validation at the door, at or under 1.0 CPU-s per million spans for each shape).
# Runs bench/sampler.sh in CPU mode once per shape, one dimension varied at a time from the
# load generator's defaults (8 spans per trace, 1 resource per request, a trace spread over 4
# requests, spans of about 500 encoded bytes), and prints a Markdown table.
#
#   bench/matrix.sh
#
# Environment (all optional): SPANS (default 2000000 per shape), and what bench/sampler.sh takes.
# BEFORE=path/to/tailgate adds a column for another build, each shape run with both binaries
# back to back.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

shapes=(
  "spans per trace 1|--spans-per-trace 1 --requests-per-trace 1"
  "spans per trace 8|--spans-per-trace 8"
  "spans per trace 50|--spans-per-trace 50"
  "1 resource per request|--resources-per-request 1"
  "4 resources per request|--resources-per-request 4"
  "a trace over 1 request|--requests-per-trace 1"
  "a trace over 2 requests|--requests-per-trace 2"
  "a trace over 4 requests|--requests-per-trace 4"
  "spans of ~200 B|--span-bytes 200"
  "spans of ~500 B|--span-bytes 500"
  "spans of ~2000 B|--span-bytes 2000"
)

per_million() {
  # The JSON line sampler.sh prints last.
  LOADGEN_ARGS="$2" GATEWAY_BIN="$1" bash bench/sampler.sh cpu 2> /dev/null |
    python3 -c 'import json,sys; r=json.loads(sys.stdin.read().strip().splitlines()[-1]); print("%.3f (%.0f/s)" % (r["cpu_s_per_million_spans"], r["spans_per_s"]))'
}

if [ -n "${BEFORE:-}" ]; then
  echo "| shape | loadgen flags | CPU-s per million spans (spans/s) | before |"
  echo "| --- | --- | --- | --- |"
else
  echo "| shape | loadgen flags | CPU-s per million spans (spans/s) |"
  echo "| --- | --- | --- |"
fi
for shape in "${shapes[@]}"; do
  name=${shape%%|*}
  flags=${shape#*|}
  after=$(per_million "" "$flags")
  if [ -n "${BEFORE:-}" ]; then
    before=$(per_million "$BEFORE" "$flags")
    echo "| $name | \`$flags\` | $after | $before |"
  else
    echo "| $name | \`$flags\` | $after |"
  fi
done
