#!/usr/bin/env bash
# fuzz/run-all.sh - run every fuzz target, one after another, for SECONDS each (default 600),
# with the limits the project holds them to: 1 s per input, 512 MiB RSS.
#
#   usage: fuzz/run-all.sh [SECONDS] [TARGET...]
#   needs: cargo +nightly fuzz build -O   (run in fuzz/ first)
#
# libFuzzer runs in fork mode with one worker (-fork=1) so that a timeout on a loaded machine
# is recorded in fuzz/artifacts/TARGET and the run goes on; replay each one alone
# (./target/x86_64-unknown-linux-gnu/release/TARGET FILE) to tell a real hang from load.
#
# Seeds: SEEDS_DIR/TARGET (default fuzz/seeds/TARGET, optional). The corpus grows in
# fuzz/corpus/TARGET; crashes land in fuzz/artifacts/TARGET. One line per target goes to
# stdout: target, seconds, runs, crashes found. Every crash must become a regression test
# (tests/fuzz_regressions.rs in fwup-compat, or the owning crate's tests).
set -u
here=$(cd "$(dirname "$0")" && pwd)
secs=${1:-600}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(uboot_env partition_table inspect_probes layout_yaml vcdiff fwup_config fwup_archive)
bin=$here/target/x86_64-unknown-linux-gnu/release
seeds=${SEEDS_DIR:-$here/seeds}
for t in "${targets[@]}"; do
    [ -x "$bin/$t" ] || { echo "$t: not built (cargo +nightly fuzz build -O)" >&2; continue; }
    mkdir -p "$here/corpus/$t" "$here/artifacts/$t"
    log=$here/artifacts/$t.log
    start=$(date +%s)
    # shellcheck disable=SC2046
    "$bin/$t" "$here/corpus/$t" $( [ -d "$seeds/$t" ] && echo "$seeds/$t" ) \
        -fork=1 -ignore_timeouts=1 -max_total_time="$secs" -timeout=1 -rss_limit_mb=512 \
        -max_len=262144 -artifact_prefix="$here/artifacts/$t/" >"$log" 2>&1
    rc=$?
    runs=$(grep -o '^#[0-9]*' "$log" | tr -d '#' | tail -1)
    crashes=$(find "$here/artifacts/$t" -type f | wc -l)
    echo "$t: $(( $(date +%s) - start )) s, ${runs:-?} runs, exit $rc, $crashes crash/timeout/oom inputs"
done
