#!/usr/bin/env bash
# One real macha cycle on this machine: a systemd container with a failing
# unit, Ollama (or the project's double when none runs on 127.0.0.1:11434),
# and macha-check / macha-approve / macha-logs against them.
set -euo pipefail
cd "$(dirname "$0")/.."
source tests/setup.sh
cargo build --workspace --bins --locked -q
exec target/debug/macha-demo
