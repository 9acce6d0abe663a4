# The skeleton the setup scripts of cached test components share
# (tests/chroma/setup.sh, tests/llm/setup.sh): a folder built once, into a
# temporary sibling renamed into place only when complete, its stamp file
# written last, so that a cached call only tests the stamp and an
# interrupted build is never used. Sourced (bash); the caller sets
#   NAME   for messages ("chroma/setup.sh")
#   DIR    the cache folder, STAMP a file in it, CACHE_VAR the variable
#          that chooses another folder (for messages)
# and calls, in this order:
#   cache_fast_path          prints DIR and exits when it is built
#   cache_python [CMD:PKG...] installs python3 with venv, flock, and each
#                            PKG whose CMD is missing (as root)
#   cache_begin              waits for another builder, then sets TMP
#   cache_finish             moves TMP into place

say() { echo "$NAME: $*" >&2; }

cache_fast_path() {
    if [ -f "$STAMP" ]; then
        echo "$DIR"
        exit 0
    fi
}

# CI starts from a fresh machine: what is missing is installed, as root.
cache_install() {
    [ $# -gt 0 ] || return 0
    if [ "$(id -u)" -ne 0 ]; then
        say "missing $*; run as root to install them (sudo bash $0)"
        exit 2
    fi
    say "installing: $*"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq "$@" >&2
}

# Python 3.9 or later with venv, flock, and each PKG whose CMD is missing.
cache_python() {
    local need=() pair
    for pair in "$@"; do
        command -v "${pair%%:*}" >/dev/null || need+=("${pair#*:}")
    done
    command -v python3 >/dev/null || need+=(python3)
    command -v flock >/dev/null || need+=(util-linux)
    # Debian's python3 makes virtual environments only with python3-venv (ensurepip).
    if command -v python3 >/dev/null && ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
        need+=(python3-venv)
    fi
    cache_install "${need[@]}"
    python3 -c 'import sys; sys.exit(sys.version_info < (3, 9))' || { say "python3 is older than 3.9"; exit 2; }
}

cache_begin() {
    mkdir -p "$(dirname "$DIR")"
    # Serialise concurrent callers: the second one waits, then sees the stamp.
    exec 9>"$DIR.lock"
    flock 9
    cache_fast_path
    # Leftovers of killed builds go first.
    local old
    for old in "$DIR".tmp.*; do
        if [ -e "$old" ]; then rm -rf --one-file-system "$old"; fi
    done
    # $DIR is made only by the rename below, stamp inside: one without a
    # stamp is someone else's (or was tampered with), and is not removed.
    if [ -e "$DIR" ]; then
        say "$DIR exists but holds no $(basename "$STAMP"); remove it or choose another $CACHE_VAR"
        exit 2
    fi
    TMP=$(mktemp -d "$DIR.tmp.XXXXXX")
    trap 'rm -rf --one-file-system "$TMP"' EXIT
    trap 'exit 130' INT TERM HUP
    chmod 755 "$TMP"
}

cache_finish() {
    mv -T "$TMP" "$DIR"
    trap - EXIT
}
