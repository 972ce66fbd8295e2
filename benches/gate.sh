#!/usr/bin/env bash
# The CI gate's error rates on real BEAM guests, with the settings of examples/ci/gate.sh
# (TCG, -m 110M, default thresholds): the same image gated against its own baseline GATES times
# (false alarms), and an image whose BEAM holds 8 % more memory gated GATES times (detections),
# interleaved so both see the same host load. Prints both rates.
#
#   benches/gate.sh                    # GATES=20 RUNS=3: 123 boots
#   GATES=20 RUNS=1 IMGTOOL=target/debug/imgtool benches/gate.sh   # 43 boots: 17 min measured
#                                                 # on 2 cores shared with other builds
#
# Reports and the two images stay in $OUT (default target/bench-gate) for a look at any miss.
set -euo pipefail
cd "$(dirname "$0")/.."

GATES=${GATES:-20}
RUNS=${RUNS:-3}           # boots per gate
BASE_RUNS=${BASE_RUNS:-3} # boots for the baseline
OUT=${OUT:-target/bench-gate}
if [ -z "${IMGTOOL:-}" ]; then
    cargo build --release -p imgtool
    IMGTOOL=target/release/imgtool
fi
rm -rf "$OUT"
mkdir -p "$OUT"

# A profile holding `bytes` of ballast in the BEAM (a binary kept as a persistent term); the
# baseline's is empty, so the two images differ only in what the program holds.
image() { # name bytes
    cat >"$OUT/$1.yaml" <<EOF
include: [nerves-tuned]
beam:
  args: [-eval, 'persistent_term:put(ballast, binary:copy(<<255>>, $2)).']
EOF
    "$IMGTOOL" rootfs build beam-guest --profile "$OUT/$1.yaml" -o "$OUT/$1.squashfs" >/dev/null
    "$IMGTOOL" build nerves-qemu-aarch64 -o "$OUT/$1.img" \
        -D kernel="$kernel" -D rootfs="$OUT/$1.squashfs" >/dev/null
}

validate() { # image json [validate args]
    local img=$1 json=$2
    shift 2
    "$IMGTOOL" validate "$img" --accel tcg -m 110M --no-net --runs "$RUNS" --json "$json" "$@"
}

field() { # json python-expression over r
    python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print($2)" "$1"
}

# Which figures a gate report failed on, and which were too noisy to judge.
verdicts() { # json verdict...
    python3 -c "
import json, sys
r = json.load(open(sys.argv[1]))
print(','.join(d['key'] for d in r['diff'] if d['verdict'] in sys.argv[2:]) or '-')" "$@"
}

kernel=$("$IMGTOOL" kernel build)
image base 0
start=$(date +%s)
RUNS=$BASE_RUNS validate "$OUT/base.img" "$OUT/base.json" >"$OUT/base.txt"
rss=$(field "$OUT/base.json" "r['guest']['program_rss_kib']")
ballast=$((rss * 1024 * 8 / 100))
image heavy "$ballast"
echo "baseline: $BASE_RUNS boots, BEAM RSS $rss KiB; heavy image: +$ballast bytes of ballast (8 %)"
echo "qemu $(field "$OUT/base.json" "r['qemu_version']"), $(field "$OUT/base.json" "r['accel']"), -m 110M, $RUNS runs per gate, default thresholds"

false_alarms=0
detected=0
noisy_same=0
noisy_heavy=0
for i in $(seq 1 "$GATES"); do
    for kind in same heavy; do
        img=$OUT/base.img
        [ $kind = same ] || img=$OUT/heavy.img
        json=$OUT/$kind-$i.json
        set +e
        validate "$img" "$json" --baseline "$OUT/base.json" >"$OUT/$kind-$i.txt" 2>"$OUT/$kind-$i.err"
        rc=$?
        set -e
        if [ $rc -gt 1 ]; then
            echo "gate $kind $i: error (exit $rc)" >&2
            cat "$OUT/$kind-$i.err" >&2
            exit 1
        fi
        failed=$(verdicts "$json" REGRESSED "MISSING now")
        noisy=$(verdicts "$json" "noise too high to judge")
        [ "$noisy" = - ] || { [ $kind = same ] && noisy_same=$((noisy_same + 1)) || noisy_heavy=$((noisy_heavy + 1)); }
        if [ $kind = same ]; then
            [ $rc = 0 ] || false_alarms=$((false_alarms + 1))
        else
            [ $rc = 0 ] || detected=$((detected + 1))
        fi
        printf 'gate %2d %-5s exit %d  failed on: %s  noisy: %s  (BEAM RSS %s KiB)\n' \
            "$i" $kind $rc "$failed" "$noisy" "$(field "$json" "r['guest']['program_rss_kib']")"
    done
done
secs=$(($(date +%s) - start))
grown=$(python3 -c "
import json, statistics, sys
b = json.load(open('$OUT/base.json'))['guest']['program_rss_kib']
h = [json.load(open('$OUT/heavy-%d.json' % i))['guest']['program_rss_kib'] for i in range(1, $GATES + 1)]
print('%+.1f %%' % ((statistics.median(h) / b - 1) * 100))")
echo
echo "heavy image's BEAM RSS vs the baseline's (median over its gates): $grown"
echo "false alarms (same image vs its own baseline): $false_alarms/$GATES ($((100 * false_alarms / GATES)) %)"
echo "detections (BEAM holds 8 % more):              $detected/$GATES ($((100 * detected / GATES)) %)"
echo "gates with a figure too noisy to judge: same $noisy_same/$GATES, heavy $noisy_heavy/$GATES"
echo "$((2 * GATES * RUNS + BASE_RUNS)) boots in $secs s; reports in $OUT"
