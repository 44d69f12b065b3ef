#!/usr/bin/env bash
# The test command (README, CI): installs the real mail servers if needed, then runs every
# test in the workspace. Extra arguments go to `cargo test`, e.g. `scripts/test.sh -- --nocapture`.
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

cargo test --workspace --all-targets "$@"
