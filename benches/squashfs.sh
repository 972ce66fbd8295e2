#!/usr/bin/env bash
# imgtool mkfs squashfs vs mksquashfs on the same ~140 MB tree of real files, in one run.
# Prints each tool's time (hyperfine mean, or /usr/bin/time), image sizes and the ratios.
#
#   benches/squashfs.sh [--comp gzip|xz|zstd|lz4] [--runs N] [--src DIR]
#
# The tree is a copy of /usr/lib/gcc and /usr/share/perl under /tmp (cached between runs),
# so both tools read the same files from the page cache.
set -euo pipefail

comp=gzip
runs=3
src=""
while [ $# -gt 0 ]; do
    case "$1" in
        --comp) comp="$2"; shift 2 ;;
        --runs) runs="$2"; shift 2 ;;
        --src) src="$2"; shift 2 ;;
        *) echo "usage: $0 [--comp gzip|xz|zstd|lz4] [--runs N] [--src DIR]" >&2; exit 2 ;;
    esac
done

root="$(cd "$(dirname "$0")/.." && pwd)"
work=/tmp/imgtool-bench-squashfs
mkdir -p "$work"

command -v mksquashfs >/dev/null || { echo "mksquashfs missing: run scripts/install-deps" >&2; exit 1; }

if [ -z "$src" ]; then
    src="$work/tree"
    if [ ! -f "$work/tree.done" ]; then
        rm -rf "$src"
        mkdir -p "$src"
        for d in /usr/lib/gcc /usr/share/perl; do
            [ -d "$d" ] && cp -a "$d" "$src/$(basename "$d")"
        done
        touch "$work/tree.done"
    fi
fi
tree_bytes=$(du -sb "$src" | cut -f1)
tree_files=$(find "$src" | wc -l)

echo "building release imgtool..."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
(cd "$root" && cargo build --release -p imgtool -q)
imgtool="$CARGO_TARGET_DIR/release/imgtool"

ours="$work/imgtool.sqfs"
theirs="$work/mksquashfs.sqfs"
ours_cmd="$imgtool mkfs squashfs $src -o $ours --comp $comp"
theirs_cmd="mksquashfs $src $theirs -comp $comp -noappend -quiet -no-progress"

# Warm the page cache so neither tool pays for the first read.
cat $(find "$src" -type f) >/dev/null 2>&1 || true

echo "tree: $src ($tree_bytes bytes, $tree_files entries), compressor $comp, $(nproc) cores"
if command -v hyperfine >/dev/null; then
    hyperfine --warmup 1 --runs "$runs" --export-json "$work/hyperfine.json" \
        -n imgtool "$ours_cmd" -n mksquashfs "$theirs_cmd"
    read -r t_ours t_theirs < <(python3 - "$work/hyperfine.json" <<'EOF'
import json, sys
r = {x["command"]: x["mean"] for x in json.load(open(sys.argv[1]))["results"]}
print(r["imgtool"], r["mksquashfs"])
EOF
)
else
    t() { local s e; s=$(date +%s.%N); "$@" >/dev/null; e=$(date +%s.%N); echo "$e - $s" | bc; }
    t_ours=$(t $ours_cmd)
    t_theirs=$(t $theirs_cmd)
fi

s_ours=$(stat -c %s "$ours")
s_theirs=$(stat -c %s "$theirs")
echo
printf '%-12s %10s %14s\n' tool seconds bytes
printf '%-12s %10.3f %14d\n' imgtool "$t_ours" "$s_ours"
printf '%-12s %10.3f %14d\n' mksquashfs "$t_theirs" "$s_theirs"
python3 - "$t_ours" "$t_theirs" "$s_ours" "$s_theirs" <<'EOF'
import sys
to, tt, so, st = map(float, sys.argv[1:])
print(f"time ratio imgtool/mksquashfs: {to/tt:.3f} ({'faster' if to <= tt else 'SLOWER'})")
print(f"size ratio imgtool/mksquashfs: {so/st:.4f} ({(so/st-1)*100:+.2f}%)")
EOF
