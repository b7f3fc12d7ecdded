#!/usr/bin/env bash
# Benchmark: how fast one project spreads over a mesh, measured side by side in one run on
# the same shaped links (prints ratios).
#
# Every peer lives in its own network namespace, plugged into one bridge that lives in a
# namespace of its own; every peer's link is shaped with tc (tbf) to RATE in both directions
# (its uplink on its own end of the veth, its downlink on the bridge's end). All addresses
# are in 10.77.0.0/16, inside namespaces this script creates; nothing else is touched.
# Peer 0 is the seed: it founds the mesh and submits a scene that references a SIZE_MIB
# incompressible payload; the other PEERS-1 join with its ticket. Measured:
#  a. floor: one copy of the project's bytes over one link (a Python socket, peer 0 -> 1), T1
#  b. the seeds' way: peer 0 pushes that copy to each of the other peers in turn, Tseq
#  c. meshd: from `meshd submit` on peer 0 until every peer's `status --json` says
#     project.state == "ready", Tmesh
# Target: Tmesh/T1 <= 1.5. Per peer it also prints bytes_fetched and bytes_reused, the bytes
# its link carried up and down during (c) (tc counters) and its daemon's CPU seconds.
#
# Usage: scripts/bench-distribution.sh [PEERS=8] [SIZE_MIB=256] [RATE=200mbit]
#   RATE is any tc rate (200mbit, 1gbit, 50mbit). Needs root (namespaces, tc).
# Environment:
#   MESHD_BIN=PATH      run this meshd binary instead of building target/release/meshd
#   BENCH_TIMEOUT=SECS  bound on the meshd phase (default: 120 s + 10x the floor time)
#   BENCH_SAMPLES=N     samples of the one frame (default 1000000, so the frame outlasts
#                       the distribution: the job must stay running for peers to fetch)
#   BENCH_KEEP=1        keep the temp dir (data dirs, logs) instead of removing it
# Blender renders the frame through a wrapper at `nice -n 19`, so the one peer that renders
# does not take the CPU from the daemons (on a real mesh every peer has its own CPU).
set -euo pipefail
cd "$(dirname "$0")/.."

PEERS=${1:-8}
SIZE_MIB=${2:-256}
RATE=${3:-200mbit}
SAMPLES=${BENCH_SAMPLES:-1000000}
[[ $PEERS =~ ^[0-9]+$ && $PEERS -ge 2 && $PEERS -le 200 ]] || { echo "PEERS must be 2..200" >&2; exit 2; }
[[ $SIZE_MIB =~ ^[0-9]+$ && $SIZE_MIB -ge 1 ]] || { echo "SIZE_MIB must be a positive integer" >&2; exit 2; }
[[ $RATE =~ ^[0-9.]+[kmg]?bit$ ]] || { echo "RATE must look like 200mbit, 1gbit or 500kbit" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "error: needs root (network namespaces, tc)" >&2; exit 1; }

need=()
command -v blender >/dev/null 2>&1 || need+=(blender)
command -v tc >/dev/null 2>&1 || need+=(iproute2)
command -v jq >/dev/null 2>&1 || need+=(jq)
command -v python3 >/dev/null 2>&1 || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing: ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if [ -n "${MESHD_BIN:-}" ]; then
    meshd=$(realpath "$MESHD_BIN")
else
    cargo build --release --locked --quiet
    meshd="$PWD/target/release/meshd"
fi
py=$(command -v python3)
[ -x /usr/bin/python3 ] && py=/usr/bin/python3

# Names of everything this run creates (the pid keeps two runs apart).
tag=$(($$ % 100000))
brns="mdb$tag-br"
ns=(); vp=(); vb=(); addr=()
for ((i = 0; i < PEERS; i++)); do
    ns+=("mdb$tag-p$i"); vp+=("mdb${tag}p$i"); vb+=("mdb${tag}b$i")
    addr+=("10.77.$((i / 250)).$((i % 250 + 1))")
done

