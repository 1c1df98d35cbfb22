#!/usr/bin/env bash
# GET /v1/health on a server of 10,000 queues: the first request after start (which reads
# every queue's history), then requests answered from that read, then requests right
# after the next history sample (answered from the last read while a task reads again).
# Needs a release build (cargo build --release -p sluice) and curl; takes about 40 s.
set -u
cd "$(dirname "$0")/.."
bin=target/release/sluice
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
$bin server --addr 127.0.0.1:7450 --data-dir "$dir/data" > "$dir/log" 2>&1 &
srv=$!
for _ in $(seq 50); do curl -sf -o /dev/null 127.0.0.1:7450/readyz && break; sleep 0.1; done
python3 - <<'PY'
import json, urllib.request
jobs = [{"queue": "q%05d" % i, "kind": "k", "payload": {}} for i in range(10000)]
request = urllib.request.Request("http://127.0.0.1:7450/v1/jobs/batch",
    data=json.dumps({"jobs": jobs}).encode(), headers={"content-type": "application/json"})
assert urllib.request.urlopen(request).status == 201
PY
# Two 10 s history samples written (each slot is written once it has ended). Waiting on
# the clock is the point here: the samples are written every 10 s of real time.
sleep 25
for i in 1 2 3 4 5 6; do curl -s -o /dev/null -w "health $i: %{time_total}s\n" 127.0.0.1:7450/v1/health; done
sleep 10
for i in 1 2 3; do curl -s -o /dev/null -w "after the next sample $i: %{time_total}s\n" 127.0.0.1:7450/v1/health; done
kill $srv; wait $srv 2>/dev/null
