#!/usr/bin/env bash
# Benchmark: scheduling at scale with simulated renderers (prints figures from one run).
# PEERS daemons on 127.0.0.1 render FRAMES frames with `--simulate-render`: peer i takes
# BASE / speed_i seconds per frame, speeds spread evenly from 1x to 4x. A submitter
# (--no-render) hands out the job. Prints:
#   - makespan (submit to the last frame file landing in the output dir, by its mtime)
#     against the ideal FRAMES / sum(speeds),
#     and the best schedule possible with whole frames (speeds known in advance),
#   - duplicate renders (results beyond one per frame),
#   - the same job under a static up-front split (the seeds' way: FRAMES/PEERS frames to
#     each peer, makespan = the slowest peer's share), computed from the same speeds,
#   - daemon RSS (mean and max over the renderers) idle and under load,
#   - gossip payload bytes per frame on the claims topic (published by all peers, and
#     delivered to all peers), and heartbeat bytes per peer per second.
#
# Usage: scripts/bench-scale.sh [PEERS=32 FRAMES=400 BASE=4]
# Environment: MESHD_BIN=PATH (else target/release/meshd is built), BENCH_KEEP=1 (keep the
# logs and the job's status.json), BENCH_LOG=FILTER (the daemons' RUST_LOG, default warn),
# BENCH_FOR=SECS (stop after SECS and print the rate frames reach the output instead: for jobs
# too big to finish here).
set -euo pipefail
cd "$(dirname "$0")/.."

PEERS=${1:-32}
FRAMES=${2:-400}
BASE=${3:-4}
[[ $PEERS =~ ^[0-9]+$ && $PEERS -ge 2 && $FRAMES =~ ^[0-9]+$ && $FRAMES -ge 1 ]] ||
    { echo "usage: $0 [PEERS>=2 FRAMES>=1 BASE_SECS]" >&2; exit 2; }
command -v jq >/dev/null 2>&1 || { echo "jq is needed (apt-get install jq)" >&2; exit 2; }
command -v blender >/dev/null 2>&1 || { echo "blender is needed to make the scene (scripts/install-deps.sh)" >&2; exit 2; }
if [ -n "${MESHD_BIN:-}" ]; then
    meshd=$(realpath "$MESHD_BIN")
else
    cargo build --release --locked --quiet
    meshd="$PWD/target/release/meshd"
fi

work=$(mktemp -d /tmp/meshd-bench-scale.XXXXXX)
pids=()
cleanup() {
    local rc=$?
    trap '' INT TERM
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    sleep 1
    for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ "${BENCH_KEEP:-0}" = 1 ]; then echo "kept $work" >&2; else rm -rf "$work"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

now() { date +%s.%N; }
cli() { local name=$1; shift; timeout 30 "$meshd" --data-dir "$work/$name" "$@"; }
rss_stats() { # prints "mean max" MiB over the renderer pids (one awk: polling costs CPU the daemons share)
    local files=() p
    for p in "${renderer_pids[@]}"; do files+=("/proc/$p/status"); done
    awk '/^VmRSS/ { r = $2; s += r; n++; if (r > m) m = r }
        END { if (n == 0) n = 1; printf "%.1f %.1f\n", s / n / 1024, m / 1024 }' "${files[@]}" 2>/dev/null
}
start() { # name args...
    local name=$1; shift
    NO_COLOR=1 RUST_LOG=${BENCH_LOG:-warn} "$meshd" --data-dir "$work/$name" join "$@" \
        --listen /ip4/127.0.0.1/tcp/0 --api 127.0.0.1:0 --no-mdns >"$work/$name.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 1 300); do
        cli "$name" invite --json >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "daemon $name did not come up; see $work/$name.log" >&2
    exit 1
}

blender -b --factory-startup -noaudio --python scripts/make_demo_scene.py -- \
    "$work/scene.blend" --frames 1 --width 32 --height 18 --samples 1 >"$work/blender.log" 2>&1

echo "scale: $PEERS simulated renderers (1x..4x, ${BASE}s per frame at 1x), $FRAMES frames"
start submitter --no-render
ticket=$(cli submitter invite --json | jq -r .ticket)
renderer_pids=()
speeds=()
for i in $(seq 0 $((PEERS - 1))); do
    speed=$(awk -v i="$i" -v n="$PEERS" 'BEGIN { printf "%.4f", 1 + 3 * i / (n - 1) }')
    secs=$(awk -v b="$BASE" -v s="$speed" 'BEGIN { printf "%.4f", b / s }')
    speeds+=("$speed")
    start "r$i" "$ticket" --simulate-render "$secs"
    renderer_pids+=("${pids[-1]}")
done
for _ in $(seq 1 600); do
    n=$(cli submitter peers --json 2>/dev/null | jq '[.peers[] | select(.can_render)] | length' 2>/dev/null || echo 0)
    [ "$n" -ge "$PEERS" ] && break
    sleep 0.2
