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
# stdout: target, seconds, runs, corpus size, crash/timeout/oom inputs found in this run.
#
# The same lines, with the date, the commit (and whether the tree was dirty), the arguments
# and the load average (1, 5, 15 min) before and after, are written to RESULT (default
# fuzz/results/YYYY-MM-DD-run-all-SECONDSs.txt): commit that file; the README's "Fuzzing" table
# names it. Every crash must become a regression input in tests/fixtures/fuzz/TARGET/
# (replayed by tests/fuzz_regressions.rs through the target's own body).
set -u
here=$(cd "$(dirname "$0")" && pwd)
secs=${1:-600}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(uboot_env partition_table inspect_probes layout_yaml vcdiff fwup_config fwup_archive)
bin=$here/target/x86_64-unknown-linux-gnu/release
seeds=${SEEDS_DIR:-$here/seeds}
mkdir -p "$here/results"
result=${RESULT:-$here/results/$(date -u +%Y-%m-%d)-run-all-${secs}s.txt}
commit=$(git -C "$here" rev-parse --short HEAD 2>/dev/null || echo unknown)
git -C "$here" diff --quiet HEAD 2>/dev/null || commit="$commit (dirty)"
{
    echo "# fuzz/run-all.sh $secs ${targets[*]}"
    echo "date:    $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "commit:  $commit"
    echo "host:    $(nproc) cores; nice $(nice)"
    echo "seeds:   $seeds"
    echo "limits:  -timeout=1 -rss_limit_mb=512 -max_len=262144 -fork=1 -ignore_timeouts=1"
    echo "loadavg before: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo
    echo "target: seconds, runs, exit, corpus files, new crash/timeout/oom inputs"
} >"$result"
for t in "${targets[@]}"; do
    [ -x "$bin/$t" ] || { echo "$t: not built (cargo +nightly fuzz build -O)" >&2; continue; }
    mkdir -p "$here/corpus/$t" "$here/artifacts/$t"
    log=$here/artifacts/$t.log
    before=$(find "$here/artifacts/$t" -type f | wc -l)
    start=$(date +%s)
    # shellcheck disable=SC2046
    "$bin/$t" "$here/corpus/$t" $( [ -d "$seeds/$t" ] && echo "$seeds/$t" ) \
        -fork=1 -ignore_timeouts=1 -max_total_time="$secs" -timeout=1 -rss_limit_mb=512 \
        -max_len=262144 -artifact_prefix="$here/artifacts/$t/" >"$log" 2>&1
    rc=$?
    runs=$(grep -o '^#[0-9]*' "$log" | tr -d '#' | tail -1)
    crashes=$(( $(find "$here/artifacts/$t" -type f | wc -l) - before ))
    corpus=$(find "$here/corpus/$t" -type f | wc -l)
    line="$t: $(( $(date +%s) - start )) s, ${runs:-?} runs, exit $rc, corpus $corpus, $crashes crash/timeout/oom inputs"
    echo "$line"
    echo "$line" >>"$result"
    find "$here/artifacts/$t" -type f -newermt "@$start" -printf '    %f\n' 2>/dev/null | head -20 >>"$result"
done
echo "loadavg after:  $(cut -d' ' -f1-3 /proc/loadavg)" >>"$result"
echo "summary: $result" >&2
