#!/usr/bin/env bash
# A/B: lifecycle-batch with no /v1/events subscriber, with one reading every event, and
# with one reading what the dashboard asks for (stats, queue and alert events).
set -u
cd "$(dirname "$0")/.."
bin=target/release/sluice
for round in 1 2; do
  for mode in none all dashboard; do
    rm -rf /tmp/sse-ab && mkdir -p /tmp/sse-ab
    $bin server --addr 127.0.0.1:7450 --data-dir /tmp/sse-ab/data > /tmp/sse-ab.log 2>&1 &
    srv=$!
    for _ in $(seq 50); do curl -sf -o /dev/null 127.0.0.1:7450/readyz && break; sleep 0.1; done
    sub=
    if [ $mode = all ]; then
      curl -sN 127.0.0.1:7450/v1/events > /tmp/sse-ab/events.txt &
      sub=$!
    elif [ $mode = dashboard ]; then
      curl -sN '127.0.0.1:7450/v1/events?types=stats,queue,alert' > /tmp/sse-ab/events.txt &
      sub=$!
    fi
    sleep 0.5  # let the subscriber connect before the load starts (not a measurement)
    line=$($bin bench --url http://127.0.0.1:7450 --scenario lifecycle-batch --jobs 300000 2>&1 | grep lifecycle)
    events=0
    if [ -n "$sub" ]; then kill $sub; events=$(grep -c '^event: job' /tmp/sse-ab/events.txt); fi
    echo "round $round $mode: $line (job events read: $events)"
    kill $srv; wait $srv 2>/dev/null
  done
done