work=$(mktemp -d /tmp/meshd-bench-dist.XXXXXX)
pids=()      # daemons
helpers=()   # socket receivers
made_ns=()
failed=0
cleanup() {
    local rc=$?
    trap '' INT TERM
    for p in "${helpers[@]}" "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for _ in $(seq 1 50); do
        local alive=0
        for p in "${helpers[@]}" "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        [ "$alive" -eq 0 ] && break
        sleep 0.2
    done
    for p in "${helpers[@]}" "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    # Deleting a namespace deletes its veth ends and their qdiscs; a veth still in the root
    # namespace (interrupted setup) is deleted by name.
    for n in "${made_ns[@]}"; do ip netns del "$n" 2>/dev/null || true; done
    for v in "${vp[@]}"; do ip link del "$v" 2>/dev/null || true; done
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
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
cli() { # peer args...: a meshd command for that peer, bounded (CLI_LIMIT seconds, default 30)
    local i=$1; shift
    timeout "${CLI_LIMIT:-30}" ip netns exec "${ns[$i]}" "$meshd" --data-dir "$work/peer$i" "$@"
}
log_tail() { # peer, lines
    echo "---- last $2 lines of peer $1's log ($work/peer$1.log) ----" >&2
    tail -n "$2" "$work/peer$1.log" >&2 || true
}

# ---- the scene: a tiny Cycles scene that references a SIZE_MIB incompressible sound ----
mkdir -p "$work/project"
blender -b --factory-startup -noaudio --python scripts/make_demo_scene.py -- \
    "$work/project/scene.blend" --frames 1 --width 64 --height 48 --samples 1 >"$work/blender-make.log" 2>&1
head -c "${SIZE_MIB}M" /dev/urandom >"$work/project/payload.wav"
blender -b --factory-startup -noaudio "$work/project/scene.blend" --python-exit-code 1 --python-expr \
    "import bpy; s = bpy.data.sounds.load('$work/project/payload.wav'); s.use_fake_user = True; bpy.ops.wm.save_mainfile()" \
    >>"$work/blender-make.log" 2>&1
rm -f "$work/project/scene.blend1"
floor_bytes=$(($(stat -c %s "$work/project/scene.blend") + $(stat -c %s "$work/project/payload.wav")))
# Blender at low priority: the one render must not starve the daemons.
printf '#!/bin/sh\nexec nice -n 19 %q "$@"\n' "$(command -v blender)" >"$work/blender-nice"
chmod +x "$work/blender-nice"

# ---- the network: PEERS namespaces on one bridge, every link RATE both ways ----
rate_bytes=$(awk -v r="$RATE" 'BEGIN { m = 1; if (r ~ /kbit$/) m = 1e3; if (r ~ /mbit$/) m = 1e6;
    if (r ~ /gbit$/) m = 1e9; sub(/[kmg]?bit$/, "", r); printf "%d", r * m / 8 }')
# tbf bucket: 10 ms worth of the rate, at least 64 KiB (a GSO packet must fit).
burst=$(awk -v b="$rate_bytes" 'BEGIN { x = b / 100; if (x < 65536) x = 65536; printf "%d", x }')
ip netns add "$brns"; made_ns+=("$brns")
ip -n "$brns" link add br0 type bridge
ip -n "$brns" link set br0 up
for ((i = 0; i < PEERS; i++)); do
    ip netns add "${ns[$i]}"; made_ns+=("${ns[$i]}")
    ip link add "${vp[$i]}" type veth peer name "${vb[$i]}"
    ip link set "${vb[$i]}" netns "$brns"
    ip link set "${vp[$i]}" netns "${ns[$i]}"
    ip -n "$brns" link set "${vb[$i]}" master br0
    ip -n "$brns" link set "${vb[$i]}" up
    ip -n "${ns[$i]}" addr add "${addr[$i]}/16" dev "${vp[$i]}"
    ip -n "${ns[$i]}" link set "${vp[$i]}" up
    ip -n "${ns[$i]}" link set lo up
    tc -n "${ns[$i]}" qdisc add dev "${vp[$i]}" root tbf rate "$RATE" burst "$burst" latency 50ms
    tc -n "$brns" qdisc add dev "${vb[$i]}" root tbf rate "$RATE" burst "$burst" latency 50ms
done
cpu_secs() { # pid: user+system CPU seconds so far (0 once it is gone)
    awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); printf "%.2f", ($12 + $13) / hz }' "/proc/$1/stat" 2>/dev/null || echo 0
}
# Bytes through each link's qdiscs: up = sent by the peer, down = sent to it.
link_bytes() { # peer -> "up down"
    local up down
    up=$(tc -s -n "${ns[$1]}" qdisc show dev "${vp[$1]}" | awk '/Sent/ { print $2; exit }')
    down=$(tc -s -n "$brns" qdisc show dev "${vb[$1]}" | awk '/Sent/ { print $2; exit }')
    echo "$up $down"
}

cat >"$work/xfer.py" <<'EOF'
import socket, sys, time
if sys.argv[1] == "recv":  # recv ADDR PORT: count bytes until EOF, then close
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[2], int(sys.argv[3])))
    s.listen(1)
    print("listening", flush=True)
    c, _ = s.accept()
    n = 0
    while True:
        b = c.recv(1 << 20)
        if not b:
            break
        n += len(b)
    c.close()
    print(n, flush=True)
