#!/usr/bin/env bash
# The whole test suite: installs Blender & co. if missing, checks formatting and lints, and
# runs every unit, property and integration test (real Blender, real daemons on 127.0.0.1).
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-deps.sh
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked "$@"
