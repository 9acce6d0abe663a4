#!/usr/bin/env bash
# Evaluates the NixOS module with nixpkgs' real lib (lib.evalModules) and
# the stand-ins of tests/nix/stubs.nix, and checks what it renders:
#
#   1. a host with every option set evaluates, and the expectations in
#      eval-module.nix hold (configuration file, serviceConfig, user, ...),
#      and so do those of a host with the Chroma backend;
#   2. what it renders equals the files in tests/nix/rendered/, which
#      tests/service_unit.rs installs in the test container (the unit under
#      systemd, with `systemd-analyze security`);
#   3. each option has a visible effect;
#   4. each bad configuration is refused, with the message a person needs;
#   5. flake.nix's outputs evaluate for both systems (eval-flake.nix: the
#      package's source and inputs, apps, overlay, the flake's module, the
#      VM test's machine), nixpkgs' packages stood in for by stubs.nix.
#
# Usage: tests/nix/eval.sh [--update] NIXPKGS_LIB
#   NIXPKGS_LIB  a directory holding nixpkgs' lib/ (a checkout of nixpkgs,
#                or of nix-community/nixpkgs.lib, lib only)
#   --update     rewrite tests/nix/rendered/ instead of comparing with it
#
# Not a CI step: CI machines have no copy of nixpkgs' lib and no network to
# GitHub. Nix 2.8 (Debian's nix-bin) is enough; it runs as root, no daemon.
set -euo pipefail

update=no
if [ "${1:-}" = "--update" ]; then
    update=yes
    shift
fi
lib_dir="${1:?usage: tests/nix/eval.sh [--update] NIXPKGS_LIB (a directory holding nixpkgs lib/)}"
if [ ! -f "$lib_dir/lib/default.nix" ]; then
    echo "eval.sh: $lib_dir/lib/default.nix does not exist: NIXPKGS_LIB must hold nixpkgs' lib/ directory" >&2
    exit 2
fi
lib_dir="$(cd "$lib_dir" && pwd)"
here="$(cd "$(dirname "$0")" && pwd)"
harness="$here/eval-module.nix"
rendered="$here/rendered"

nix_eval() {
    nix --extra-experimental-features nix-command eval --file "$harness" --arg lib "import $lib_dir/lib" "$@"
}

echo "nixpkgs lib $(nix-instantiate --eval -E "(import $lib_dir/lib).version"), $(nix --version)"

# 1 and 2: the good host.
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
nix_eval --raw good.unit >"$out/macha-autonomous.service"
nix_eval --json good.settings >"$out/config.json"
nix_eval --raw good.polkitRule >"$out/50-macha-autonomous.rules"
for helper in $(nix_eval --raw good.helpers --apply 'h: builtins.concatStringsSep " " (builtins.attrNames h)'); do
    nix_eval --raw "good.helpers.\"$helper\"" >"$out/$helper"
done
echo "ok: a host with every option set evaluates, and its expectations hold"

if [ "$update" = yes ]; then
    rm -rf "$rendered"
    cp -r "$out" "$rendered"
    echo "ok: tests/nix/rendered/ rewritten"
elif ! diff -ru "$rendered" "$out"; then
    echo "FAIL: the module renders something else than tests/nix/rendered/ (above); if that is intended, run: tests/nix/eval.sh --update $lib_dir" >&2
    exit 1
else
    echo "ok: what it renders equals tests/nix/rendered/"
fi

# The Chroma backend next to a local ChromaDB (not in rendered/: see
# eval-module.nix).
nix-instantiate --eval --strict "$harness" --arg lib "import $lib_dir/lib" -A chroma >/dev/null
echo "ok: the Chroma backend: its configuration, credential and order after a local ChromaDB"

# 3: every option has an effect (each check is true or throws, naming it).
nix-instantiate --eval --strict --json "$harness" --arg lib "import $lib_dir/lib" -A effects >"$out/effects.json"
if grep -q false "$out/effects.json"; then
    echo "FAIL: $(cat "$out/effects.json")" >&2
    exit 1
fi
echo "ok: every option has a visible effect: $(cat "$out/effects.json")"