done
[ "$n" -ge "$PEERS" ] || { echo "only $n of $PEERS renderers visible to the submitter" >&2; exit 1; }
read -r idle_mean idle_max < <(rss_stats)

# Sum of one gossip counter over every daemon: gossip_sum TOPIC FIELD
gossip_sum() {
    local total=0 v
    for name in submitter $(seq -f 'r%g' 0 $((PEERS - 1))); do
        v=$(cli "$name" peers --json 2>/dev/null |
            jq -r --arg t "$1" --arg f "$2" '[.gossip[] | select(.topic == $t) | .[$f]] | add // 0' 2>/dev/null || echo 0)
        total=$((total + v))
    done
    echo "$total"
}
claims_pub0=$(gossip_sum claims published_bytes)
claims_recv0=$(gossip_sum claims received_bytes)
hb_pub0=$(gossip_sum peers published_bytes)

# CPU seconds used by every daemon so far (user + system).
cpu_secs() {
    local ticks=0 t
    for p in "${pids[@]}"; do
        t=$(awk '{ print $14 + $15 }' "/proc/$p/stat" 2>/dev/null || echo 0)
        ticks=$((ticks + t))
    done
    awk -v t="$ticks" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.1f", t / hz }'
}
# What the idle mesh costs: heartbeats, gossip upkeep, sync rounds.
idle_cpu0=$(cpu_secs); idle_t0=$(now)
sleep 3
idle_cores=$(awk -v a="$(cpu_secs)" -v b="$idle_cpu0" -v t="$(awk -v a="$(now)" -v b="$idle_t0" 'BEGIN { print a - b }')" 'BEGIN { printf "%.2f", (a - b) / t }')
cpu0=$(cpu_secs)
t0=$(now)
echo "$t0" >"$work/t0"
job=$(cli submitter submit "$work/scene.blend" "1-$FRAMES" --no-deps --out "$work/out" --json 2>/dev/null | jq -r .id)
peak_mean=0 peak_max=0 partial=0
while :; do
    # Polling costs CPU the daemons share (most of all while the job starts); the makespan
    # comes from file times.
    sleep 1
    # All jobs, without their frames (a job's own status would list every frame).
    st=$(cli submitter status --json --frames none 2>/dev/null | jq --arg j "$job" '{jobs: [.jobs[] | select(.id == $j)]}' || echo '{}')
    written=$(jq -r '.jobs[0].frames_written // 0' <<<"$st")
    read -r m x < <(rss_stats)
    peak_mean=$(awk -v a="$peak_mean" -v b="$m" 'BEGIN { print (b > a) ? b : a }')
    peak_max=$(awk -v a="$peak_max" -v b="$x" 'BEGIN { print (b > a) ? b : a }')
    [ "$written" = "$FRAMES" ] && break
    if [ -n "${BENCH_FOR:-}" ] &&
        awk -v e="$(awk -v a="$(now)" -v b="$t0" 'BEGIN { print a - b }')" -v l="$BENCH_FOR" 'BEGIN { exit !(e > l) }'; then
        partial=1; break
    fi
    if awk -v e="$(awk -v a="$(now)" -v b="$t0" 'BEGIN { print a - b }')" 'BEGIN { exit !(e > 1800) }'; then
        echo "TIMEOUT: $written of $FRAMES frames after 30 min" >&2; exit 1
    fi
done
makespan=$(awk -v a="$(now)" -v b="$t0" 'BEGIN { printf "%.2f", a - b }')
# Who rendered what, in how long: for a look at the schedule afterwards.
if [ "${BENCH_KEEP:-0}" = 1 ]; then cli submitter status "$job" --json >"$work/status.json" 2>/dev/null || true; fi
job_cpu=$(awk -v a="$(cpu_secs)" -v b="$cpu0" 'BEGIN { print a - b }')
if [ "$partial" = 0 ]; then
    # The job ended when its last frame landed in the output: the newest frame file's
    # modification time (written, synced, then renamed into place), not when this loop's
    # next poll noticed.
    last=$(find "$work/out" -name 'frame_*' -printf '%T@\n' | sort -n | tail -1)
    makespan=$(awk -v a="$last" -v b="$t0" 'BEGIN { printf "%.2f", a - b }')
