#!/usr/bin/env bash
# A CI memory gate for a guest image: boot it a few times under qemu, take each figure's median,
# compare with a committed baseline, exit 1 on a regression. Copy this folder into your
# repository; imgtool-gate.yml (GitHub Actions) calls it. Tested by imgtool's tests/readme.rs.
#
#   examples/ci/gate.sh                # build the image (or take $IMAGE) and gate it
#   REFRESH=1 examples/ci/gate.sh      # measure and write a new baseline, on purpose
#
# Settings (environment, all optional):
#   IMAGE     the image to gate [default: build one: imgtool's kernel, the BEAM root filesystem
#             and the Nerves qemu aarch64 layout, as in the README's main job]
#   BASELINE  the committed baseline [default: baseline.json beside this script]
#   RUNS      boots per gate; the gate judges medians and calls a change inside the runs' own
#             spread "noise too high to judge" [default: 3]
#   ACCEL     qemu accelerator; a baseline only compares with runs under the same one, so it is
#             pinned [default: tcg, which every runner has]
#   MEMORY    guest RAM (qemu -m); pinned for the same reason [default: 110M]
#   IMGTOOL   the imgtool binary [default: `imgtool` on PATH, else built from this checkout]
#   WORK      where the image and report.json go [default: a new temporary directory]
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
BASELINE=${BASELINE:-$here/baseline.json}
RUNS=${RUNS:-3}
ACCEL=${ACCEL:-tcg}
MEMORY=${MEMORY:-110M}
WORK=${WORK:-$(mktemp -d)}
mkdir -p "$WORK"

# 1. What is needed: qemu, and to build an image, the arm64 cross compiler and kernel source.
declare -A need=()
command -v qemu-system-aarch64 >/dev/null || need[qemu-system-arm]=1
if [ -z "${IMAGE:-}" ]; then
    command -v aarch64-linux-gnu-gcc >/dev/null ||
        need[gcc-aarch64-linux-gnu]=1 need[binutils-aarch64-linux-gnu]=1
    [ -f /usr/src/linux-source-6.1.tar.xz ] || need[linux-source-6.1]=1
    for t in make flex bison bc; do command -v "$t" >/dev/null || need[$t]=1; done
    [ -f /usr/include/openssl/ssl.h ] || need[libssl-dev]=1
    [ -f /usr/include/libelf.h ] || need[libelf-dev]=1
fi
if [ ${#need[@]} -gt 0 ]; then
    sudo=
    [ "$(id -u)" = 0 ] || sudo=sudo
    export DEBIAN_FRONTEND=noninteractive
    # Debian bookworm's own qemu is 7.2; the baseline was measured under bookworm-backports' 10.0.
    if grep -qs 'VERSION_CODENAME=bookworm' /etc/os-release &&
        ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/; then
        echo "deb http://deb.debian.org/debian bookworm-backports main" |
            $sudo tee /etc/apt/sources.list.d/bookworm-backports.list >/dev/null
    fi
    $sudo apt-get update -qq
    pkgs=("${!need[@]}")
    rest=()
    for p in "${pkgs[@]}"; do [ "$p" = qemu-system-arm ] || rest+=("$p"); done
    [ ${#rest[@]} -eq 0 ] || $sudo apt-get install -y -qq --no-install-recommends "${rest[@]}"
    if [ -n "${need[qemu-system-arm]:-}" ]; then
        if grep -rqs bookworm-backports /etc/apt/sources.list.d/ /etc/apt/sources.list; then
            $sudo apt-get install -y -qq --no-install-recommends -t bookworm-backports qemu-system-arm
        else
            $sudo apt-get install -y -qq --no-install-recommends qemu-system-arm
        fi
    fi
fi

# 2. imgtool: the given one, the one on PATH, or a release build of this checkout.
if [ -z "${IMGTOOL:-}" ]; then
    if command -v imgtool >/dev/null; then
        IMGTOOL=imgtool
    else
        root=$(cd "$here/../.." && pwd)
        rustup target add aarch64-unknown-none aarch64-unknown-linux-musl
        cargo build --release --manifest-path "$root/Cargo.toml" -p imgtool
        IMGTOOL=$root/target/release/imgtool
    fi
fi

# 3. The image: given, or built (the kernel is cached under ~/.cache/imgtool; cache that
#    directory between CI runs to skip its four-minute build).
if [ -z "${IMAGE:-}" ]; then
    "$IMGTOOL" rootfs build beam-guest -o "$WORK/rootfs.squashfs"
    kernel=$("$IMGTOOL" kernel build)
    "$IMGTOOL" build nerves-qemu-aarch64 -o "$WORK/special.img" \
        -D kernel="$kernel" -D rootfs="$WORK/rootfs.squashfs"
    IMAGE=$WORK/special.img
fi

# 4. Gate it (or, with REFRESH=1, measure it into a new baseline to review and commit).
args=(validate "$IMAGE" --accel "$ACCEL" -m "$MEMORY" --no-net --runs "$RUNS")
if [ -n "${REFRESH:-}" ]; then
    "$IMGTOOL" "${args[@]}" --json "$BASELINE"
    echo "wrote $BASELINE: review the figures, then commit it"
else
    "$IMGTOOL" "${args[@]}" --baseline "$BASELINE" --json "$WORK/report.json"
    echo "gate passed; report: $WORK/report.json"
fi
