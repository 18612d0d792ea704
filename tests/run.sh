#!/usr/bin/env bash
# Runs every test. What the tests need besides Rust is set up first:
# - the OpenTelemetry Python SDK and the deploy/ validators in .venv (pinned in
#   tests/clients/requirements.txt);
# - the OpenTelemetry JS SDK in tests/clients/js/node_modules (pinned in its package-lock.json,
#   installed with `npm ci`; Node and npm must be on the machine);
# - promtool (Debian's `prometheus` package) and curl (the README walkthrough test runs the
#   README's curl command), installed with apt when missing and apt is there.
# A test whose prerequisite is still missing fails and says how to install it.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install --quiet --disable-pip-version-check -r tests/clients/requirements.txt

if command -v npm > /dev/null; then
  lock=tests/clients/js/package-lock.json
  stamp=tests/clients/js/node_modules/.installed-lock
  # npm ci only when the lock changed since the last install (it deletes node_modules first).
  if ! cmp -s "$lock" "$stamp" 2> /dev/null; then
    (cd tests/clients/js && npm ci --no-audit --no-fund --loglevel=error)
    cp "$lock" "$stamp"
  fi
else
  echo "tests/run.sh: npm not found; the JS SDK tests will fail (apt-get install -y nodejs npm)" >&2
fi

missing=()
command -v promtool > /dev/null || missing+=(prometheus)
command -v curl > /dev/null || missing+=(curl)
if [ ${#missing[@]} -gt 0 ] && command -v apt-get > /dev/null; then
  # The prometheus package's post-install does not start a server in a container without init.
  if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" > /dev/null
fi

# Run, then say how many tests ran and how many were skipped: none may be (`#[ignore]` is not
# used; a missing prerequisite fails its test instead of skipping it).
log=$(mktemp "${TMPDIR:-/tmp}/tailgate-tests.XXXXXX")
trap 'rm -f "$log"' EXIT
status=0
cargo test "$@" 2>&1 | tee "$log" || status=$?
read -r passed failed ignored < <(awk '/^test result:/ {
    for (i = 1; i <= NF; i++) {
      if ($(i + 1) ~ /^passed/) p += $i
      if ($(i + 1) ~ /^failed/) f += $i
      if ($(i + 1) ~ /^ignored/) g += $i
    }
  } END { print p + 0, f + 0, g + 0 }' "$log")
echo "tests/run.sh: $passed passed, $failed failed, $ignored skipped"
if [ "$ignored" -ne 0 ]; then
  echo "tests/run.sh: $ignored tests were skipped (#[ignore]); every test must run" >&2
  [ "$status" -ne 0 ] || status=1
fi
exit "$status"
