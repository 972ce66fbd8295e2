#!/usr/bin/env bash
# benches/fwup-parser.sh - `fwup -c` on a fwup.conf with one very long line, real fwup 1.16
# and imgtool's fwup in the same run; prints each one's time per line length and the ratio.
# Real fwup's lexer is quadratic on a long comment line (issue 12); ours must stay linear.
#
#   usage: benches/fwup-parser.sh [REAL_FWUP] [IMGTOOL] [MIB...]
#     REAL_FWUP  default /tmp/fwup-oracle/bin/fwup (scripts/fwup-oracle), then `fwup` on PATH
#     IMGTOOL    default target/release/imgtool (cargo build --release -p imgtool)
#     MIB        line lengths in MiB, default "1 2 10"
#   env: LIMIT  seconds before a run is stopped and shown as ">LIMIT" (default 150)
#        UNCLOSED_MIB  line lengths for unclosed-var (default 1: real fwup takes minutes)
#
# Lines: `comment` (# and N MiB of text), `define` (an N MiB quoted define value), and
# `unclosed-var` (a last line of N MiB of "${" with no closing brace: an error, which must
# come quickly too).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
REAL=${1:-/tmp/fwup-oracle/bin/fwup}
[ -x "$REAL" ] || REAL=$(command -v fwup || true)
IMG=${2:-$here/target/release/imgtool}
shift 2 2>/dev/null || shift $#
SIZES=${*:-1 2 10}
[ -x "$REAL" ] || { echo "fwup-parser.sh: real fwup not found" >&2; exit 2; }
[ -x "$IMG" ] || { echo "fwup-parser.sh: $IMG not built (cargo build --release -p imgtool)" >&2; exit 2; }
IMG=$(realpath "$IMG")

W=$(mktemp -d /tmp/fwup-parser-bench.XXXXXX)
trap 'rm -rf "$W"' EXIT
mkdir -p "$W/ours"
ln -s "$IMG" "$W/ours/fwup"
OURS=$W/ours/fwup

make_conf() { # make_conf KIND MIB FILE
    python3 - "$1" "$2" "$3" <<'PY'
import sys
kind, mib, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
n = mib << 20
body = 'meta-product = "parser bench"\nmeta-version = "1.0.0"\n' \
       'task complete {\n    on-init { info("done") }\n}\n'
if kind == 'comment':
    text = '# ' + 'x' * n + '\n' + body
elif kind == 'define':
    text = 'define(BIG, "' + 'x' * n + '")\n' + body
else:  # unclosed-var: nothing after it closes a ${
    text = body + 'meta-description = "' + '${' * (n // 2) + '\n'
open(path, 'w').write(text)
PY
}

LIMIT=${LIMIT:-150}
secs() { # secs CMD... -> wall seconds, or ">LIMIT" (the exit status is ignored otherwise:
    local t0 t1 rc=0 #       unclosed-var is an error)
    t0=$(date +%s%N)
    timeout "$LIMIT" "$@" >/dev/null 2>&1 || rc=$?
    t1=$(date +%s%N)
    if [ "$rc" = 124 ]; then echo ">$LIMIT"; else python3 -c "print('%.3f' % (($t1 - $t0) / 1e9))"; fi
}

cd "$W"
printf '%-13s %5s %10s %10s %10s\n' line MiB "fwup s" "ours s" "fwup/ours"
for kind in comment define unclosed-var; do
    sizes=$SIZES
    [ "$kind" = unclosed-var ] && sizes=${UNCLOSED_MIB:-1}
    for mib in $sizes; do
        make_conf "$kind" "$mib" "$kind.conf"
        r=$(secs "$REAL" -c -f "$kind.conf" -o real.fw)
        o=$(secs "$OURS" -c -f "$kind.conf" -o ours.fw)
        # comment and define are valid: both must have written an archive.
        if [ "$kind" != unclosed-var ]; then
            [ -s ours.fw ] || { echo "fwup-parser.sh: ours failed on $kind" >&2; exit 1; }
            [ "${r:0:1}" = ">" ] || [ -s real.fw ] ||
                { echo "fwup-parser.sh: fwup failed on $kind" >&2; exit 1; }
        fi
        printf '%-13s %5s %10s %10s %10s\n' "$kind" "$mib" "$r" "$o" \
            "$(python3 -c "r = '$r'; print(('>' if r[0] == '>' else '') + '%.0f' % (float(r.lstrip('>')) / max(float('$o'.lstrip('>')), 0.001)))")"
        rm -f "$kind.conf" real.fw ours.fw
    done
done
echo "linear: time grows with the line length; quadratic: 2x the line, 4x the time"
