#!/usr/bin/env bash
# benches/record.sh - run one benchmark and keep its output as the committed run behind a README
# figure: benches/results/NAME-DATE.txt holds the command, the commit, the machine (cores,
# memory), the host's load average sampled every 5 s during the run (min, max, mean), the bench's
# own output and its exit status. A run that started with the 1-minute load average over 1 (other
# work on the machine; the bench's own threads raise it during the run) is marked LOADED in its
# first line: on this project's 2-core machine a loaded run flatters whichever side is less
# CPU-bound (issue 22), so such a figure is quoted as loaded or not at all.
#
#   usage: benches/record.sh BENCH [ARGS...]      e.g. benches/record.sh squashfs.sh
#   env:   RESULTS_DIR (default benches/results)
#
# Exits with the bench's status (a bench that failed leaves a file that says so).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
[ $# -ge 1 ] || { echo "usage: benches/record.sh BENCH [ARGS...]" >&2; exit 2; }
bench=$1
shift
[ -x "$here/$bench" ] || { echo "record.sh: no benchmark $here/$bench" >&2; exit 2; }
out_dir=${RESULTS_DIR:-$here/results}
mkdir -p "$out_dir"
name=${bench%.sh}
out=$out_dir/$name-$(date -u +%Y-%m-%dT%H%MZ).txt
tmp=$(mktemp "$out_dir/.$name.XXXXXX")
loads=$(mktemp)
sampler=""
trap 'rm -f "$tmp" "$loads"; [ -z "$sampler" ] || kill "$sampler" 2>/dev/null || true' EXIT

at_start=$(cut -d' ' -f1 /proc/loadavg)
(while :; do cut -d' ' -f1 /proc/loadavg >>"$loads"; sleep 5; done) &
sampler=$!
start=$(date +%s)
set +e
"$here/$bench" "$@" >"$tmp" 2>&1
status=$?
set -e
kill "$sampler" 2>/dev/null || true
cut -d' ' -f1 /proc/loadavg >>"$loads"
stats=$(awk 'NR==1{lo=$1;hi=$1} {s+=$1; if($1<lo)lo=$1; if($1>hi)hi=$1} END{printf "%.2f %.2f %.2f", lo, hi, s/NR}' "$loads")
read -r lo hi mean <<<"$stats"
loaded=$(awk -v h="$at_start" 'BEGIN{print (h > 1.0) ? "LOADED (load average " h " at the start)" : "quiet (load average " h " at the start)"}')
{
    echo "# benches/$bench $*: $loaded"
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ), $(( $(date +%s) - start )) s"
    echo "commit: $(git -C "$here" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "machine: $(nproc) cores, $(awk '/MemTotal/{printf "%.1f GiB", $2/1048576}' /proc/meminfo), $(uname -r)"
    echo "load average (1 min): $at_start at the start; during the run (every 5 s, the bench's own threads included) min $lo, max $hi, mean $mean"
    echo "exit status: $status"
    echo
    cat "$tmp"
} >"$out.part"
mv "$out.part" "$out"
cat "$out"
echo "record.sh: wrote $out" >&2
exit "$status"
