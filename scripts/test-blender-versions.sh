#!/usr/bin/env bash
# Runs meshd's real-Blender tests against other Blender versions, using the official `bpy`
# wheels from PyPI (real Blender builds as a Python module) and scripts/bpy-blender, a
# `blender` command over the module.
#
#   scripts/test-blender-versions.sh [SERIES...]     default: 4.2 4.5 5.0
#
# Per series it takes the newest patch release pip offers for Python 3.11 (`pip index
# versions bpy`), installs it once into a cached venv
# (${MESHD_BPY_CACHE:-${XDG_CACHE_HOME:-~/.cache}/meshd}/bpy-X.Y, reused and upgraded to a newer
# patch when one appears), writes the wrapper $venv/bin/blender, records a real log into
# src/render/testdata/blender-<version>-cycles.log, then runs with BLENDER=$venv/bin/blender:
#   cargo test --locked --lib  -- render::worker::tests render::probe::tests::probe_real_blender
#                                 render::logparse
#   cargo test --locked --test render_jobs --test mesh --test projects
# Prints one summary line per version; exits non-zero if any version failed.
#
# Environment: PYTHON (a Python 3.11; default python3.11, else python3), MESHD_BPY_OFFLINE=1
# (no index query: use what the cached venvs hold), CARGO_TEST_FLAGS (extra cargo flags,
# default `--features test-faults` like scripts/test.sh, so both share build artifacts),
# MESHD_SKIP_CARGO=1 (only prepare the venvs and record the logs).
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD

series=("$@")
[ ${#series[@]} -gt 0 ] || series=(4.2 4.5 5.0)
cache=${MESHD_BPY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/meshd}
read -r -a cargo_flags <<< "${CARGO_TEST_FLAGS:---features test-faults}"

python=${PYTHON:-}
if [ -z "$python" ]; then
    if command -v python3.11 >/dev/null 2>&1; then python=python3.11; else python=python3; fi
fi
pyver=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true)
if [ "$pyver" != "3.11" ]; then
    echo "error: the bpy 4.2-5.0 wheels need Python 3.11; $python is ${pyver:-missing} (set PYTHON)" >&2
    exit 2
fi

log() { printf '\n=== %s\n' "$*"; }

# Newest X.Y.* release of bpy that pip can install here (empty when offline/unknown).
latest_patch() {
    local s=$1
    [ "${MESHD_BPY_OFFLINE:-}" = 1 ] && return 0
    "$python" -m pip index versions bpy 2>/dev/null |
        sed -n 's/^Available versions: //p' | tr ',' '\n' | tr -d ' ' |
        grep -E "^${s//./\\.}\.[0-9]+$" | sort -t. -k3,3n | tail -n 1
}

installed_version() {
    "$1/bin/python" -c 'import importlib.metadata as m; print(m.version("bpy"))' 2>/dev/null
}

# Creates or updates the venv for series $1; prints nothing, sets $venv and $version.
prepare_venv() {
    local s=$1 want
    venv=$cache/bpy-$s
    want=$(latest_patch "$s")
    if [ ! -x "$venv/bin/python" ]; then
        mkdir -p "$cache"
        "$python" -m venv "$venv" || return 1
    fi
    version=$(installed_version "$venv")
    if [ -z "$version" ] || { [ -n "$want" ] && [ "$version" != "$want" ]; }; then
        [ -n "$want" ] || { echo "no bpy $s.* release found by pip" >&2; return 1; }
        echo "installing bpy==$want into $venv (large download, once)"
        "$venv/bin/python" -m pip install --disable-pip-version-check -q "bpy==$want" || return 1
        version=$(installed_version "$venv")
    fi
    [ -n "$version" ] || return 1
    # The wrapper execs the venv's Python on this checkout's launcher (same pid as Blender's).
    printf '#!/bin/sh\nBPY_BLENDER_ARGV0="$0" exec "%s" "%s" "$@"\n' \
        "$venv/bin/python" "$root/scripts/bpy-blender" > "$venv/bin/blender"
    chmod +x "$venv/bin/blender"
}

# Records how this Blender renders: plain runs as meshd starts them, one with the `render`
# log category (5.0 prints its progress lines only then), the driver, and two failures.
record_log() {
    local b=$1 out=$2 tmp rc=0
    tmp=$(mktemp -d) || return 1
    "$b" -b --factory-startup -noaudio --python-exit-code 1 --python scripts/make_demo_scene.py \
        -- "$tmp/tiny.blend" --frames 3 --width 64 --height 48 --samples 4 >"$tmp/make.log" 2>&1 ||
        { cat "$tmp/make.log"; rm -rf "$tmp"; return 1; }
    cp src/render/driver.py "$tmp/meshd_driver.py"
    printf '%s' '{"scene": null, "camera": null, "engine": "CYCLES", "format": "PNG",
        "color_depth": null, "resolution_pct": null, "samples": null, "device": "CPU",
        "device_id": null, "project": null}' > "$tmp/job.json"
    run() { echo "\$ blender $*"; "$b" "$@" 2>&1; echo "(exit code $?)"; }
    {
        run -b --factory-startup -Y -noaudio "$tmp/tiny.blend" -E CYCLES \
            -o "$tmp/out/frame_####" -F PNG -x 1 -f 1..2
        run -b --factory-startup -Y -noaudio --log render "$tmp/tiny.blend" \
            -o "$tmp/out/frame_####" -f 3
        run -b --factory-startup -Y -noaudio "$tmp/nope.blend" -f 1
        run -b --factory-startup -Y -noaudio "$tmp/tiny.blend" -o "$tmp/tiny.blend/x/frame_####" -f 3
        printf '%s\n' "{\"cmd\":\"render\",\"frame\":1,\"out\":\"$tmp/out/frame_####\"}" \
            "{\"cmd\":\"render\",\"frame\":3,\"out\":\"$tmp/tiny.blend/x/frame_####\"}" \
            "{\"cmd\":\"render\",\"frame\":2,\"out\":\"$tmp/out/frame_####\"}" '{"cmd":"quit"}' |
            run -b --factory-startup -Y -noaudio "$tmp/tiny.blend" --python-exit-code 86 \
                --python "$tmp/meshd_driver.py" -- --meshd-config "$tmp/job.json"
    } > "$tmp/raw.log"
    grep -q "Saved: '$tmp/out/frame_0002.png'" "$tmp/raw.log" || rc=1
    sed -e "s|$tmp|/renders|g" -e "s|$venv|/venv|g" -e "s|$root|/meshd|g" "$tmp/raw.log" > "$out"
    rm -rf "$tmp"
    return $rc
}

