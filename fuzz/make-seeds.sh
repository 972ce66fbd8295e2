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
# Partition tables (sfdisk, when installed): a 200-sector MBR and a GPT disk, whole (they are
# far below -max_len).
if command -v sfdisk >/dev/null; then
    for label in dos gpt; do
        f=$here/seeds/partition_table/$label-200s
        truncate -s $((200 * 512)) "$f"
        printf 'label: %s\nstart=40, size=20, type=%s, bootable\nstart=80, size=40\n' \
            "$label" "$([ $label = gpt ] && echo C12A7328-F81F-11D2-BA4B-00A0C93EC93B || echo c)" |
            sfdisk -q --no-reread --no-tell-kernel "$f" >/dev/null 2>&1 || rm -f "$f"
    done
fi
for t in "$here"/seeds/*; do echo "$(basename "$t"): $(find "$t" -type f | wc -l) seeds"; done
