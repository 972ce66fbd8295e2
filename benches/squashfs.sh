#!/usr/bin/env bash
# imgtool mkfs squashfs vs mksquashfs on the same ~140 MB tree of real files, in one run.
# For each compressor (default: gzip, then xz) prints each tool's wall time (hyperfine mean),
# CPU time (user + system), image size, and the ratios. The host's load average is printed
# too: on a shared machine the wall ratio moves with what else runs, the CPU ratio much less.
#
#   benches/squashfs.sh [--comp "gzip xz zstd lz4"] [--runs N] [--src DIR]
#
# The tree is a copy of /usr/lib/gcc and /usr/share/perl under /tmp (cached between runs),
# so both tools read the same files from the page cache.
set -euo pipefail

comps="gzip xz"
runs=3
src=""
while [ $# -gt 0 ]; do
    case "$1" in
        --comp) comps="$2"; shift 2 ;;
        --runs) runs="$2"; shift 2 ;;
        --src) src="$2"; shift 2 ;;
        *) echo "usage: $0 [--comp \"gzip xz zstd lz4\"] [--runs N] [--src DIR]" >&2; exit 2 ;;
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

command -v hyperfine >/dev/null || { echo "hyperfine missing: run scripts/install-deps" >&2; exit 1; }

# Warm the page cache so neither tool pays for the first read.
cat $(find "$src" -type f) >/dev/null 2>&1 || true

echo "tree: $src ($tree_bytes bytes, $tree_files entries), $(nproc) cores"
summary=()
for comp in $comps; do
    ours="$work/imgtool.$comp.sqfs"
    theirs="$work/mksquashfs.$comp.sqfs"
    echo
    echo "== $comp (load average: $(cut -d' ' -f1-3 /proc/loadavg))"
    hyperfine --warmup 1 --runs "$runs" --export-json "$work/hyperfine.$comp.json" \
        -n imgtool "$imgtool mkfs squashfs $src -o $ours --comp $comp" \
        -n mksquashfs "mksquashfs $src $theirs -comp $comp -noappend -quiet -no-progress"
    line=$(python3 - "$work/hyperfine.$comp.json" "$(stat -c %s "$ours")" "$(stat -c %s "$theirs")" "$comp" <<'EOF2'
import json, sys
r = {x["command"]: x for x in json.load(open(sys.argv[1]))["results"]}
so, st, comp = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
o, t = r["imgtool"], r["mksquashfs"]
co, ct = o["user"] + o["system"], t["user"] + t["system"]
size = (so / st - 1) * 100
print(f"{comp:5} wall {o['mean']:7.2f} s vs {t['mean']:7.2f} s = {o['mean']/t['mean']:.3f}x"
      f" ({'faster' if o['mean'] <= t['mean'] else 'SLOWER'});"
      f" cpu {co:7.2f} s vs {ct:7.2f} s = {co/ct:.3f}x;"
      f" size {so} vs {st} = {size:+.2f}% ({'within' if abs(size) <= 2 else 'OUTSIDE'} 2%)")
EOF2
)
    echo "$line"
    summary+=("$line")
done
echo
echo "imgtool/mksquashfs:"
printf '  %s\n' "${summary[@]}"
