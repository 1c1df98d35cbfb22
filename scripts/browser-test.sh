#!/usr/bin/env bash
# End-to-end test of the embedded dashboard in headless Chromium (tests/browser/).
#
# Needs the server binary: SLUICE_BIN (default target/debug/sluice, built beforehand).
# Installs what is missing: Debian's chromium, and playwright-core (the CDP client) and
# axe-core (the accessibility checks) from tests/browser/package-lock.json.
# Screenshots land in target/screenshots/.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x /usr/bin/chromium ]; then
  echo "installing chromium" >&2
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends chromium
fi

# Installed again when anything in the lockfile is missing (a node_modules from before a
# dependency was added, say). `npm ls` looks only at the disk.
if ! (cd tests/browser && npm ls --depth=0 >/dev/null 2>&1); then
  (cd tests/browser && npm ci --no-audit --no-fund)
fi

export SLUICE_BIN="${SLUICE_BIN:-target/debug/sluice}"
node --test tests/browser/
