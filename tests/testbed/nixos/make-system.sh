#!/bin/sh
# make-system.sh LABEL: build a stand-in NixOS system and add it to the store.
#
# STAND-IN, NOT NIXOS. The container test bed runs Debian with a real Nix
# (Debian's nix-bin 2.8) but cannot run NixOS: there is no nixpkgs, no NixOS
# module system, no boot loader, and nixos-rebuild cannot evaluate or build a
# real system configuration here. This script makes the smallest thing that
# plays the part of a NixOS system closure ("toplevel") for the tools macha
# drives as root:
#
#   /nix/store/HASH-nixos-system-LABEL/
#       nixos-version                   LABEL (a real toplevel has this file)
#       bin/switch-to-configuration     switch | boot | test | dry-activate
#       etc/systemd/system/NAME         -> /nix/store/HASH-unit-NAME/NAME, for
#                                       each unit file in /etc/nixos/units
#                                       (as NixOS links its units)
#       etc/NAME                        -> /nix/store/HASH-etc-NAME/NAME, for
#                                       each file in /etc/nixos/etc (as
#                                       NixOS's etc links environment.etc;
#                                       the stand-in does not install them)
#
# What is real: the store path is added with the real `nix-store --add`, so it
# is a valid, read-only store path that `nix-env --set`, profiles, GC roots and
# `nix-collect-garbage` treat exactly like any other. What is imitated:
# switch-to-configuration moves /run/current-system (and the current-system
# GC root that NixOS's activation script maintains) and, like NixOS, puts the
# system's own units in place (links in /etc/systemd/system), stops those it
# no longer has and restarts those that changed; it writes nothing else in
# /etc and installs no boot loader.
#
# Usage (as root, inside the container): make-system.sh LABEL
#   LABEL: letters, digits and . _ + - (it becomes part of the store path name).
# Prints the store path on stdout. Each built path is also appended to
# /var/lib/nixos-standin/built (nixos-rebuild numbers its labels from it).
set -eu

BUILT_LOG=/var/lib/nixos-standin/built

if [ $# -ne 1 ]; then
    echo "usage: make-system.sh LABEL" >&2
    exit 1
fi
label=$1
# Store path names allow [A-Za-z0-9+._?=-] and must not start with a dot; the
# label is also printed by switch-to-configuration, so keep it simple.
case $label in
    '' | .* | *[!A-Za-z0-9._+-]*)
        echo "make-system.sh: invalid LABEL '$label' (letters, digits, . _ + -; not starting with .)" >&2
        exit 1
        ;;
esac

# Assemble the system in a temporary directory whose name becomes the store
# path's name, like NixOS's nixos-system-HOSTNAME-VERSION.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
sys=$work/nixos-system-$label
mkdir -p "$sys/bin"
printf '%s\n' "$label" >"$sys/nixos-version"