fi
if [ "$partial" = 1 ]; then
    # A job too big to finish here: how fast frames reach the output against the peers'
    # total speed, how big the daemons got, and how fast the submitter answers.
    sum_speed=$(printf '%s\n' "${speeds[@]}" | awk '{ s += $1 } END { print s }')
    rate=$(awk -v w="$written" -v t="$makespan" 'BEGIN { printf "%.1f", w / t }')
    ideal_rate=$(awk -v s="$sum_speed" -v b="$BASE" 'BEGIN { printf "%.1f", s / b }')
    ts=$(now); cli submitter status --json --frames none >/dev/null; status_ms=$(awk -v a="$(now)" -v b="$ts" 'BEGIN { printf "%.0f", 1000 * (a - b) }')
    read -r m x < <(rss_stats)
    sub_rss=$(awk '/^VmRSS/ { printf "%.1f", $2 / 1024 }' "/proc/${pids[0]}/status")
    printf 'after %.0f s: %d of %d frames written, %s frames/s (the peers render %s frames/s at most: ratio %.3f)\n' \
        "$makespan" "$written" "$FRAMES" "$rate" "$ideal_rate" "$(awk -v a="$rate" -v b="$ideal_rate" 'BEGIN { print a / b }')"
    printf 'RSS: submitter %s MiB; renderers mean %s max %s MiB; status answered in %s ms (CLI included)\n' \
        "$sub_rss" "$m" "$x" "$status_ms"
    cpu=$job_cpu
    printf 'CPU: the daemons kept %.2f of this machine'"'"'s %d cores busy (%.1f ms of CPU per frame written)\n' \
        "$(awk -v c="$cpu" -v t="$makespan" 'BEGIN { print c / t }')" "$(nproc)" \
        "$(awk -v c="$cpu" -v w="$written" 'BEGIN { print (w > 0) ? 1000 * c / w : 0 }')"
    exit 0
fi
dups=$(jq -r '.jobs[0].duplicates' <<<"$st")
sum_speed=$(printf '%s\n' "${speeds[@]}" | awk '{ s += $1 } END { print s }')
ideal=$(awk -v f="$FRAMES" -v b="$BASE" -v s="$sum_speed" 'BEGIN { printf "%.2f", f * b / s }')
# Static split: frames dealt round-robin, each peer renders its share at its own speed.
static=$(printf '%s\n' "${speeds[@]}" | awk -v f="$FRAMES" -v n="$PEERS" -v b="$BASE" '
    { i = NR - 1; share = int(f / n) + (i < f % n ? 1 : 0); t = share * b / $1; if (t > m) m = t }
    END { printf "%.2f", m }')

# The best any scheduler could do with whole frames, knowing every speed in advance: each
# frame goes to the peer that would finish it first (optimal for equal frames on peers of
# different speeds). What separates it from the ideal is the granularity of frames.
best=$(printf '%s\n' "${speeds[@]}" | awk -v f="$FRAMES" -v b="$BASE" '
    { t[NR] = b / $1; free[NR] = 0; n = NR }
    END {
        for (k = 0; k < f; k++) {
            i = 1; for (j = 2; j <= n; j++) if (free[j] + t[j] < free[i] + t[i]) i = j
            free[i] += t[i]
        }
        m = 0; for (j = 1; j <= n; j++) if (free[j] > m) m = free[j]
        printf "%.2f", m
    }')

printf 'makespan:    %6.2f s   ideal %.2f s   ratio %.3f (target <= 1.05)\n' "$makespan" "$ideal" \
    "$(awk -v a="$makespan" -v b="$ideal" 'BEGIN { print a / b }')"
printf 'whole frames: %5.2f s   ratio %.3f to ideal (the best possible schedule, speeds known in advance)\n' \
    "$best" "$(awk -v a="$best" -v b="$ideal" 'BEGIN { print a / b }')"
printf 'static split: %5.2f s   ratio %.3f to ideal (the seeds way, computed from the same speeds)\n' \
    "$static" "$(awk -v a="$static" -v b="$ideal" 'BEGIN { print a / b }')"
printf 'duplicates:  %d of %d frames (%.2f%%, target <= 1%%)\n' "$dups" "$FRAMES" \
    "$(awk -v d="$dups" -v f="$FRAMES" 'BEGIN { print 100 * d / f }')"
printf 'renderer RSS: idle mean %s MiB max %s MiB; under load mean %s MiB max %s MiB\n' \
    "$idle_mean" "$idle_max" "$peak_mean" "$peak_max"
claims_pub=$(( $(gossip_sum claims published_bytes) - claims_pub0 ))
claims_recv=$(( $(gossip_sum claims received_bytes) - claims_recv0 ))
hb_pub=$(( $(gossip_sum peers published_bytes) - hb_pub0 ))
printf 'gossip per frame (claims topic, payload): %.0f bytes published, %.0f bytes delivered over all %d peers\n' \
    "$(awk -v a="$claims_pub" -v f="$FRAMES" 'BEGIN { print a / f }')" \
    "$(awk -v a="$claims_recv" -v f="$FRAMES" 'BEGIN { print a / f }')" "$((PEERS + 1))"
printf 'heartbeats: %.0f bytes per peer per second published during the job\n' \
    "$(awk -v a="$hb_pub" -v n="$((PEERS + 1))" -v t="$makespan" 'BEGIN { print a / n / t }')"
printf 'CPU: the daemons kept %.2f of this machine'"'"'s %d cores busy during the job (%.1f ms per frame), %s idle before it\n' \
    "$(awk -v c="$job_cpu" -v t="$makespan" 'BEGIN { print c / t }')" "$(nproc)" \
    "$(awk -v c="$job_cpu" -v f="$FRAMES" 'BEGIN { print 1000 * c / f }')" "$idle_cores"
