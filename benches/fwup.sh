#!/usr/bin/env bash
# benches/fwup.sh - create and apply a Nerves-sized .fw with real fwup and with imgtool's fwup,
# in the same run, on the same inputs; prints wall times, ratios and peak RSS.
#
#   usage: benches/fwup.sh [REAL_FWUP] [IMGTOOL]
#     REAL_FWUP  real fwup 1.16 (default: /tmp/fwup-oracle/bin/fwup from scripts/fwup-oracle,
#                then `fwup` on PATH)
#     IMGTOOL    imgtool binary (default: target/release/imgtool; build with cargo build --release)
#
# Inputs: a 30 MB kernel-like file (random + text), and a 40 MB squashfs of /usr/lib
# (mksquashfs, realistic mixed data). Needs squashfs-tools and GNU time (/usr/bin/time).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
REAL=${1:-/tmp/fwup-oracle/bin/fwup}
[ -x "$REAL" ] || REAL=$(command -v fwup || true)
IMG=${2:-$here/target/release/imgtool}
[ -x "$REAL" ] || { echo "fwup.sh: real fwup not found" >&2; exit 2; }
[ -x "$IMG" ] || { echo "fwup.sh: $IMG not built (cargo build --release -p imgtool)" >&2; exit 2; }
[ -x /usr/bin/time ] || { echo "fwup.sh: GNU time missing (apt-get install time)" >&2; exit 2; }
command -v mksquashfs >/dev/null || { echo "fwup.sh: mksquashfs missing (apt-get install squashfs-tools)" >&2; exit 2; }

W=$(mktemp -d /tmp/fwup-bench.XXXXXX)
trap 'rm -rf "$W"' EXIT
mkdir -p "$W/ours"
ln -s "$IMG" "$W/ours/fwup"
OURS=$W/ours/fwup

# Kernel: 20 MB incompressible + 10 MB text, like an arm64 Image with its initramfs.
# (`yes` stops when head closes the pipe; a `while cat` loop would not.)
head -c 20000000 /dev/urandom >"$W/Image"
set +o pipefail # yes and sort end on SIGPIPE once head/awk have enough
yes "$(head -c 4000 /usr/share/common-licenses/GPL-2 2>/dev/null || echo text)" |
    head -c 10000000 >>"$W/Image"
# Rootfs: a squashfs of ~120 MB of real files from /usr (libraries, data, docs), cut to
# 40 MB of filesystem bytes.
mkdir -p "$W/tree"
find /usr/lib /usr/share -type f -size -4M -printf '%s %p\n' 2>/dev/null | sort -k2 |
    awk '{ t += $1; print $2; if (t > 120000000) exit }' >"$W/files"
set -o pipefail
tar -cf - --files-from="$W/files" 2>/dev/null | tar -xf - -C "$W/tree"
mksquashfs "$W/tree" "$W/rootfs.full" -comp gzip -no-progress -quiet >/dev/null 2>&1
rm -rf "$W/tree"
[ "$(stat -c %s "$W/rootfs.full")" -ge 40000000 ] ||
    { echo "fwup.sh: squashfs of /usr is smaller than 40 MB" >&2; exit 2; }
head -c 40000000 "$W/rootfs.full" >"$W/rootfs.squashfs"
rm -f "$W/rootfs.full"

cat >"$W/fwup.conf" <<'CONF'
meta-product = "bench"
meta-version = "1.0.0"
file-resource Image { host-path = "Image" }
file-resource rootfs.img { host-path = "rootfs.squashfs" }
mbr mbr {
    partition 0 { block-offset = 131072 block-count = 262144 type = 0x83 }
    partition 1 { block-offset = 393216 block-count = 262144 type = 0x83 }
}
uboot-environment uboot-env { block-offset = 16 block-count = 256 }
task complete {
    on-init { mbr_write(mbr) uboot_clearenv(uboot-env) uboot_setenv(uboot-env, "a", "1") }
    on-resource Image { raw_write(2048) }
    on-resource rootfs.img { raw_write(131072) }
}
CONF

RUNS=${BENCH_RUNS:-3}
measure() { # measure NAME OUTPUT CMD... -> "best_secs max_rss_kb" over $RUNS runs
    local name=$1 output=$2; shift 2
    local best="" rss=0 t m
    for _ in $(seq "$RUNS"); do
        rm -f "$output"
        local t0 t1
        t0=$(date +%s%N)
        /usr/bin/time -f "%M" -o "$W/$name.time" "$@" >/dev/null 2>"$W/$name.err" ||
            { echo "fwup.sh: $name failed:" >&2; cat "$W/$name.err" >&2; exit 1; }
        t1=$(date +%s%N)
        t=$(python3 -c "print('%.3f' % (($t1 - $t0) / 1e9))")
        read -r m <"$W/$name.time"
        if [ -z "$best" ] || python3 -c "import sys; sys.exit(0 if $t < $best else 1)"; then best=$t; fi
        [ "$m" -gt "$rss" ] && rss=$m
    done
    echo "$best $rss"
}

cd "$W"
read -r rc_t rc_m < <(measure real-create real.fw "$REAL" -c -f fwup.conf -o real.fw)
read -r oc_t oc_m < <(measure ours-create ours.fw "$OURS" -c -f fwup.conf -o ours.fw)
read -r ra_t ra_m < <(measure real-apply real.img "$REAL" -a -q -d real.img -i real.fw -t complete)
read -r oa_t oa_m < <(measure ours-apply ours.img "$OURS" -a -q -d ours.img -i ours.fw -t complete)
cmp real.img ours.img && same=identical || same=DIFFERENT
# Cross-acceptance: each applies the other's archive.
"$REAL" -a -q -d x1.img -i ours.fw -t complete >/dev/null && cmp x1.img real.img && cross1=ok || cross1=FAIL
"$OURS" -a -q -d x2.img -i real.fw -t complete >/dev/null && cmp x2.img real.img && cross2=ok || cross2=FAIL

ratio() { python3 -c "print('%.2f' % ($1 / max($2, 0.001)))"; }
printf '%-8s %10s %10s %8s %14s %14s\n' op "fwup s" "ours s" "ours/fwup" "fwup RSS KB" "ours RSS KB"
printf '%-8s %10s %10s %8s %14s %14s\n' create "$rc_t" "$oc_t" "$(ratio "$oc_t" "$rc_t")" "$rc_m" "$oc_m"
printf '%-8s %10s %10s %8s %14s %14s\n' apply "$ra_t" "$oa_t" "$(ratio "$oa_t" "$ra_t")" "$ra_m" "$oa_m"
echo "archive sizes: fwup $(stat -c %s real.fw) B, ours $(stat -c %s ours.fw) B"
echo "images: $same; fwup applies ours: $cross1; ours applies fwup's: $cross2"
echo "best of $RUNS runs each; targets: apply <= 0.50, create <= 0.33, apply RSS < 65536 KB"
