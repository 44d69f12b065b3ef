#!/usr/bin/env bash
# Measures `controlplane mappings import|export` end to end through the release binary
# (read + check + compare with the store + write), with wall clock and peak RSS from
# /usr/bin/time -v. Phases on one store:
#   1. import COUNT new mappings into an empty store
#   2. import the same file again (everything unchanged: nothing written)
#   3. import a file where every 10th mapping moved (compare a full store, write 10 %)
#   4. export every mapping to a TSV file
#
#   scripts/bench-import.sh [COUNT]               SQLite in a temp dir (default 1000000)
#   scripts/bench-import.sh --postgres [COUNT]    PostgreSQL 15 started in a temp dir
#                                                 (durable commits: fsync on)
set -euo pipefail
cd "$(dirname "$0")/.."

store=sqlite
if [[ ${1:-} == --postgres ]]; then
  store=postgres
  shift
fi
count=${1:-1000000}

cargo build --release --quiet -p controlplane
bin=$PWD/target/release/controlplane
work=$(mktemp -d)
pg_data=""
cleanup() {
  if [[ -n $pg_data ]]; then
    as_postgres "$pg_bin/pg_ctl" -D "$pg_data" -m fast stop >/dev/null 2>&1 || true
    rm -rf "$(dirname "$pg_data")"
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# PostgreSQL refuses to run as root: run it as the `postgres` user then.
as_postgres() {
  if [[ $(id -u) -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

cat >"$work/cp.toml" <<EOF
[routing]
default_destination = "legacy"
[destination.legacy]
host = "127.0.0.1"
[destination.legacy.protocol.imap]
port = 1143
[destination.new]
host = "127.0.0.1"
[destination.new.protocol.imap]
port = 2143
EOF

if [[ $store == postgres ]]; then
  pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  pg_root=$(as_postgres mktemp -d)
  pg_data=$pg_root/data
  port=$(free_port)
  as_postgres "$pg_bin/initdb" -D "$pg_data" -A trust -U postgres >/dev/null
  as_postgres "$pg_bin/pg_ctl" -D "$pg_data" -l "$pg_root/log" -w \
    -o "-p $port -c listen_addresses=127.0.0.1 -k $pg_root" start >/dev/null
  printf '[mapping]\nsource = "postgres"\n[mapping.postgres]\nurl = "postgres://postgres@127.0.0.1:%s/postgres"\n' \
    "$port" >>"$work/cp.toml"
  echo "PostgreSQL $("$pg_bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$port (fsync on)"
else
  printf '[mapping.sqlite]\npath = "%s/mappings.db"\n' "$work" >>"$work/cp.toml"
fi

# Mixed-case identifiers (the import normalizes them), a third of them on `new`; with
# flip=1 every 10th one is on the other destination.
generate() {
  awk -v n="$count" -v flip="$1" 'BEGIN { for (i = 0; i < n; i++) {
    d = i % 3 ? "legacy" : "new"
    if (flip && i % 10 == 0) d = d == "new" ? "legacy" : "new"
    printf "User%07d@Example%d.test\t%s\n", i, i % 50, d } }'
}
generate 0 >"$work/all.tsv"
generate 1 >"$work/moved.tsv"
echo "$count mappings, $(du -h "$work/all.tsv" | cut -f1) file, store: $store"
echo
printf '| phase | wall clock | max RSS | output |\n|---|---|---|---|\n'

phase() {
  local name=$1
  shift
  if ! /usr/bin/time -v "$bin" --config "$work/cp.toml" mappings "$@" >"$work/out" 2>"$work/time"; then
    echo "$name failed:" >&2
    cat "$work/time" >&2
    exit 1
  fi
  local wall rss
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/ { print $2 }' "$work/time")
  rss=$(awk -F': ' '/Maximum resident set size/ { printf "%.0f MiB", $2 / 1024 }' "$work/time")
  # Import reports on stdout, export on stderr (its data may be stdout).
  local said
  said=$(cat "$work/out" <(grep '^exported' "$work/time") | head -1 | sed "s|$work/||g")
  printf '| %s | %s | %s | %s |\n' "$name" "$wall" "$rss" "$said"
}

phase "import into an empty store" import "$work/all.tsv" --no-progress
phase "same file again" import "$work/all.tsv" --no-progress
phase "every 10th moved" import "$work/moved.tsv" --no-progress
phase "export to TSV" export "$work/export.tsv"
exported=$(grep -vc '^#' "$work/export.tsv")
[[ $exported -eq $count ]] || { echo "export holds $exported mappings, expected $count" >&2; exit 1; }
