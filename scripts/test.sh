#!/usr/bin/env bash
# Runs every test: unit, property, WAL fault, end-to-end HTTP and kill -9 crash tests.
# Needs only the Rust toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace -j2 "$@"
