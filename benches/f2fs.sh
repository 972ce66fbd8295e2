#!/usr/bin/env bash
# Format a 150 MiB region with `imgtool mkfs f2fs` and with mkfs.f2fs (f2fs-tools) on a file of
# the same size, in the same run: wall time per format (mean of RUNS), allocated bytes (du),
# and the ratios. Usage: benches/f2fs.sh [RUNS]   (env IMGTOOL=path to skip the release build)
set -euo pipefail
RUNS=${1:-20}
SIZE_MIB=150
cd "$(dirname "$0")/.."
if [[ -z "${IMGTOOL:-}" ]]; then
    cargo build --release -q -p imgtool
    IMGTOOL="${CARGO_TARGET_DIR:-target}/release/imgtool"
fi
MKFS=$(command -v mkfs.f2fs || echo /usr/sbin/mkfs.f2fs)
[[ -x "$MKFS" ]] || { echo "mkfs.f2fs not found: run scripts/install-deps" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Mean wall time in microseconds of RUNS runs of "$@"; $PREP runs before each, untimed.
time_runs() {
    local total=0 t0 t1
    for _ in $(seq "$RUNS"); do
        eval "$PREP"
        t0=$(date +%s%N)
        "$@" >/dev/null 2>&1
        t1=$(date +%s%N)
        total=$((total + (t1 - t0) / 1000))
    done
    echo $((total / RUNS))
}

ours="$work/ours.img"
theirs="$work/theirs.img"
PREP="rm -f '$ours'" ours_us=$(time_runs "$IMGTOOL" mkfs f2fs "$ours" --size ${SIZE_MIB}MiB --label BENCH)
PREP="rm -f '$theirs'; truncate -s ${SIZE_MIB}M '$theirs'" \
    theirs_us=$(time_runs "$MKFS" -f -l BENCH "$theirs")
ours_kib=$(du -k "$ours" | cut -f1)
theirs_kib=$(du -k "$theirs" | cut -f1)

printf 'f2fs format of a %d MiB region, mean of %d runs each\n' "$SIZE_MIB" "$RUNS"
printf '%-22s %12s %16s\n' tool "time (ms)" "allocated (KiB)"
printf '%-22s %12.3f %16d\n' "imgtool mkfs f2fs" "$(echo "$ours_us / 1000" | bc -l)" "$ours_kib"
printf '%-22s %12.3f %16d\n' "mkfs.f2fs $("$MKFS" -V 2>&1 | awk '{print $2}')" \
    "$(echo "$theirs_us / 1000" | bc -l)" "$theirs_kib"
printf 'ratio (mkfs.f2fs / imgtool): time %.1fx, allocated %.1fx\n' \
    "$(echo "$theirs_us / $ours_us" | bc -l)" "$(echo "$theirs_kib / $ours_kib" | bc -l)"
