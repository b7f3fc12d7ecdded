#!/usr/bin/env bash
# Benchmarks, measured side by side in one run on this machine (prints ratios):
#  1. 12 frames on 3 local meshd daemons  vs  one `blender -b scene -s 1 -e 12 -a`
#  2. 24 frames on 1 meshd peer (persistent Blender)  vs  `blender -b scene -s 1 -e 24 -a`,
#     end to end and the render path alone (submit's dependency scan is a Blender run too)
#     vs  one `blender -b scene -f N` per frame (the seeds' way)
# Usage: scripts/bench.sh [WIDTH HEIGHT SAMPLES]   (default: the demo scene, 320x180, 16 samples)
# Environment: MESHD_BIN=PATH runs this meshd binary instead of building target/release/meshd;
# ROUNDS=N alternations of -a and meshd in part 2 (default 3).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh
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

# 2. One peer, 24 frames: persistent worker vs -a vs a process per frame. This machine's
# speed drifts from minute to minute, so -a and meshd alternate, ROUNDS times each, and the
# ratios are of the sums. meshd is timed end to end (submit: the scene's dependencies found
# by a Blender run, files stored; then every frame rendered and written) and along the
# render path alone (from the job accepted to the last frame written: the daemon's Blender
# start, every frame, the writes).
ROUNDS=${ROUNDS:-3}
t=$(now)
for f in $(seq 1 24); do
    blender -b --factory-startup -noaudio "$work/scene.blend" -o "$work/pf/frame_####" -F PNG -f "$f" >/dev/null 2>&1
done
pf=$(elapsed "$t")
start solo
a24=0 ms=0 mr=0
for r in $(seq 1 "$ROUNDS"); do
    a=$(blender_a 24)
    t=$(now)
    job=$("$meshd" --data-dir "$work/solo" submit "$work/scene.blend" 1-24 --out "$work/m$r" \
        --name "round$r" --json | sed -E 's/.*"id":"([0-9a-f]+)".*/\1/')
    s1=$(elapsed "$t")
    t1=$(now)
    # Waits by counting the frames in the output dir with a shell glob (a frame appears there
    # whole, by rename): polling `meshd status` instead starts a process that costs ~5 ms of
    # CPU ten times a second, about 3% of this 2-core machine, taken from Blender.
    until frames=("$work/m$r"/frame_*.png) && [ "${#frames[@]}" -ge 24 ]; do
        sleep 0.1
    done
    r1=$(elapsed "$t1")
    # The daemon counts a frame written just after its rename: give it a moment.
    for _ in $(seq 1 50); do
        "$meshd" --data-dir "$work/solo" status "$job" --json | grep -Eq '"frames_written": ?24[,}]?' &&
            break
        sleep 0.1
    done
    "$meshd" --data-dir "$work/solo" status "$job" --json | grep -Eq '"frames_written": ?24[,}]?' ||
        { echo "job $job: 24 frames in the output dir but status does not say so" >&2; exit 1; }
    printf 'round %d: blender -a %.2fs | meshd submit %.2fs + render path %.2fs\n' "$r" "$a" "$s1" "$r1"
    a24=$(awk -v x="$a24" -v y="$a" 'BEGIN { print x + y }')
    ms=$(awk -v x="$ms" -v y="$s1" 'BEGIN { print x + y }')
    mr=$(awk -v x="$mr" -v y="$r1" 'BEGIN { print x + y }')
done
stop_all
m1=$(awk -v a="$ms" -v b="$mr" 'BEGIN { print a + b }')
printf '24 frames, mean of %d: blender -a %.2fs | meshd 1 peer %.2fs (submit %.2fs + render path %.2fs) | process per frame %.2fs (once)\n' \
    "$ROUNDS" "$(awk -v x="$a24" -v n="$ROUNDS" 'BEGIN { print x / n }')" \
    "$(awk -v x="$m1" -v n="$ROUNDS" 'BEGIN { print x / n }')" \
    "$(awk -v x="$ms" -v n="$ROUNDS" 'BEGIN { print x / n }')" \
    "$(awk -v x="$mr" -v n="$ROUNDS" 'BEGIN { print x / n }')" "$pf"
printf 'ratios: render path/(-a) %sx (target <= 1.05x) | end to end/(-a) %sx | per-frame/meshd %sx (target >= 3x)\n' \
    "$(ratio "$mr" "$a24")" "$(ratio "$m1" "$a24")" \
    "$(ratio "$pf" "$(awk -v x="$m1" -v n="$ROUNDS" 'BEGIN { print x / n }')")"
