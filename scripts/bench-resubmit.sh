#!/usr/bin/env bash
# Benchmark: what a resubmit after a small edit moves (prints a ratio).
# Two daemons on 127.0.0.1: a submitter (--no-render) and a renderer. The scene references a
# SIZE_MIB incompressible payload. Submit; wait until the renderer's copy of the project is
# ready; overwrite a contiguous 1% of the payload in the middle, in place; resubmit under
# another name; wait until the renderer's copy is ready again. Prints what the renderer
# fetched for each job, the project's size and the second fetch as a % of it (target <= 5%).
# Then, once the first job is over, what the renderer's blob store holds on disk with both
# versions (the old one compacted to the chunks the new one does not share, see
# src/store/dedup.rs), against one version.
#
# Usage: scripts/bench-resubmit.sh [SIZE_MIB=200]
# Environment:
#   MESHD_BIN=PATH      run this meshd binary instead of building target/release/meshd
#   BENCH_TIMEOUT=SECS  bound on each wait for a ready project (default 300)
#   BENCH_KEEP=1        keep the temp dir (data dirs, logs) instead of removing it
# The renderer renders frame 1 of the first job (1 sample) and of the second (1000000 samples,
# so that job stays running) through a Blender wrapper at `nice -n 19`, to leave the CPU to the
# daemons. It runs with --cache-size 1T: a collection every 10 s that removes nothing needed.
set -euo pipefail
cd "$(dirname "$0")/.."

SIZE_MIB=${1:-200}
SAMPLES=${BENCH_SAMPLES:-1000000}
TIMEOUT=${BENCH_TIMEOUT:-300}
[[ $SIZE_MIB =~ ^[0-9]+$ && $SIZE_MIB -ge 1 ]] || { echo "SIZE_MIB must be a positive integer" >&2; exit 2; }

