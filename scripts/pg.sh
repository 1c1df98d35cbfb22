#!/usr/bin/env bash
# Starts a throwaway PostgreSQL for the tests (the sqlx example's test): installs Debian's
# postgresql package if it is missing, makes a cluster in a temp dir owned by the postgres
# user, starts it on a free loopback port with trust auth, and prints
#   SLUICE_TEST_PG_URL=postgres://postgres@127.0.0.1:PORT/postgres
#   SLUICE_TEST_PG_DIR=<dir>
# for the caller to eval. `scripts/pg.sh stop <dir>` stops it and removes the dir.
set -euo pipefail

if [ "${1:-}" = "stop" ]; then
    dir="$2"
    bin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
    runuser -u postgres -- "$bin/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$dir"
    exit 0
fi

if ! ls -d /usr/lib/postgresql/*/bin >/dev/null 2>&1; then
    echo "installing postgresql (for the sqlx example's test)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q postgresql >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q postgresql >/dev/null; }
fi
bin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
dir="$(mktemp -d /tmp/sluice-pg.XXXXXX)"
chown postgres "$dir"
chmod 700 "$dir"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
runuser -u postgres -- "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 >"$dir/initdb.log" 2>&1 \
    || { cat "$dir/initdb.log" >&2; exit 1; }
runuser -u postgres -- "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 30 \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null \
    || { cat "$dir/server.log" >&2; exit 1; }
echo "SLUICE_TEST_PG_URL=postgres://postgres@127.0.0.1:$port/postgres"
echo "SLUICE_TEST_PG_DIR=$dir"
