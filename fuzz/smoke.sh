#!/usr/bin/env bash
# A short run of every fuzz target (issue 10), for CI when a nightly toolchain is present:
#   fuzz/smoke.sh [seconds per target, default 20]
# Each target starts from its committed seed corpus (fuzz/corpus/<target>); what it finds goes to
# a temporary directory, so the committed corpus stays small. A crash fails the script, and
# libFuzzer leaves the input in fuzz/artifacts/<target>/ to turn into a regression test.
# Needs `cargo install cargo-fuzz` and `rustup toolchain install nightly`.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-20}"
if ! cargo +nightly fuzz --version > /dev/null 2>&1; then
  echo "fuzz/smoke.sh: needs cargo-fuzz on a nightly toolchain:" >&2
  echo "  rustup toolchain install nightly && cargo install cargo-fuzz" >&2
  exit 1
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# Safe Rust: no sanitizer (it slows builds and runs for nothing the borrow checker misses);
# debug assertions stay on.
cargo +nightly fuzz build --sanitizer none
for target in door json ottl config; do
  mkdir -p "$work/$target"
  echo "fuzz/smoke.sh: $target for ${seconds}s"
  cargo +nightly fuzz run --sanitizer none "$target" "$work/$target" "corpus/$target" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 2>&1 \
    | grep -E "^(stat::number_of_executed_units|stat::peak_rss_mb|==|SUMMARY|Done)|panicked|ERROR" || true
  # grep's status must not hide the fuzzer's: re-check for a crash artifact.
  if compgen -G "artifacts/$target/crash-*" > /dev/null; then
    echo "fuzz/smoke.sh: $target crashed; inputs in fuzz/artifacts/$target/" >&2
    exit 1
  fi
done
