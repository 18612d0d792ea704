#!/usr/bin/env bash
# Runs every test. What the tests need besides Rust is set up first:
# - the OpenTelemetry Python SDK and the deploy/ validators in .venv (pinned in
#   tests/clients/requirements.txt);
# - the OpenTelemetry JS SDK in tests/clients/js/node_modules (pinned in its package-lock.json,
#   installed with `npm ci`; Node and npm must be on the machine);
# - promtool (Debian's `prometheus` package), installed with apt when missing and apt is there.
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

if ! command -v promtool > /dev/null && command -v apt-get > /dev/null; then
  # The package's post-install does not start a Prometheus server in a container without init.
  if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends prometheus > /dev/null
fi

cargo test "$@"
