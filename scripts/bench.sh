#!/usr/bin/env bash
# The benchmark command (README "Benchmarks"): installs Dovecot if needed, builds the
# control plane, the data plane and the harness in release mode, and runs every scenario
# on loopback. Writes bench/results/latest.md and latest.png.
#   scripts/bench.sh            full run (3 runs per figure, 10 s phases; ~15 min on 2 cores)
#   scripts/bench.sh --quick    smoke run (1 run, a few seconds per scenario)
# Other arguments go to switchyard-bench (e.g. --runs 5, --scenarios 1,5, --no-dovecot).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! scripts/install-deps.sh; then
  echo "bench.sh: could not install Dovecot; its rows will be missing" >&2
fi

cargo build --release -p controlplane -p dataplane -p switchyard-bench
exec target/release/switchyard-bench "$@"