else:  # send ADDR PORT FILE...: seconds from connect until the receiver has every byte
    t = time.monotonic()
    c = socket.create_connection((sys.argv[2], int(sys.argv[3])))
    for path in sys.argv[4:]:
        with open(path, "rb") as f:
            c.sendfile(f)
    c.shutdown(socket.SHUT_WR)
    c.recv(1)  # EOF: the receiver read everything and closed
    print("%.3f" % (time.monotonic() - t))
EOF
copy_to() { # peer: one copy of the project's files from peer 0 to it; seconds in $copy_secs
    local i=$1 port=$((9000 + $1)) out="$work/recv$1.out" sent="$work/send$1.out"
    rm -f "$out" "$sent"
    # `ip netns exec` execs the command, so $! is the process itself (not a subshell); both
    # run in the background so that a signal to this script is handled at once (`wait`).
    ip netns exec "${ns[$i]}" timeout "$copy_limit" "$py" "$work/xfer.py" recv "${addr[$i]}" "$port" >"$out" 2>&1 &
    helpers+=($!)
    for _ in $(seq 1 100); do grep -qs listening "$out" && break; sleep 0.05; done
    ip netns exec "${ns[0]}" timeout "$copy_limit" "$py" "$work/xfer.py" send "${addr[$i]}" "$port" \
        "$work/project/scene.blend" "$work/project/payload.wav" >"$sent" 2>&1 &
    helpers+=($!)
    wait "${helpers[-1]}" || { echo "copy to peer $i failed (limit ${copy_limit}s): $(cat "$sent")" >&2; exit 1; }
    unset 'helpers[-1]'
    wait "${helpers[-1]}" || true
    unset 'helpers[-1]'
    copy_secs=$(cat "$sent")
    local got; got=$(tail -n 1 "$out")
    [ "$got" = "$floor_bytes" ] || { echo "copy to peer $i received $got of $floor_bytes bytes" >&2; exit 1; }
}

# One copy may take at most 3x its time at the shaped rate, plus 30 s.
copy_limit=$(awk -v b="$floor_bytes" -v r="$rate_bytes" 'BEGIN { printf "%d", 3 * b / r + 30 }')

echo "distribution: $PEERS peers, ${SIZE_MIB} MiB payload ($(mib "$floor_bytes") MiB project, 2 files)," \
    "every link $RATE up and down (tbf), $(nproc) cores, $(blender --version 2>/dev/null | head -1)"

# a. floor, b. the seeds' way (before any daemon runs: nothing else on the links or CPU)
copy_to 1
t1=$copy_secs
t=$(now)
for ((i = 1; i < PEERS; i++)); do copy_to "$i"; done
tseq=$(elapsed "$t")
printf 'floor (one copy over one link): %.2fs | seeds way (%d copies in turn): %.2fs\n' \
    "$t1" "$((PEERS - 1))" "$tseq"

# c. meshd
start() { # peer [ticket]
    local i=$1; shift
    ip netns exec "${ns[$i]}" env NO_COLOR=1 RUST_LOG="${RUST_LOG:-info}" BLENDER="$work/blender-nice" \
        "$meshd" --data-dir "$work/peer$i" join "$@" --listen "/ip4/${addr[$i]}/tcp/0" \
        --api 127.0.0.1:0 --no-mdns >"$work/peer$i.log" 2>&1 &
    pids+=($!)
}
wait_up() { # peer: until its Blender probe is done
    local i=$1
    for _ in $(seq 1 600); do
        cli "$i" peers --json 2>/dev/null | jq -e '.peers[] | select(.self) | .blender != null' >/dev/null 2>&1 && return 0
        kill -0 "${pids[$i]}" 2>/dev/null || break
        sleep 0.2
    done
    echo "peer $i did not come up" >&2; log_tail "$i" 30; exit 1
}
start 0
wait_up 0
ticket=$(cli 0 invite --json | jq -r .ticket)
for ((i = 1; i < PEERS; i++)); do start "$i" "$ticket"; done
for ((i = 1; i < PEERS; i++)); do wait_up "$i"; done
# Every peer should see all the others before the clock starts.
for _ in $(seq 1 150); do
    min=$PEERS
    for ((i = 0; i < PEERS; i++)); do
        c=$(cli "$i" peers --json 2>/dev/null | jq '[.peers[] | select(.connected and (.self | not))] | length' || echo 0)
        [ "$c" -lt "$min" ] && min=$c
    done
    [ "$min" -ge $((PEERS - 1)) ] && break
    sleep 0.2
done
echo "meshd: $PEERS daemons up; fewest connections of any peer: $min of $((PEERS - 1))"

declare -a before_up before_down
declare -a before_cpu
for ((i = 0; i < PEERS; i++)); do
    read -r before_up[i] before_down[i] < <(link_bytes "$i")
    before_cpu[i]=$(cpu_secs "${pids[$i]}")
