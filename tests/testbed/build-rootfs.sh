#!/bin/sh
# Build (once) and cache a Debian bookworm rootfs that boots a real systemd
# under systemd-nspawn, for macha's integration tests.
#
# Usage: build-rootfs.sh [DIR]
#   DIR defaults to $MACHA_TESTBED_CACHE/bookworm-v$VERSION
#   ($MACHA_TESTBED_CACHE defaults to /var/cache/macha-testbed).
# The last line on stdout is the rootfs path; progress goes to stderr.
# Needs root. Cached calls only test a stamp file and exit.
set -eu

# Bump whenever the recipe below changes: a new version builds a new directory,
# so a stale rootfs is never reused.
VERSION=2

CACHE=${MACHA_TESTBED_CACHE:-/var/cache/macha-testbed}
DIR=${1:-$CACHE/bookworm-v$VERSION}
DIR=${DIR%/}
STAMP=$DIR/.macha-testbed-stamp

# Fast path: a stamp exists only in a completely built rootfs (it is written
# before the atomic rename), so its presence means the rootfs is usable.
if [ -f "$STAMP" ]; then
    echo "$DIR"
    exit 0
fi

if [ "$(id -u)" != 0 ]; then
    echo "build-rootfs.sh: must run as root (debootstrap, systemd-nspawn)" >&2
    exit 1
fi

mkdir -p "$(dirname "$DIR")"

# Serialise concurrent callers: the second one waits, then sees the stamp.
exec 9>"$DIR.lock"
flock 9
if [ -f "$STAMP" ]; then
    echo "$DIR"
    exit 0
fi

# Tools (CI starts from a fresh machine).
missing=
command -v debootstrap >/dev/null 2>&1 || missing="$missing debootstrap"
command -v systemd-nspawn >/dev/null 2>&1 || missing="$missing systemd-container"
if [ -n "$missing" ]; then
    echo "build-rootfs.sh: installing$missing" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update >&2
    # shellcheck disable=SC2086
    apt-get install -y $missing >&2
fi

# Build into a temporary sibling, renamed into place only when complete, so an
# interrupted build is never used. Leftovers of killed builds are removed here.
# debootstrap mounts /proc and /sys inside its target: unmount anything left
# there before removing, and never cross into another file system.
remove_tree() {
    grep -F " $1/" /proc/mounts | cut -d' ' -f2 | sort -r | while read -r m; do
        umount -l "$m" || true
    done
    rm -rf --one-file-system "$1"
}
for old in "$DIR".tmp.*; do
    [ -e "$old" ] && remove_tree "$old"
done
TMP=$(mktemp -d "$DIR.tmp.XXXXXX")
trap 'remove_tree "$TMP"' EXIT
trap 'exit 130' INT TERM HUP
chmod 755 "$TMP"

start=$(date +%s)
echo "build-rootfs.sh: debootstrap bookworm into $TMP (one to two minutes)" >&2
# nix-bin is Debian's Nix 2.8 (binaries only; debootstrap installs no
# Recommends, so nix-setup-systemd and its nix-daemon socket/service are not
# installed and root uses the local store directly). libdbi-perl is listed
# because debootstrap does not resolve virtual packages: nix-bin's dependency
# libdbd-sqlite3-perl needs perl-dbdabi-94, which only libdbi-perl provides.
debootstrap --variant=minbase \
    --include=systemd,systemd-sysv,dbus,libpam-systemd,openssh-server,polkitd,nix-bin,libdbi-perl \
    bookworm "$TMP" >&2

# Nix, as on a NixOS host: a build group with build users (what Debian's
# nix-setup-systemd would create; without the group every nix command run by
# root warns "the group 'nixbld' specified in 'build-users-group' does not
# exist"), and an initialised store (/nix/store, /nix/var/nix/db, gcroots,
# profiles), because a NixOS host always has one. No nix.conf: nothing here
# builds derivations. The "GC Warning" lines about /proc come from Nix's
# garbage-collected allocator in the chroot (no /proc there) and are harmless.
chroot "$TMP" groupadd --system nixbld
for n in 1 2 3 4 5 6 7 8 9 10; do
    chroot "$TMP" useradd --system --comment "Nix build user $n" \
        --home-dir /var/empty --gid nixbld --groups nixbld --no-user-group \
        --shell /usr/sbin/nologin "nixbld$n"
done
chroot "$TMP" nix-store --init >&2

# journald: no rate limit (it silently drops bursts otherwise) and a
# persistent journal in /var/log/journal, which the host reads through
# /proc/INIT/root/var/log/journal.
mkdir -p "$TMP/etc/systemd/journald.conf.d" "$TMP/var/log/journal"
cat >"$TMP/etc/systemd/journald.conf.d/macha-test.conf" <<'EOF'
[Journal]
RateLimitIntervalSec=0
Storage=persistent
EOF

# Nothing fails to boot without masks (measured: "running", no failed unit).
# These are masked only to keep the unit list quiet and deterministic for tests
# that watch systemd: console-getty prints a login prompt into the console log;
# the apt, e2scrub and dpkg-db-backup timers/services would start jobs at
# random times (apt with no network) that a test did not ask for.
for unit in \
    console-getty.service \
    apt-daily.timer apt-daily-upgrade.timer \
    e2scrub_all.timer e2scrub_reap.service dpkg-db-backup.timer
do
    ln -sf /dev/null "$TMP/etc/systemd/system/$unit"
done

# debootstrap copies the host's /etc/hostname; without it the container keeps
# the hostname nspawn gives it, i.e. the machine name.
rm -f "$TMP/etc/hostname"

# Each boot gets its own machine ID (nspawn passes a random one when
# /etc/machine-id is empty), so two containers' journals never share an ID.
: >"$TMP/etc/machine-id"
rm -f "$TMP/var/lib/dbus/machine-id"
[ -d "$TMP/var/lib/dbus" ] && ln -s /etc/machine-id "$TMP/var/lib/dbus/machine-id"

# Smaller cache.
rm -f "$TMP"/var/cache/apt/archives/*.deb "$TMP"/var/lib/apt/lists/*_Packages

printf 'macha-testbed rootfs v%s built %s\n' "$VERSION" "$(date -u +%FT%TZ)" >"$TMP/.macha-testbed-stamp"
remove_tree "$DIR"
mv "$TMP" "$DIR"
trap - EXIT
echo "build-rootfs.sh: built $DIR in $(( $(date +%s) - start )) s" >&2
echo "$DIR"
