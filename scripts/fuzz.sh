#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ for the given seconds (default 600), one after the other,
# starting from its checked-in corpus (fuzz/corpus/<target>, left unchanged); new inputs go
# to fuzz/work/<target> (ignored by git). Stops at the first crash, whose input is left in
# fuzz/artifacts/<target>/. Not run by CI. See docs/reliability.md, "Fuzzing".
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`). Works on the stable toolchain through
# RUSTC_BOOTSTRAP=1 (cargo-fuzz passes nightly-only -Z flags). No sanitizer: the crates
# forbid unsafe code, and without ASan a run is about twice as fast; debug assertions and
# overflow checks are on (-a).
#
#   scripts/fuzz.sh [seconds] [target...]
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-600}"
shift || true
targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
    targets=(wal_frames snapshot event requests stream_batch)
fi
export RUSTC_BOOTSTRAP=1
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
for target in "${targets[@]}"; do
    echo "== fuzz $target for ${seconds}s"
    mkdir -p "work/$target"
    nice -n 10 cargo fuzz run --sanitizer none --debug-assertions "$target" \
        "work/$target" "corpus/$target" -- \
        -max_total_time="$seconds" -timeout=60 -rss_limit_mb=2048 -print_final_stats=1
done
