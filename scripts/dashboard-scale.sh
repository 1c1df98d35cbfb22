#!/usr/bin/env bash
# Scale check of the web dashboard (not part of the tests): starts a server with a fresh
# data directory, fills it with 1,000 queues and 1,000,000 jobs (900,100 in the queue
# `big`, 100 in each of 999 others, in batches of 10,000 through POST /v1/jobs/batch),
# then loads the dashboard in headless Chromium (tests/browser/scale.mjs) and prints one
# line per page: the time to its content and the longest main-thread task; then two more
# with a worker loop churning jobs through the server meanwhile.
#
#   scripts/dashboard-scale.sh
#   SLUICE_BIN=/tmp/sluice-rel SCALE_PORT=7481 scripts/dashboard-scale.sh
#
# SLUICE_BIN: the server (default target/release/sluice if built, else target/debug/sluice).
# SCALE_PORT: its loopback port (default a free one).
# DASHBOARD_DIR: serve the dashboard's files from this folder instead of the binary's
#   (a release binary embeds the files it was built with; see tests/browser/scale.mjs).
# Needs chromium and tests/browser/node_modules (scripts/browser-test.sh installs both).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${SLUICE_BIN:-}" ]; then
  if [ -x target/release/sluice ]; then SLUICE_BIN=target/release/sluice; else SLUICE_BIN=target/debug/sluice; fi
fi
[ -x "$SLUICE_BIN" ] || { echo "no server binary at $SLUICE_BIN" >&2; exit 1; }
[ -d tests/browser/node_modules ] || (cd tests/browser && npm ci --no-audit --no-fund)

port="${SCALE_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}"
dir="$(mktemp -d /tmp/sluice-scale.XXXXXX)"
"$SLUICE_BIN" server --addr "127.0.0.1:$port" --data-dir "$dir/data" >"$dir/server.log" 2>&1 &
server_pid=$!
cleanup() {
  kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  rm -rf "$dir"
}
trap cleanup EXIT

base="http://127.0.0.1:$port"
for _ in $(seq 1 300); do
  curl -sf "$base/readyz" >/dev/null 2>&1 && break
  kill -0 "$server_pid" 2>/dev/null || { cat "$dir/server.log" >&2; exit 1; }
  sleep 0.1
done
curl -sf "$base/readyz" >/dev/null || { echo "the server did not get ready" >&2; cat "$dir/server.log" >&2; exit 1; }

echo "server: $SLUICE_BIN on $base ($(nproc) cores)"
SCALE_BASE="$base" node tests/browser/scale.mjs
