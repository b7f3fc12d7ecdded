#!/usr/bin/env bash
# Benchmarks, measured side by side in one run on this machine (prints ratios):
#  1. 12 frames on 3 local meshd daemons  vs  one `blender -b scene -s 1 -e 12 -a`
#  2. 24 frames on 1 meshd peer (persistent Blender)  vs  `blender -b scene -s 1 -e 24 -a`
#     vs  one `blender -b scene -f N` per frame (the seeds' way)
# Usage: scripts/bench.sh [WIDTH HEIGHT SAMPLES]   (default: the demo scene, 320x180, 16 samples)
# Environment: MESHD_BIN=PATH runs this meshd binary instead of building target/release/meshd.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
if [ -n "${MESHD_BIN:-}" ]; then
    meshd=$(realpath "$MESHD_BIN")
else
    cargo build --release --locked --quiet
    meshd="$PWD/target/release/meshd"
fi
W=${1:-320}; H=${2:-180}; S=${3:-16}

work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

blender -b --factory-startup -noaudio --python scripts/make_demo_scene.py -- \
    "$work/scene.blend" --frames 24 --width "$W" --height "$H" --samples "$S" >/dev/null 2>&1
now() { date +%s.%N; }
elapsed() { awk -v a="$(now)" -v b="$1" 'BEGIN { printf "%.3f", a - b }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

start() { # name [ticket]
    local name=$1; shift
    "$meshd" --data-dir "$work/$name" join "$@" --listen /ip4/127.0.0.1/tcp/0 --api 127.0.0.1:0 \
        --no-mdns >"$work/$name.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 1 200); do
        "$meshd" --data-dir "$work/$name" peers --json 2>/dev/null | grep -q '"blender": "' && return 0
        sleep 0.1
    done
    echo "daemon $name did not come up" >&2; exit 1
}
stop_all() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    pids=()
}
blender_a() { # frames
    local t; t=$(now)
    blender -b --factory-startup -noaudio "$work/scene.blend" -o "$work/a$1/frame_####" -F PNG \
        -s 1 -e "$1" -a >/dev/null 2>&1
    elapsed "$t"
}

echo "scene: ${W}x${H}, ${S} samples, Cycles CPU, $(nproc) cores, $(blender --version | head -1)"

# 1. Three daemons vs blender -a, 12 frames.
a12=$(blender_a 12)
start alpha
ticket=$("$meshd" --data-dir "$work/alpha" invite --json | sed -E 's/.*"ticket":"([^"]+)".*/\1/')
start beta "$ticket"; start gamma "$ticket"
t=$(now)
"$meshd" --data-dir "$work/alpha" submit "$work/scene.blend" 1-12 --out "$work/m3" --wait >/dev/null
m3=$(elapsed "$t")
stop_all
printf '12 frames: blender -a %.2fs | meshd 3 local peers %.2fs | ratio %sx\n' "$a12" "$m3" "$(ratio "$m3" "$a12")"

# 2. One peer, 24 frames: persistent worker vs -a vs a process per frame.
a24=$(blender_a 24)
t=$(now)
for f in $(seq 1 24); do
    blender -b --factory-startup -noaudio "$work/scene.blend" -o "$work/pf/frame_####" -F PNG -f "$f" >/dev/null 2>&1
done
pf=$(elapsed "$t")
start solo
t=$(now)
"$meshd" --data-dir "$work/solo" submit "$work/scene.blend" 1-24 --out "$work/m1" --wait >/dev/null
m1=$(elapsed "$t")
stop_all
printf '24 frames: blender -a %.2fs | meshd 1 peer %.2fs | process per frame %.2fs\n' "$a24" "$m1" "$pf"
printf 'ratios: meshd/(-a) %sx (target <= 1.10x) | per-frame/meshd %sx (target >= 3x)\n' \
    "$(ratio "$m1" "$a24")" "$(ratio "$pf" "$m1")"