done
t0=$(now)
CLI_LIMIT=600 cli 0 submit "$work/project/scene.blend" 1 --out "$work/out" --json --name dist \
    --samples "$SAMPLES" >"$work/submit.json"
tsubmit=$(elapsed "$t0")
job=$(jq -r .id "$work/submit.json")
files=$(jq -r .files "$work/submit.json")
bytes=$(jq -r .bytes "$work/submit.json")
echo "submitted job ${job:0:12} in ${tsubmit}s: $files files, $(mib "$bytes") MiB"
[ "$files" = 2 ] || echo "WARNING: expected 2 files (scene + payload), submit reports $files" >&2

timeout=${BENCH_TIMEOUT:-$(awk -v t="$t1" 'BEGIN { printf "%d", 120 + 10 * t }')}
declare -a ready_at state
left=$PEERS
while [ "$left" -gt 0 ]; do
    for ((i = 0; i < PEERS; i++)); do
        [ -n "${ready_at[i]:-}" ] && continue
        state[i]=$(cli "$i" status "$job" --json 2>/dev/null | jq -r '.jobs[0].project.state' 2>/dev/null || echo "?")
        if [ "${state[i]}" = ready ]; then ready_at[i]=$(elapsed "$t0"); left=$((left - 1)); fi
    done
    [ "$left" -eq 0 ] && break
    if awk -v e="$(elapsed "$t0")" -v t="$timeout" 'BEGIN { exit !(e > t) }'; then
        echo "TIMEOUT after ${timeout}s: $left of $PEERS peers not ready" >&2
        failed=1
        break
    fi
    sleep 0.2
done
tmesh=$(elapsed "$t0")
declare -a mesh_cpu
for ((i = 0; i < PEERS; i++)); do
    mesh_cpu[i]=$(awk -v a="$(cpu_secs "${pids[$i]}")" -v b="${before_cpu[i]}" 'BEGIN { printf "%.1f", a - b }')
done

echo
printf '%-5s %-15s %-9s %9s %12s %11s %9s %9s %7s\n' PEER ADDR STATE "READY s" "FETCHED MiB" "REUSED MiB" "UP MiB" "DOWN MiB" "CPU s"
for ((i = 0; i < PEERS; i++)); do
    j=$(cli "$i" status "$job" --json 2>/dev/null | jq -c '.jobs[0].project' 2>/dev/null || echo '{}')
    read -r up down < <(link_bytes "$i")
    printf '%-5s %-15s %-9s %9s %12s %11s %9s %9s %7s\n' "$i" "${addr[$i]}" \
        "$(jq -r '.state // "?"' <<<"$j")" "${ready_at[i]:--}" \
        "$(mib "$(jq -r '.bytes_fetched // 0' <<<"$j")")" "$(mib "$(jq -r '.bytes_reused // 0' <<<"$j")")" \
        "$(mib $((up - before_up[i])))" "$(mib $((down - before_down[i])))" "${mesh_cpu[i]}"
    err=$(jq -r '.error // empty' <<<"$j")
    [ -n "$err" ] && echo "      error: $err"
done
echo
for ((i = 0; i < PEERS; i++)); do
    n=$(grep -cE ' (WARN|ERROR)\b' "$work/peer$i.log" || true)
    if [ "$n" -gt 0 ]; then
        echo "peer $i log: $n WARN/ERROR lines, first ones:"
        grep -E ' (WARN|ERROR)\b' "$work/peer$i.log" | head -n 5 | sed 's/^/    /'
    fi
done
if [ "$failed" -ne 0 ]; then
    for ((i = 0; i < PEERS; i++)); do
        [ -n "${ready_at[i]:-}" ] || log_tail "$i" 40
    done
    exit 1
fi

read -r up0 _ < <(link_bytes 0)
awk -v s="$((up0 - before_up[0]))" -v b="$bytes" -v n="$((PEERS - 1))" 'BEGIN {
    printf "seed uplink: %.2fx the project size on the wire, for %d peers (a working swarm needs about 1x)\n", s / b, n }'
awk -v t="$tmesh" -v n="$(nproc)" -v c="$(printf '%s+' "${mesh_cpu[@]}")0" 'BEGIN {
    split(c, a, "+"); s = 0; for (k in a) s += a[k]
    printf "daemons CPU during Tmesh: %.1f s of %.1f s available (%d cores; Blender renders at nice 19)\n", s, t * n, n }'
printf 'times: floor T1 %.2fs | seeds way Tseq %.2fs | meshd Tmesh %.2fs (submit itself %.2fs)\n' \
    "$t1" "$tseq" "$tmesh" "$tsubmit"
printf 'ratios: Tmesh/T1 %sx (target <= 1.5x) | Tseq/Tmesh %sx\n' "$(ratio "$tmesh" "$t1")" "$(ratio "$tseq" "$tmesh")"
