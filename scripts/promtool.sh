#!/usr/bin/env bash
# Prints the path of a promtool (Prometheus's own checker of the text exposition format),
# for the /metrics test: the one on PATH, else one taken from Debian's prometheus package
# (downloaded, not installed: only the static promtool binary is kept, in target/tools).
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v promtool >/dev/null 2>&1; then
  command -v promtool
  exit 0
fi
tools="$PWD/target/tools"
if [ ! -x "$tools/promtool" ]; then
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  (cd "$work" && { apt-get download prometheus >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 && apt-get download prometheus >/dev/null 2>&1; }; })
  dpkg-deb -x "$work"/prometheus_*.deb "$work/x"
  mkdir -p "$tools"
  cp "$work/x/usr/bin/promtool" "$tools/promtool"
fi
echo "$tools/promtool"