# 4: refused, with the message.
failures=0
refused() {
    local case="$1" expected="$2" err
    if err="$(nix-instantiate --eval --strict --json "$harness" --arg lib "import $lib_dir/lib" -A "bad.$case" 2>&1 >/dev/null)"; then
        echo "FAIL: bad.$case evaluated, but NixOS must refuse it" >&2
        failures=$((failures + 1))
    elif ! grep -qF -- "$expected" <<<"$err"; then
        echo "FAIL: bad.$case was refused without saying \"$expected\":" >&2
        echo "$err" >&2
        failures=$((failures + 1))
    else
        echo "ok: bad.$case refused: $(grep -m1 -F -- "$expected" <<<"$err" | sed 's/^ *//')"
    fi
}
refused autonomyLevel "services.macha-autonomous.autonomyLevel' is not of type \`one of \"observe\", \"suggest\", \"auto-safe\", \"auto-full\"'"
refused tokenFileInStore "services.macha-autonomous.gotify.tokenFile is in the Nix store"
refused tokenFileAsPath "services.macha-autonomous.gotify.tokenFile' is not of type \`null or string matching the pattern /.+'"
refused tokenWithoutUrl "set both url and tokenFile (notifications on) or"
refused settingOfUnknownType "services.macha-autonomous.settings.act.cooldown' is not of type \`TOML value'"
refused settingOwnedByAnOption "services.macha-autonomous.settings.state_dir' has conflicting definition values"
refused tokenFileInSettings "services.macha-autonomous.settings.gotify.token_file is set; use"
refused protectedServiceName "is not of type \`string matching the pattern"
refused checkInterval "services.macha-autonomous.checkInterval' is not of type \`integer between 1 and 86400 (both inclusive)'"
refused chromaWithoutUrl "services.macha-autonomous.knowledgeBase.backend is \"chroma\" but no Chroma server is named"
refused chromaTokenFileInStore "services.macha-autonomous.knowledgeBase.chroma.tokenFile is in the Nix store"
refused chromaTokenFileAsPath "services.macha-autonomous.knowledgeBase.chroma.tokenFile' is not of type \`null or string matching the pattern /.+'"
refused chromaTokenFileInSettings "services.macha-autonomous.settings.knowledge_base.chroma.token_file is set; use"
refused chromaUrlWithCredentials "services.macha-autonomous.knowledgeBase.chroma.url' is not of type \`null or string matching the pattern https?://[^?@]+'"
refused runbooksInHome "services.macha-autonomous.knowledgeBase.runbooks is /home/ops/runbooks, which the service's"
refused runbooksInTmp "services.macha-autonomous.knowledgeBase.runbooks is /tmp/runbooks, which the service's"
refused remoteHostsWithoutKey "remote.hosts lists hosts, but remote.privateKeyFile is not set"
refused remoteHostUnchecked "give each host exactly one of hostKey and knownHosts"
refused remoteKeyInStore "services.macha-autonomous.remote.privateKeyFile is in the Nix store"
refused controllersWithoutSshd "services.openssh.enable is not set"
refused alertmanagerWithoutToken "services.macha-autonomous.alertmanager.enable is set but alertmanager.tokenFile is not"
refused alertmanagerTokenInStore "services.macha-autonomous.alertmanager.tokenFile is in the Nix store"
refused ntfyWithoutTopic "services.macha-autonomous.ntfy.url is set but ntfy.topic is not"
refused matrixWithoutRoom "services.macha-autonomous.matrix.homeserver is set: set matrix.roomId"
refused matrixRoomAlias "services.macha-autonomous.matrix.roomId' is not of type"
refused matrixTokenInStore "ntfy.tokenFile or matrix.tokenFile is in the Nix store"
refused controllerKeyWithACommand "services.macha-autonomous.remote.allowControllers.\"[definition 1-entry 1]\".key' is not of type"
if [ "$failures" -gt 0 ]; then
    echo "FAIL: $failures bad configuration(s) not refused as they should be" >&2
    exit 1
fi

# 5: the flake's outputs. --read-write-mode: the package's source
# (lib.fileset.toSource) is copied into the store.
if ! nix-instantiate --read-write-mode --eval --strict "$here/eval-flake.nix" --arg lib "import $lib_dir/lib" >/dev/null; then
    echo "FAIL: flake.nix's outputs (above)" >&2
    exit 1
fi
echo "ok: flake.nix's outputs evaluate for x86_64-linux and aarch64-linux"
echo "all module and flake evaluations passed"
