#!/usr/bin/env bash
# The test command (README, CI): installs the real mail servers if needed, fuzzes every codec
# briefly, then runs every test in the workspace. Extra arguments go to `cargo test`, e.g.
# `scripts/test.sh -- --nocapture`. SWITCHYARD_SKIP_FUZZ=1 skips the fuzzing locally (never
# in CI); SWITCHYARD_FUZZ_SECONDS sets the time per fuzz target (default 8).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ ${CI:-} == "true" ]]; then
  # In CI a missing Dovecot must fail the run, not silently skip the end-to-end tests.
  export SWITCHYARD_REQUIRE_REAL_SERVERS=1
fi

if ! scripts/install-deps.sh; then
  if [[ ${SWITCHYARD_REQUIRE_REAL_SERVERS:-} == "1" ]]; then
    echo "test.sh: could not install the real servers the tests require" >&2
    exit 1
  fi
  echo "test.sh: could not install dependencies; tests needing them will be skipped" >&2
fi

# A short bounded run of every codec fuzz target (scripts/fuzz.sh, about two minutes with
# the build); a crash or a fuzz build failure fails the run. SWITCHYARD_SKIP_FUZZ=1 skips it
# on a developer machine; under CI it is ignored, so CI always fuzzes.
if [[ ${SWITCHYARD_SKIP_FUZZ:-} == "1" && ${CI:-} != "true" ]]; then
  echo "test.sh: SWITCHYARD_SKIP_FUZZ=1: not fuzzing" >&2
else
  scripts/fuzz.sh "${SWITCHYARD_FUZZ_SECONDS:-8}"
fi

# The tests start the real `controlplane` and `dataplane` executables; `cargo test` builds a
# package's binaries only for that package's own integration tests, so build them first.
cargo build --workspace --bins
cargo test --workspace --all-targets "$@"
