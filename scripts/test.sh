#!/usr/bin/env bash
# The project's test command (the README and .ci/run call it).
# Builds the host and every Wasm plugin (scripts/build.sh installs the wasm32-wasip2 target if
# missing), then runs every native test in the release profile: unit tests, the SigmaHQ
# regression suite, the end-to-end tests that run dist/sigmaforge and dist/*.wasm as a user would.
# The tests that need the public corpora read $SIGMAFORGE_DATA, then ../shared/data.
set -euo pipefail
cd "$(dirname "$0")/.."
"$(dirname "$0")/build.sh"
export SIGMAFORGE_DIST="$PWD/dist"
# Tests print little; the harness' own summary lines are what CI reads.
# Default members are the native crates; the Wasm plugin crates are built by build.sh.
# The benchmarks are not run here (BENCHMARKS.md records them), but they must keep compiling.
cargo build --release --benches --quiet
cargo test --release "$@"