# `cargo test` with a summary of its `test result:` lines; 0 when all passed.
cargo_tests() {
    local name=$1 out rc
    shift
    out=$(mktemp)
    # Blender's sandbox must see the venv, its base Python and the launcher script.
    local sandbox_read
    sandbox_read="$venv:$root/scripts:$("$venv/bin/python" -c 'import sys; print(sys.base_prefix)')"
    BLENDER=$venv/bin/blender MESHD_SANDBOX_READ=$sandbox_read \
        cargo test --locked "${cargo_flags[@]}" "$@" 2>&1 | tee "$out"
    rc=${PIPESTATUS[0]}
    local passed failed
    passed=$(awk '/^test result:/ { for (i = 1; i < NF; i++) if ($(i+1) ~ /^passed/) n += $i } END { print n + 0 }' "$out")
    failed=$(awk '/^test result:/ { for (i = 1; i < NF; i++) if ($(i+1) ~ /^failed/) n += $i } END { print n + 0 }' "$out")
    results+=("$name ${passed:-0} passed, ${failed:-0} failed$([ "$rc" = 0 ] || echo " (FAIL)")")
    rm -f "$out"
    return "$rc"
}

summary=()
status=0
for s in "${series[@]}"; do
    start=$SECONDS
    results=()
    ok=1
    log "bpy $s"
    if ! prepare_venv "$s"; then
        summary+=("bpy $s: FAIL (cannot install or find the wheel)")
        status=1
        continue
    fi
    b=$venv/bin/blender
    banner=$("$b" --version 2>/dev/null | head -n 1)
    echo "$banner ($b)"
    if [ "${banner#Blender }" = "$banner" ]; then
        summary+=("bpy $version: FAIL ($b --version printed: ${banner:-nothing})")
        status=1
        continue
    fi
    testlog=src/render/testdata/blender-$version-cycles.log
    if record_log "$b" "$testlog"; then
        results+=("log recorded in $testlog")
    else
        results+=("recording $testlog FAILED")
        ok=0
    fi
    if [ "${MESHD_SKIP_CARGO:-}" != 1 ]; then
        cargo_tests "unit" --lib -- render::worker::tests render::probe::tests::probe_real_blender \
            render::logparse || ok=0
        cargo_tests "integration" --test render_jobs --test mesh --test projects || ok=0
    fi
    verdict=PASS
    [ "$ok" = 1 ] || { verdict=FAIL; status=1; }
    line="bpy $version ($banner): $verdict in $((SECONDS - start))s"
    for r in "${results[@]}"; do line+="; $r"; done
    summary+=("$line")
done

log "summary"
printf '%s\n' "${summary[@]}"
exit "$status"
