#!/usr/bin/env bash
# The test suite, exactly as CI runs it: unit tests, and integration tests
# against a real systemd booted in containers and the Ollama double.
set -euo pipefail
cd "$(dirname "$0")/.."
source tests/setup.sh
if cargo fmt --version >/dev/null 2>&1; then
    cargo fmt --all --check
fi
bash tests/nix/lint.sh
cargo build --workspace --all-targets --locked
# Two at a time: each integration test boots its own container.
cargo test --workspace --locked -- --test-threads=2
