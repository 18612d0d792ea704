#!/usr/bin/env bash
# Runs every test. The end-to-end tests drive the gateway with the OpenTelemetry Python SDK, so
# this first makes sure .venv has it (pinned in tests/clients/requirements.txt).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install --quiet --disable-pip-version-check -r tests/clients/requirements.txt
cargo test "$@"
