#!/usr/bin/env bash
# Render speed inside Blender's bubblewrap sandbox against outside, side by side in one run:
# two single-peer meshes on this machine, one sandboxed and one `--no-sandbox`, take turns
# rendering the same 24-frame job (ROUNDS turns each, default 3). Each turn is timed along
# the render path (from the job accepted to the last frame written: the Blender start,
# every frame, the writes) and the ratio is of the sums.
# Usage: scripts/bench-sandbox.sh [WIDTH HEIGHT SAMPLES]  (default 320x180, 16 samples)
# Environment: MESHD_BIN=PATH runs this meshd binary instead of building target/release/meshd.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh

render_path() { # name round
    local job t
    job=$("$meshd" --data-dir "$work/$1" submit "$work/scene.blend" 1-24 --out "$work/$1-$2" \
        --name "round$2" --json | sed -E 's/.*"id":"([0-9a-f]+)".*/\1/')
    t=$(now)
    until "$meshd" --data-dir "$work/$1" status "$job" --json 2>/dev/null |
        grep -Eq '"frames_written": ?24[,}]?'; do
        sleep 0.05
    done
    elapsed "$t"
}

start boxed
grep -q "bubblewrap sandbox" "$work/boxed.log" || {
    echo "bubblewrap does not work here:" >&2; cat "$work/boxed.log" >&2; exit 1
}
start open --no-sandbox
echo "scene: ${W}x${H}, ${S} samples, Cycles CPU, $(nproc) cores, $(blender --version | head -1), $(bwrap --version)"
sb=0 so=0
for r in $(seq 1 "$ROUNDS"); do
    b=$(render_path boxed "$r")
    o=$(render_path open "$r")
    printf 'round %d: sandboxed %.2fs | unconfined %.2fs\n' "$r" "$b" "$o"
    sb=$(awk -v x="$sb" -v y="$b" 'BEGIN { print x + y }')
    so=$(awk -v x="$so" -v y="$o" 'BEGIN { print x + y }')
done
printf '24 frames, mean of %d: sandboxed %.2fs | unconfined %.2fs | ratio %.3fx (target: no measurable difference)\n' \
    "$ROUNDS" "$(awk -v x="$sb" -v n="$ROUNDS" 'BEGIN { print x / n }')" \
    "$(awk -v x="$so" -v n="$ROUNDS" 'BEGIN { print x / n }')" \
    "$(awk -v a="$sb" -v b="$so" 'BEGIN { print a / b }')"