# store_files SOURCE PREFIX DEST: each regular file of SOURCE in a store path
# of its own named PREFIX-NAME (the same file is the same path in every
# generation), linked from DEST/NAME in the system.
store_files() {
    mkdir -p "$sys/$3"
    [ -d "$1" ] || return 0
    for file in "$1"/*; do
        [ -f "$file" ] || continue
        name=$(basename "$file")
        entry=$work/$2-$name
        mkdir -p "$entry"
        cp "$file" "$entry/$name"
        stored=$(nix-store --add "$entry")
        rm -rf "$entry"
        ln -s "$stored/$name" "$sys/$3/$name"
    done
}

# The configuration's units, linked from etc/systemd/system, and its other
# /etc files, linked from etc.
store_files /etc/nixos/units unit etc/systemd/system
store_files /etc/nixos/etc etc etc

# The activation script of this system. It cannot contain its own store path
# (that path is a hash of this very content), so it finds itself through $0,
# the way it is always invoked: PROFILE/bin/switch-to-configuration or
# /nix/store/...-nixos-system-LABEL/bin/switch-to-configuration.
cat >"$sys/bin/switch-to-configuration" <<'SCRIPT'
#!/bin/sh
# switch-to-configuration of a STAND-IN NixOS system made by
# tests/testbed/nixos/make-system.sh in macha's container test bed (Debian
# with a real Nix; NixOS itself cannot run there). Reproduces only what
# macha can observe of NixOS's switch-to-configuration:
#   switch, test   point /run/current-system at this system (and keep the
#                  GC root /nix/var/nix/gcroots/current-system -> it), as
#                  NixOS's activation does; put this system's units in
#                  place and restart those that changed; log "activated
#                  LABEL" on stderr
#   boot           only logs (NixOS would install the boot loader entry)
#   dry-activate   only logs
#   anything else  usage on stderr, exit 1
# If /etc/nixos/activation-fails exists, switch and test fail (exit 1)
# without changing anything, to test failed activations. A unit of the
# system that fails to start makes switch and test exit 4 after the rest
# was done, as NixOS's does.
set -eu

# This system's store path: strip /bin/switch-to-configuration from the
# fully resolved path of this script.
self=$(readlink -f "$0")
self=${self%/bin/switch-to-configuration}
label=$(cat "$self/nixos-version")

usage() {
    echo "Usage: $0 [switch|boot|test|dry-activate]" >&2
    echo "switch:       make the configuration the boot default and activate now" >&2
    echo "boot:         make the configuration the boot default" >&2
    echo "test:         activate the configuration, but don't make it the boot default" >&2
    echo "dry-activate: show what would be done if this configuration were activated" >&2
    exit 1
}

# Activation as far as the stand-in goes: the two symlinks NixOS maintains,
# and the system's units: those the running system had and this one has not
# are stopped and their links removed, this one's are linked into
# /etc/systemd/system, systemd reloads, and the units added or changed
# (another store path) are restarted. Like NixOS, a unit that fails to
# start makes the switch exit 4, after the rest was done.
activate() {
    if [ -e /etc/nixos/activation-fails ]; then
        echo "switch-to-configuration: activation failed" >&2
        exit 1
    fi
    echo "activating the configuration..." >&2
    old=$(readlink -f /run/current-system 2>/dev/null || true)
    if [ -n "$old" ] && [ -d "$old/etc/systemd/system" ]; then
        for link in "$old"/etc/systemd/system/*; do
            [ -L "$link" ] || continue
            name=$(basename "$link")
            if [ ! -e "$self/etc/systemd/system/$name" ]; then
                systemctl stop "$name" 2>/dev/null || true
                rm -f "/etc/systemd/system/$name"
            fi
        done
    fi
    restart=
    for link in "$self"/etc/systemd/system/*; do
        [ -L "$link" ] || continue
        name=$(basename "$link")
        target=$(readlink "$link")
        if [ "$(readlink "/etc/systemd/system/$name" 2>/dev/null)" != "$target" ]; then
            ln -sfn "$target" "/etc/systemd/system/$name"
            restart="$restart $name"
        fi
    done
    systemctl daemon-reload
    ln -sfn "$self" /run/current-system
    mkdir -p /nix/var/nix/gcroots
    ln -sfn /run/current-system /nix/var/nix/gcroots/current-system
    failed=
    for name in $restart; do
        systemctl restart "$name" 2>/dev/null || failed="$failed $name"
    done
    # A simple service "starts" when its process is forked: look again a
    # moment later for those that failed right away.
    if [ -n "$restart" ]; then
        sleep 1
        for name in $restart; do
            case " $failed " in *" $name "*) continue ;; esac
            if systemctl is-failed --quiet "$name"; then failed="$failed $name"; fi
        done
    fi
    if [ -n "$failed" ]; then
        echo "warning: the following units failed:$failed" >&2
        echo "switch-to-configuration: activated $label, with failed units" >&2
        exit 4
    fi
    echo "switch-to-configuration: activated $label" >&2
}

[ $# -eq 1 ] || usage
case $1 in
    switch)
        echo "switch-to-configuration: $label is the boot default (stand-in: no boot loader to update)" >&2
        activate
        ;;
    test)
        activate
        ;;
    boot)
        echo "switch-to-configuration: $label is the boot default (stand-in: no boot loader to update)" >&2
        ;;
    dry-activate)
        echo "switch-to-configuration: would activate $label" >&2
        ;;
    *)
        usage
        ;;
esac
SCRIPT
chmod 555 "$sys/bin/switch-to-configuration"

# The real store: the path is valid, unrooted until a profile or another GC
# root refers to it.
path=$(nix-store --add "$sys")
mkdir -p "$(dirname "$BUILT_LOG")"
echo "$path" >>"$BUILT_LOG"
echo "$path"
