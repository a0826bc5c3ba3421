#!/usr/bin/env bash
# Install the Debian packages named as arguments, skipping those already installed.
# --no-start: a service a newly installed package starts (docker-registry listens on :5000,
# where `make run` serves) is stopped and disabled again; the benchmark starts its own.
set -euo pipefail
no_start=0
if [ "${1:-}" = "--no-start" ]; then no_start=1; shift; fi
missing=()
for pkg in "$@"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing system packages: ${missing[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null; then SUDO="sudo"; else
        echo "error: need root to install ${missing[*]}; run 'apt-get install ${missing[*]}' as root" >&2
        exit 1
    fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
if [ "$no_start" = 1 ] && command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    for pkg in "${missing[@]}"; do
        $SUDO systemctl disable --now "$pkg" >/dev/null 2>&1 || true
    done
fi
