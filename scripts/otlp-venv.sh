#!/usr/bin/env bash
# Prints the python of a venv (under the cargo target directory) that has the
# OpenTelemetry project's protobuf classes, for scripts/otlp_check.py: the OTLP export
# test (crates/server/tests/otel.rs) parses what the server sends with them.
# Installed from PyPI the first time, reused while the version matches.
set -euo pipefail
cd "$(dirname "$0")/.."
version=1.45.2
target_dir=$(realpath "${CARGO_TARGET_DIR:-target}")
venv=$target_dir/otlp-venv
if ! "$venv/bin/python" -c "import importlib.metadata as m; assert m.version('opentelemetry-proto') == '$version'" 2>/dev/null; then
    rm -rf "$venv"
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check "opentelemetry-proto==$version" >&2
fi
echo "$venv/bin/python"
