#!/usr/bin/env bash
# The Nix files' checks that need no nixpkgs: every .nix file parses,
# is formatted as nixpkgs-fmt formats it, and has no dead code (deadnix);
# flake.lock pins nixpkgs with rev, narHash and lastModified.
# tests/setup.sh installs nix-instantiate (Debian's nix-bin), tests/run.sh
# nixpkgs-fmt and deadnix. Evaluating the module needs nixpkgs' lib:
# tests/nix/eval.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."

for tool in nix-instantiate nixpkgs-fmt deadnix; do
    if ! command -v "$tool" >/dev/null; then
        echo "tests/nix/lint.sh: $tool is missing; tests/run.sh installs it" >&2
        exit 2
    fi
done

# The repository's own .nix files (a clean clone has nothing else; a working
# copy may have build output under target/).
mapfile -t files < <(git ls-files --cached --others --exclude-standard -- '*.nix')
if [ "${#files[@]}" -eq 0 ]; then
    echo "tests/nix/lint.sh: no .nix files found" >&2
    exit 2
fi

failed=0
for f in "${files[@]}"; do
    if ! err="$(nix-instantiate --parse "$f" 2>&1 >/dev/null)"; then
        echo "$f does not parse: $err" >&2
        failed=1
    fi
done
nixpkgs-fmt --check "${files[@]}" || { echo "run: nixpkgs-fmt ${files[*]}" >&2; failed=1; }
deadnix --fail "${files[@]}" || failed=1
nix-instantiate --eval tests/nix/check-flake-lock.nix >/dev/null || failed=1

if [ "$failed" -ne 0 ]; then
    exit 1
fi
echo "nix: ${#files[@]} files parse, are formatted and have no dead code; flake.lock pins nixpkgs"
