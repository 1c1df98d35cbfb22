#!/usr/bin/env bash
# Runs every test: unit, property, simulation, WAL fault, end-to-end HTTP, limits,
# kill -9 crash and disk-full tests, then schemathesis against the OpenAPI document.
# Needs the Rust toolchain and python3; schemathesis is installed from PyPI into target/,
# tmux and postgresql from Debian's packages when they are missing, promtool from
# Debian's prometheus package (scripts/promtool.sh), chromium from Debian's packages and
# playwright-core from the npm registry for the dashboard test (scripts/browser-test.sh).
# The disk-full test mounts a tmpfs, so it needs root (SLUICE_SKIP_MOUNT_TESTS=1 skips it).
set -euo pipefail
cd "$(dirname "$0")/.."
# `sluice top` is tested in a real terminal under tmux (crates/cli/tests/top.rs).
if ! command -v tmux >/dev/null 2>&1; then
  echo "installing tmux (for the sluice top test)"
  if [ "$(id -u)" = 0 ]; then
    apt-get install -y -q tmux >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q tmux >/dev/null; }
  else
    sudo apt-get install -y -q tmux >/dev/null 2>&1 || { sudo apt-get update -q >/dev/null && sudo apt-get install -y -q tmux >/dev/null; }
  fi
fi
# The sqlx example writes to a real PostgreSQL (examples/tests/pg.rs): start a throwaway
# one (scripts/pg.sh installs Debian's postgresql if missing; needs root to run it as the
# postgres user), and stop it on exit.
if [ "$(id -u)" = 0 ]; then
  pg_env="$(bash scripts/pg.sh)"
  export SLUICE_TEST_PG_URL="$(echo "$pg_env" | sed -n 's/^SLUICE_TEST_PG_URL=//p')"
  pg_dir="$(echo "$pg_env" | sed -n 's/^SLUICE_TEST_PG_DIR=//p')"
  export SLUICE_REQUIRE_PG=1
  trap 'bash scripts/pg.sh stop "$pg_dir"' EXIT
else
  echo "not root: the PostgreSQL example test is skipped (scripts/pg.sh needs root)"
fi
# /metrics is checked by Prometheus's own promtool (crates/server/tests/http.rs).
SLUICE_PROMTOOL="$(bash scripts/promtool.sh)"
export SLUICE_PROMTOOL SLUICE_REQUIRE_PROMTOOL=1
cargo test --workspace -j2 "$@"
# The OpenTelemetry export is behind the `otel` feature: its test runs with the feature
# on, and what the server sends is parsed by the OpenTelemetry project's own protobuf
# classes (scripts/otlp-venv.sh installs them from PyPI into target/ on first use).
SLUICE_OTLP_PYTHON="$(bash scripts/otlp-venv.sh)" SLUICE_REQUIRE_OTLP_CHECK=1 \
  cargo test -j2 -p sluice-server --features otel --test otel "$@"
# The embedded web dashboard, end to end in Debian's headless Chromium driven over CDP by
# playwright-core (scripts/browser-test.sh installs both when missing): every page against
# a real server with data, its actions checked through the API, screenshots saved to
# target/screenshots/. See docs/dashboard.md.
cargo build -p sluice -j2
bash scripts/browser-test.sh
# Property-based API test from the OpenAPI document against the real server: schemathesis
# (needs python3; installed from PyPI into target/ on first use), then about 15 s. A failure
# fails the run. See docs/reliability.md, "Schemathesis".
bash scripts/schemathesis.sh
