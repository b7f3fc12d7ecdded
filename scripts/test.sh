#!/usr/bin/env bash
# The whole test suite: installs Blender & co. if missing, checks formatting and lints, and
# runs every unit, property and integration test (real Blender, real daemons on 127.0.0.1).
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-deps.sh
if cargo fmt --version >/dev/null 2>&1; then
    cargo fmt --all -- --check
else
    echo "note: rustfmt not installed, format check skipped (rustup component add rustfmt)"
fi
if cargo clippy --version >/dev/null 2>&1; then
    cargo clippy --all-targets --all-features --locked -- -D warnings
else
    echo "note: clippy not installed, lints skipped (rustup component add clippy)"
fi
cargo test --locked --features test-faults "$@"
