#!/usr/bin/env bash
# Boot time and qemu memory: imgtool's loader vs qemu booting the same kernel itself (-kernel
# Image -append ..., the peer), same disk image, same root filesystem, TCG, same run.
#
# Measures wall time from spawning qemu to console lines ("Starting Linux" from the loader,
# "Booting Linux" from the kernel, the rootfs init's marker) and qemu's peak RSS (GNU time %M).
# Usage: benches/boot.sh [RUNS]   (env IMGTOOL=path to use a built binary)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-5}
if [[ -z "${IMGTOOL:-}" ]]; then
    # imgtool only writes the image and the loader here (nothing it does is timed), and the
    # embedded loader is always a release build, so the debug binary the tests use will do.
    cargo build -q -p imgtool
    IMGTOOL=${CARGO_TARGET_DIR:-target}/debug/imgtool
fi
for t in qemu-system-aarch64 mksquashfs /usr/bin/time; do
    command -v "$t" >/dev/null || { echo "missing $t: run scripts/install-deps" >&2; exit 1; }
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# KERNEL=path uses that Image instead of `imgtool kernel build`.
kernel=${KERNEL:-$("$IMGTOOL" kernel build --arch aarch64 | tail -n 1)}

# A root filesystem whose init prints a marker and powers off.
mkdir -p "$work/root/sbin" "$work/root/dev"
rustc --edition 2021 --target aarch64-unknown-linux-musl -C panic=abort -C opt-level=s \
    -C linker=rust-lld -C linker-flavor=ld.lld -C link-self-contained=no \
    -C relocation-model=static -C link-arg=-static -C link-arg=--entry=_start \
    -o "$work/root/sbin/init" loader/test-init/init.rs
echo BENCH-MARKER > "$work/root/marker"
mksquashfs "$work/root" "$work/root.sqfs" -all-root -noappend -quiet -comp xz >/dev/null
args="root=/dev/vda1 rootfstype=squashfs console=ttyAMA0 rootwait ro panic=-1"
"$IMGTOOL" build nerves-qemu-aarch64 -o "$work/disk.img" -D "kernel=$kernel" \
    -D "rootfs=$work/root.sqfs" -D "cmdline=console=ttyAMA0 rootwait ro panic=-1" >/dev/null
"$IMGTOOL" loader write "$work/loader.elf" 2>/dev/null

common=(-M virt -cpu cortex-a53 -m 128M -nographic -no-reboot -nic none
    -global virtio-mmio.force-legacy=false -device virtio-rng-device
    -drive "if=none,file=$work/disk.img,format=raw,id=d0" -device virtio-blk-device,drive=d0)

# run LABEL QEMU-ARGS...: prints "t_start t_linux t_marker rss_kb" (t_start: "Starting Linux",
# or - when the line does not exist).
run() {
    local t0 ts=- tl=- tm=- line now
    t0=$EPOCHREALTIME
    while IFS= read -r line; do
        now=$EPOCHREALTIME
        case $line in
            *"Starting Linux"*) [[ $ts == - ]] && ts=$(bc <<<"$now - $t0") ;;
            *"Booting Linux"*) [[ $tl == - ]] && tl=$(bc <<<"$now - $t0") ;;
            *"init: marker: BENCH-MARKER"*) [[ $tm == - ]] && tm=$(bc <<<"$now - $t0") ;;
        esac
    done < <(timeout 120 /usr/bin/time -f %M -o "$work/rss" qemu-system-aarch64 "$@" 2>&1)
    echo "$ts $tl $tm $(tail -n 1 "$work/rss")"
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

# Interleaved, so both modes see the same machine load.
: >"$work/loader"
: >"$work/direct"
for ((i = 0; i < RUNS; i++)); do
    run "${common[@]}" -kernel "$work/loader.elf" >>"$work/loader"
    run "${common[@]}" -kernel "$kernel" -append "$args" >>"$work/direct"
done
declare -A col
for mode in loader direct; do
    for c in 1 2 3 4; do
        col[$mode.$c]=$(awk -v c=$c '$c != "-" {print $c}' "$work/$mode" | median)
    done
done

echo "boot to the rootfs marker, arm64 virt, TCG cortex-a53, -m 128M, median of $RUNS runs"
echo "kernel: $kernel ($(stat -c %s "$kernel") bytes)"
printf '%-28s %14s %14s %14s %12s\n' mode "Starting Linux" "Booting Linux" marker "qemu RSS"
printf '%-28s %13.3fs %13.3fs %13.3fs %9.0f MB\n' "imgtool loader (disk)" \
    "${col[loader.1]}" "${col[loader.2]}" "${col[loader.3]}" "$(bc <<<"${col[loader.4]} / 1024")"
printf '%-28s %14s %13.3fs %13.3fs %9.0f MB\n' "qemu -kernel Image (peer)" - \
    "${col[direct.2]}" "${col[direct.3]}" "$(bc <<<"${col[direct.4]} / 1024")"
# Overheads: the loader's time to the kernel's first line and to the marker, minus the peer's.
delta() { printf '%+.3f' "$(bc <<<"scale=6; $1 - $2")"; }
ratio() { printf '%.3f' "$(bc <<<"scale=6; $1 / $2")"; }
echo "loader overhead to Booting Linux: $(delta "${col[loader.2]}" "${col[direct.2]}") s," \
    "to marker: $(delta "${col[loader.3]}" "${col[direct.3]}") s" \
    "(marker ratio loader/peer $(ratio "${col[loader.3]}" "${col[direct.3]}"); target < 0.2 s)"
echo "qemu RSS ratio loader/peer: $(ratio "${col[loader.4]}" "${col[direct.4]}")"
