#!/usr/bin/env bash
# Runs meshd's cargo-fuzz targets (fuzz/fuzz_targets/*.rs), each for SECONDS, one after the
# other, and prints per target: runs, executions per second, corpus size, coverage, crashes.
# Usage: scripts/fuzz.sh SECONDS [TARGET...]   (default: every target)
# cargo-fuzz needs nightly compiler flags (-Z sanitizer); on a stable toolchain this script
# sets RUSTC_BOOTSTRAP=1 so that stable rustc accepts them. A crash leaves its input under
# fuzz/artifacts/TARGET/ and makes the script exit 1.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${1:?usage: scripts/fuzz.sh SECONDS [TARGET...]}
shift
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
rustc --version | grep -q nightly || export RUSTC_BOOTSTRAP=1
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo fuzz list)
# Built once; the runs below use the binaries, so editing meshd meanwhile changes nothing.
cargo fuzz build --release
bin=target/$(rustc -vV | sed -n 's/^host: //p')/release
failed=0
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    log=$(mktemp)
    if "$bin/$t" "corpus/$t" -artifact_prefix="artifacts/$t/" -max_total_time="$secs" \
        -print_final_stats=1 >"$log" 2>&1; then
        verdict="no crash"
    else
        verdict="CRASH (see fuzz/artifacts/$t/)"
        failed=1
        tail -30 "$log"
    fi
    runs=$(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "$log" | awk '{s+=$2} END {print s+0}')
    cov=$(grep -Eo 'cov: [0-9]+' "$log" | tail -1 | awk '{print $2}')
    files=$(find "corpus/$t" -type f | wc -l)
    printf '%-14s %6ss  %12s runs  %9s exec/s  cov %6s  corpus %5s  %s\n' "$t" "$secs" "$runs" \
        "$(awk -v r="$runs" -v s="$secs" 'BEGIN { printf "%d", r / s }')" "${cov:-?}" "$files" "$verdict"
    rm -f "$log"
done
exit $failed
