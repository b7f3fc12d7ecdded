# Shared by scripts/bench.sh and scripts/bench-sandbox.sh (sourced, not run): installs what
# they need, builds meshd (or takes $MESHD_BIN), makes the demo scene at W x H with S samples
# and 24 frames in a scratch dir, and kills every daemon started with `start` on exit.
# Sets: meshd, work, pids. Defines: now, elapsed, ratio, start, stop_all.
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

start() { # name [join args...]: waits until its Blender is probed
    local name=$1; shift
    "$meshd" --data-dir "$work/$name" join "$@" --listen /ip4/127.0.0.1/tcp/0 --api 127.0.0.1:0 \
        --no-mdns >"$work/$name.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 1 300); do
        "$meshd" --data-dir "$work/$name" peers --json 2>/dev/null | grep -q '"blender": "' && return 0
        sleep 0.1
    done
    echo "daemon $name did not come up:" >&2; cat "$work/$name.log" >&2; exit 1
}
stop_all() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    pids=()
}
