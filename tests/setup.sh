#!/usr/bin/env bash
# Installs what building and testing macha needs on a Debian machine, and
# builds (once, cached) the container root filesystem the tests boot.
# Sourced by tests/run.sh and tests/demo.sh; safe to run again.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
    echo "macha's tests boot a systemd container with systemd-nspawn and must run as root (try: sudo bash $0)" >&2
    exit 2
fi

need=()
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v systemd-nspawn >/dev/null || need+=(systemd-container)
command -v pkg-config >/dev/null || need+=(pkg-config)
command -v cc >/dev/null || need+=(gcc libc6-dev)
command -v nsenter >/dev/null || need+=(util-linux)
pkg-config --exists libsystemd 2>/dev/null || need+=(libsystemd-dev)
# libssh2 (the ssh2 crate, built from its bundled source) uses OpenSSL.
pkg-config --exists openssl 2>/dev/null || need+=(libssl-dev)
# Network namespaces for the remote tests' hosts (ip netns).
command -v ip >/dev/null || need+=(iproute2)
# Writes journal files of past boots for the journal vacuum tests.
[ -x /lib/systemd/systemd-journal-remote ] || need+=(systemd-journal-remote)
# Parses the Nix files and reads flake.lock (tests/nix/lint.sh); Debian's Nix
# 2.8 runs as root without a daemon.
command -v nix-instantiate >/dev/null || need+=(nix-bin)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing: ${need[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need[@]}" >/dev/null
fi

# The Prometheus tests: a real Prometheus scrapes the daemon and promtool
# checks the exposition; each is started by the tests on loopback ports of
# their own, so the services the packages bring are stopped.
prom=()
command -v prometheus >/dev/null || prom+=(prometheus)
command -v prometheus-alertmanager >/dev/null || prom+=(prometheus-alertmanager)
if [ ${#prom[@]} -gt 0 ]; then
    echo "installing: ${prom[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${prom[@]}" >/dev/null
    if [ -d /run/systemd/system ]; then
        systemctl disable --now prometheus.service prometheus-alertmanager.service >/dev/null 2>&1 || true
    fi
fi

if ! command -v cargo >/dev/null; then
    for c in "$HOME/.cargo/bin/cargo" /usr/local/cargo/bin/cargo; do
        [ -x "$c" ] && export PATH="$(dirname "$c"):$PATH" && break
    done
fi
if ! command -v cargo >/dev/null; then
    echo "cargo not found: install a Rust toolchain (https://rustup.rs), then run this again" >&2
    exit 2
fi

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MACHA_TESTBED_ROOTFS="$(bash "$here/testbed/build-rootfs.sh" | tail -n 1)"
export MACHA_TESTBED_ROOTFS
