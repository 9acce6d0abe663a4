#!/usr/bin/env bash
# The test suite, exactly as CI runs it: unit tests, and integration tests
# against a real systemd booted in containers and the Ollama double.
set -euo pipefail
cd "$(dirname "$0")/.."
source tests/setup.sh
# A real small model behind Ollama's API for tests/real_model.rs: llama.cpp
# compiled once into a cache (minutes, the first time only) and Gemma 3 270M.
MACHA_LLM_DIR="$(bash tests/llm/setup.sh | tail -n 1)"
export MACHA_LLM_DIR
# A real Chroma server for tests/chroma.rs: chromadb from PyPI installed once
# into a cache (about 45 s, the first time only).
MACHA_CHROMA_DIR="$(bash tests/chroma/setup.sh | tail -n 1)"
export MACHA_CHROMA_DIR
if cargo fmt --version >/dev/null 2>&1; then
    cargo fmt --all --check
fi
# The Nix formatter and dead-code finder the Nix files are checked with,
# built once into ~/.cargo/bin (a few minutes, the first time only);
# versions pinned so the formatting does not change under the project.
for tool in nixpkgs-fmt@1.3.0 deadnix@1.3.1; do
    if ! command -v "${tool%@*}" >/dev/null; then
        echo "installing ${tool} (cargo install, once)" >&2
        cargo install --quiet --locked "$tool"
    fi
done
bash tests/nix/lint.sh
cargo build --workspace --all-targets --locked
# Two at a time: each integration test boots its own container.
cargo test --workspace --locked -- --test-threads=2
