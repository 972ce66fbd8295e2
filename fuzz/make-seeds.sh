#!/usr/bin/env bash
# fuzz/make-seeds.sh - gather seeds for run-all.sh into fuzz/seeds/TARGET from the repository's
# own fixtures (not committed; rerun any time): fwup configs and .fw cases, the built-in
# layouts, and every kept regression input of each target.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
rm -rf "$here/seeds"
mkdir -p "$here"/seeds/{uboot_env,partition_table,inspect_probes,layout_yaml,vcdiff,fwup_config,fwup_archive}
n=0
copy() { # copy FILE TARGET
    n=$((n + 1))
    cp "$1" "$here/seeds/$2/$n-$(basename "$1")"
}
for f in "$root"/tests/fixtures/fwup/*/*.conf; do copy "$f" fwup_config; done
for f in "$root"/tests/fixtures/fwup/*/*.fw; do copy "$f" fwup_archive; done
for f in "$root"/layout/builtin/*.yaml; do copy "$f" layout_yaml; done
for d in "$root"/tests/fixtures/fuzz/*/; do
    t=$(basename "$d")
    for f in "$d"*; do [ -f "$f" ] && copy "$f" "$t"; done
done
# U-Boot env: a single 256-byte block, and a redundant pair of 128-byte copies (flags 1 and 2).
python3 - "$here/seeds/uboot_env" <<'PY'
import sys, zlib, struct
out = sys.argv[1]
def block(size, flag, pairs):
    data = b"".join(k + b"=" + v + b"\0" for k, v in pairs) + b"\0"
    hl = 4 if flag is None else 5
    data = data + b"\xff" * (size - hl - len(data))
    head = struct.pack("<I", zlib.crc32(data)) + (b"" if flag is None else bytes([flag]))
    return head + data
v = [(b"bootcmd", b"run a"), (b"a_b", b"a"), (b"nerves_fw_active", b"b")]
open(out + "/single-256", "wb").write(block(256, None, v))
open(out + "/redundant-2x128", "wb").write(block(128, 1, v) + block(128, 2, v[:2]))
PY
for t in "$here"/seeds/*; do echo "$(basename "$t"): $(find "$t" -type f | wc -l) seeds"; done
