#!/usr/bin/env bash
# Installs whatever craft needs that is missing (Debian 12, run as root or
# with sudo available) and configures a meson build directory.
#   scripts/setup.sh BUILD_DIR [meson options...]
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(build-essential meson ninja-build pkg-config libmsgpack-dev libevent-dev
          libsqlite3-dev check)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

build=${1:?usage: setup.sh BUILD_DIR [meson options]}
shift
if [ -f "$build/build.ninja" ]; then
    meson setup --reconfigure "$build" "$@" >/dev/null
else
    meson setup "$build" "$@" >/dev/null
fi
ninja -C "$build"
