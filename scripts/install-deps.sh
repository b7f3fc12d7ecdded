#!/usr/bin/env bash
# Installs what meshd's demo and tests need on Debian/Ubuntu: a C compiler, Blender (the distribution's
# package), ffmpeg, OpenSSH, curl, xz, iproute2 (the mDNS test builds its own LAN from network
# namespaces), bubblewrap (Blender's sandbox) and Chromium with its WebDriver (the dashboard's
# browser test). Does nothing for what is already there.
set -euo pipefail

need=()
# A C compiler: ring, aws-lc and zstd build C code (rustup's Rust needs one to link anyway).
command -v cc >/dev/null 2>&1 || need+=(gcc libc6-dev)
command -v blender >/dev/null 2>&1 || need+=(blender)
command -v ffmpeg >/dev/null 2>&1 || need+=(ffmpeg)
command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh >/dev/null 2>&1 || need+=(openssh-client)
command -v ip >/dev/null 2>&1 || [ -x /usr/sbin/ip ] || need+=(iproute2)
# A rented machine without Blender downloads one with curl and unpacks it with xz; the
# cloud tests do the same from a local server.
command -v curl >/dev/null 2>&1 || need+=(curl ca-certificates)
command -v xz >/dev/null 2>&1 || need+=(xz-utils)
command -v bwrap >/dev/null 2>&1 || need+=(bubblewrap)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
[ ${#need[@]} -eq 0 ] && exit 0

sudo=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "error: need root or sudo to install: ${need[*]}" >&2; exit 1; }
    sudo="sudo"
fi
echo "installing: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
