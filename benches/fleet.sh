#!/usr/bin/env bash
# Guests per host: N template clones of the `minimal` BEAM demo image vs cold boots of the same
# image (the peer), same run, same machine, same accelerator.
#
# Clones: `imgtool template` once, then `imgtool fleet run --count N --hold HOLD`: spawn-to-answer
# p50/p95/p99/max, marginal host memory per guest (summed PSS / N and the MemAvailable drop / N,
# at the end of the hold), CPU per idle guest. Cold boots: `imgtool experiment` with `start:
# boot` and COLD guests at once (default 8): boot-to-ready and settled PSS per guest.
#
# Usage: benches/fleet.sh [N] [HOLD_SECONDS] [COLD]   e.g. benches/fleet.sh 64 600 8
#        (env IMGTOOL=path to use a built binary; KEEP=1 keeps the work directory; KSM=auto|on|off)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-64}
HOLD=${2:-60}
COLD=${3:-8}
if [[ -z "${IMGTOOL:-}" ]]; then
    cargo build -q --release -p imgtool
    IMGTOOL=${CARGO_TARGET_DIR:-target}/release/imgtool
fi
command -v qemu-system-aarch64 >/dev/null || { echo "missing qemu: run scripts/install-deps" >&2; exit 1; }
command -v jq >/dev/null || { echo "missing jq: apt-get install jq" >&2; exit 1; }

work=$(mktemp -d /var/tmp/imgtool-fleet-bench.XXXXXX)
[[ -n "${KEEP:-}" ]] || trap 'rm -rf "$work"' EXIT
echo "work: $work" >&2

"$IMGTOOL" demo --profile minimal --out "$work/demo" --no-boot >&2
img=$work/demo/special.img

# Cold boots first (nothing else of ours running), then the template and the clones.
cat > "$work/cold.yaml" <<EOF
name: cold boots of the minimal demo image
profiles: [minimal]
images: { minimal: $img }
guests: $COLD
start: boot
settle: 10
timeout: 900
EOF
"$IMGTOOL" experiment "$work/cold.yaml" -o "$work/cold" >&2
cold_ready=$(jq '[.profiles[0].reports[].boot.marker_s] | sort | .[length/2|floor]' "$work/cold/results.json")
cold_pss=$(jq --argjson n "$COLD" '.profiles[0].groups[0].pss_sum_kib / 1024 / $n' "$work/cold/results.json")

"$IMGTOOL" template "$img" -o "$work/template" --profile minimal --json > "$work/template.json"
# The report is printed even when the fleet failed (a clone died, one never answered), and the
# script then exits with the fleet's status.
status=0
"$IMGTOOL" fleet run "$work/template" --count "$N" --hold "$HOLD" --ksm "${KSM:-auto}" \
    --interval 60 --json "$work/fleet.json" >&2 || status=$?
f=$work/fleet.json
jq -r --arg cold_ready "$cold_ready" --arg cold_pss "$cold_pss" --argjson cold "$COLD" '
  "accelerator: \(.accel); clones: \(.count), ready \(.ready), failed \(.failed); held \(.hold_s|floor) s",
  "clones: spawn-to-answer p50 \(.spawn_s.p50) s, p95 \(.spawn_s.p95) s, p99 \(.spawn_s.p99) s, max \(.spawn_s.max) s; all \(.count) up after \(.all_ready_s) s",
  "KSM: \(.ksm.mode) → \(if .ksm.on then "on, \(.ksm.pages_sharing * 4 / 1024 | floor) MiB merged, ksmd \(.cpu.ksmd_pct*100|round/100) % of a core (in the CPU figure)" else "off" end)",
  "clones: marginal PSS \(.memory.marginal_pss_mib*10|round/10) MiB/guest, MemAvailable drop \(.memory.marginal_available_mib*10|round/10) MiB/guest, CPU \(.cpu.idle_pct_per_guest*1000|round/1000) % of a core/guest",
  "cold boots (\($cold) at once): boot-to-ready median \($cold_ready) s, settled PSS \($cold_pss|tonumber*10|round/10) MiB/guest",
  "ratio clone/cold: start \((.spawn_s.p50 / ($cold_ready|tonumber))*1000|round/1000)x, memory (PSS) \((.memory.marginal_pss_mib / ($cold_pss|tonumber))*100|round/100)x"
' "$f"
exit "$status"
