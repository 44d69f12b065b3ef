#!/usr/bin/env bash
# The benchmark command (README "Benchmarks"): installs Dovecot and the peers (nginx with
# its mail module, HAProxy) if needed, builds the control plane, the data plane and the
# harness in release mode, and runs every scenario on loopback. Writes
# bench/results/latest.md and bench/results/latest.png.
#   scripts/bench.sh            full run (3 runs per figure, 10 s phases; ~25 min on 2 cores)
#   scripts/bench.sh --quick    smoke run (1 run, 2 s phases; ~1.5 min)
# Other arguments go to switchyard-bench (e.g. --runs 5, --scenarios 1,5, --no-dovecot).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! scripts/install-deps.sh; then
  echo "bench.sh: could not install Dovecot; its rows will be missing" >&2
fi

# The peers of scenario 4. Debian may start their stock services after installing them;
# the bench runs its own instances on other ports either way.
peers=()
[[ -x /usr/sbin/nginx ]] || peers+=(nginx)
[[ -e /usr/lib/nginx/modules/ngx_mail_module.so ]] || peers+=(libnginx-mod-mail)
[[ -x /usr/sbin/haproxy ]] || peers+=(haproxy)
if ((${#peers[@]} > 0)); then
  as_root=()
  [[ $(id -u) -eq 0 ]] || as_root=(sudo)
  echo "bench.sh: installing ${peers[*]}" >&2
  if ! { "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -qq --no-install-recommends "${peers[@]}"; }; then
    echo "bench.sh: could not install ${peers[*]}; the peer rows will be missing" >&2
  fi
fi

cargo build --release -p controlplane -p dataplane -p switchyard-bench
exec target/release/switchyard-bench "$@"
