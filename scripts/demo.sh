#!/usr/bin/env bash
# The demo: builds meshd, starts three daemons on this machine (one mesh on 127.0.0.1),
# renders the bundled demo scene across them (printing a dashboard link to watch it), makes a
# video of the frames and says where they are. MESHD_DEMO_KEEP=1 keeps the mesh up afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-deps.sh
cargo build --locked --quiet
meshd="$PWD/target/debug/meshd"

work="${MESHD_DEMO_DIR:-$PWD/meshd-demo}"
rm -rf "$work/peers"
mkdir -p "$work/peers"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

echo "making the demo scene (scripts/make_demo_scene.py)..."
blender -b --factory-startup -noaudio --python scripts/make_demo_scene.py -- \
    "$work/demo.blend" --frames 24 --width 320 --height 180 --samples 16 >"$work/scene.log" 2>&1

start() { # name [ticket]
    local name=$1; shift
    "$meshd" --data-dir "$work/peers/$name" join "$@" --listen /ip4/127.0.0.1/tcp/0 \
        --api 127.0.0.1:0 --no-mdns >"$work/peers/$name.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 1 100); do
        "$meshd" --data-dir "$work/peers/$name" invite >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "error: daemon $name did not start; see $work/peers/$name.log" >&2
    exit 1
}

start alpha
ticket=$("$meshd" --data-dir "$work/peers/alpha" invite --json | sed -E 's/.*"ticket":"([^"]+)".*/\1/')
start beta "$ticket"
start gamma "$ticket"
echo "three daemons up: alpha, beta, gamma (logs in $work/peers/)"
echo "dashboard (one-time link, while the demo runs): $("$meshd" --data-dir "$work/peers/alpha" dashboard --print-url)"

rm -f "$work/frames/demo.mp4"
"$meshd" --data-dir "$work/peers/alpha" submit "$work/demo.blend" 1-24 --out "$work/frames" \
    --name demo --video
"$meshd" --data-dir "$work/peers/alpha" peers
echo "frames: $work/frames/"
if [ -n "${MESHD_DEMO_KEEP:-}" ]; then
    echo "MESHD_DEMO_KEEP: the mesh stays up for the dashboard; Ctrl-C stops it"
    wait
fi