need=()
command -v blender >/dev/null 2>&1 || need+=(blender)
command -v jq >/dev/null 2>&1 || need+=(jq)
if [ ${#need[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    echo "installing: ${need[*]}"
    DEBIAN_FRONTEND=noninteractive $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if [ -n "${MESHD_BIN:-}" ]; then
    meshd=$(realpath "$MESHD_BIN")
else
    cargo build --release --locked --quiet
    meshd="$PWD/target/release/meshd"
fi

work=$(mktemp -d /tmp/meshd-bench-resubmit.XXXXXX)
pids=()
cleanup() {
    local rc=$?
    trap '' INT TERM
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for _ in $(seq 1 50); do
        local alive=0
        for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        [ "$alive" -eq 0 ] && break
        sleep 0.2
    done
    for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ "${BENCH_KEEP:-0}" = 1 ]; then
        echo "kept $work (data dirs and logs)" >&2
    else
        rm -rf "$work"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

now() { date +%s.%N; }
elapsed() { awk -v a="$(now)" -v b="$1" 'BEGIN { printf "%.3f", a - b }'; }
mib() { awk -v b="$1" 'BEGIN { printf "%.2f", b / 1048576 }'; }
cli() { # name args...: a meshd command for that daemon, bounded (CLI_LIMIT seconds, default 30)
    local name=$1; shift
    timeout "${CLI_LIMIT:-30}" "$meshd" --data-dir "$work/$name" "$@"
}
log_tail() { # name lines
    echo "---- last $2 lines of $1's log ($work/$1.log) ----" >&2
    tail -n "$2" "$work/$1.log" >&2 || true
}

mkdir -p "$work/project"
blender -b --factory-startup -noaudio --python scripts/make_demo_scene.py -- \
    "$work/project/scene.blend" --frames 1 --width 64 --height 48 --samples 1 >"$work/blender-make.log" 2>&1
payload="$work/project/payload.wav"
head -c "${SIZE_MIB}M" /dev/urandom >"$payload"
blender -b --factory-startup -noaudio "$work/project/scene.blend" --python-exit-code 1 --python-expr \
    "import bpy; s = bpy.data.sounds.load('$payload'); s.use_fake_user = True; bpy.ops.wm.save_mainfile()" \
    >>"$work/blender-make.log" 2>&1
rm -f "$work/project/scene.blend1"
printf '#!/bin/sh\nexec nice -n 19 %q "$@"\n' "$(command -v blender)" >"$work/blender-nice"
chmod +x "$work/blender-nice"

start() { # name up-test [join args...]: up-test is a jq test on the peer's own `peers` row
    local name=$1 up=$2; shift 2
    NO_COLOR=1 RUST_LOG="${RUST_LOG:-info}" BLENDER="$work/blender-nice" "$meshd" --data-dir "$work/$name" join "$@" \
        --listen /ip4/127.0.0.1/tcp/0 --api 127.0.0.1:0 --no-mdns >"$work/$name.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 1 600); do
        cli "$name" peers --json 2>/dev/null | jq -e ".peers[] | select(.self) | $up" >/dev/null 2>&1 && return 0
        kill -0 "${pids[-1]}" 2>/dev/null || break
        sleep 0.2
    done
    echo "daemon $name did not come up" >&2; log_tail "$name" 30; exit 1
}
wait_ready() { # job: until the renderer's copy of its project is ready; prints the project JSON
    local job=$1 t st; t=$(now)
    while :; do
        st=$(cli renderer status "$job" --json 2>/dev/null | jq -c '.jobs[0].project' 2>/dev/null || echo '{}')
        [ "$(jq -r '.state // empty' <<<"$st")" = ready ] && { echo "$st"; return 0; }
        if awk -v e="$(elapsed "$t")" -v t="$TIMEOUT" 'BEGIN { exit !(e > t) }'; then
            echo "TIMEOUT: the renderer's project of job ${job:0:12} not ready after ${TIMEOUT}s: $st" >&2
            log_tail submitter 30; log_tail renderer 40
            exit 1
        fi
        sleep 0.2
    done
}
submit() { # name samples: sets $job $files $bytes
    CLI_LIMIT=600 cli submitter submit "$work/project/scene.blend" 1 --out "$work/out-$1" --json --name "$1" \
        --samples "$2" >"$work/submit-$1.json"
    read -r job files bytes < <(jq -r '"\(.id) \(.files) \(.bytes)"' "$work/submit-$1.json")
}

echo "resubmit: ${SIZE_MIB} MiB payload, 2 daemons on 127.0.0.1 (submitter --no-render, renderer)"
start submitter true --no-render
ticket=$(cli submitter invite --json | jq -r .ticket)
start renderer '.blender != null' "$ticket" --cache-size 1T

t=$(now)
submit v1 1
job1=$job files1=$files bytes1=$bytes
p1=$(wait_ready "$job1")
t_first=$(elapsed "$t")
fetched1=$(jq -r .bytes_fetched <<<"$p1")
printf 'first submit:  job %s, %s files, %s MiB; renderer fetched %s MiB in %.2fs\n' \
    "${job1:0:12}" "$files1" "$(mib "$bytes1")" "$(mib "$fetched1")" "$t_first"
[ "$files1" = 2 ] || echo "WARNING: expected 2 files (scene + payload), submit reports $files1" >&2

# Overwrite a contiguous 1% of the payload, in the middle, in place.
size=$(stat -c %s "$payload")
span=$((size / 100))
offset=$(((size - span) / 2))
head -c "$span" /dev/urandom | dd of="$payload" bs=1M seek="$offset" oflag=seek_bytes conv=notrunc status=none
[ "$(stat -c %s "$payload")" = "$size" ] || { echo "the payload changed size" >&2; exit 1; }
echo "edited $(mib "$span") MiB of the payload at offset $(mib "$offset") MiB"

t=$(now)
submit v2 "$SAMPLES"
job2=$job files2=$files bytes2=$bytes
p2=$(wait_ready "$job2")
t_second=$(elapsed "$t")
fetched2=$(jq -r .bytes_fetched <<<"$p2")
reused2=$(jq -r .bytes_reused <<<"$p2")
printf 'resubmit:      job %s, %s files, %s MiB; renderer fetched %s MiB, reused %s MiB, in %.2fs\n' \
    "${job2:0:12}" "$files2" "$(mib "$bytes2")" "$(mib "$fetched2")" "$(mib "$reused2")" "$t_second"
# Disk: once the first job is over, the next collection compacts its project.
store_bytes() { du -sb --exclude=partial --exclude=tmp "$work/renderer/blobs" | cut -f1; }
t=$(now)
before=$(store_bytes)
while :; do
    done1=$(cli renderer status "$job1" --json 2>/dev/null | jq -r '.jobs[0].state // empty' 2>/dev/null || true)
    disk=$(store_bytes)
    [ "$done1" = done ] && awk -v d="$disk" -v b="$bytes2" 'BEGIN { exit !(d < 1.2 * b) }' && break
    if awk -v e="$(elapsed "$t")" -v t="$TIMEOUT" 'BEGIN { exit !(e > t) }'; then
        echo "WARNING: after ${TIMEOUT}s the first job is '${done1}' and the store holds $(mib "$disk") MiB" >&2
        break
    fi
    sleep 0.5
done
printf 'renderer store: %s MiB with both versions whole, %s MiB after compaction (%.2fx one version)\n' \
    "$(mib "$before")" "$(mib "$disk")" "$(awk -v d="$disk" -v b="$bytes2" 'BEGIN { print d / b }')"

for name in submitter renderer; do
    n=$(grep -cE ' (WARN|ERROR)\b' "$work/$name.log" || true)
    if [ "$n" -gt 0 ]; then
        echo "$name log: $n WARN/ERROR lines, first ones:"
        grep -E ' (WARN|ERROR)\b' "$work/$name.log" | head -n 5 | sed 's/^/    /'
    fi
done
awk -v f="$fetched2" -v b="$bytes2" -v e="$span" 'BEGIN {
    printf "ratio: resubmit fetched %.2f%% of the project (target <= 5%%; the edit itself is %.2f%%)\n", 100 * f / b, 100 * e / b }'
