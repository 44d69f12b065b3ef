#!/usr/bin/env bash
# Fuzzes every codec target in fuzz/ with cargo fuzz (libFuzzer) for SECONDS each
# (default 10); fails when the targets do not build or any of them crashes, hangs
# (-timeout) or runs out of memory. See fuzz/README.md.
#
#   scripts/fuzz.sh [SECONDS]
#
# Environment:
#   FUZZ_TARGETS="imap smtp"   only these targets (default: every one `cargo fuzz list` names)
#   FUZZ_SANITIZER=address     build with a sanitizer (default none: the codecs forbid
#                              `unsafe`, so ASan would halve the executions for nothing)
#   FUZZ_SAVE=1                merge what the run found into fuzz/corpus/<target> and
#                              minimize it with `cargo fuzz cmin` (otherwise the checked-in
#                              corpus is only read, and new inputs go to a temp dir)
#
# A crashing input is left in fuzz/artifacts/<target>/; replay it with
# `cd fuzz && cargo fuzz run -s none <target> artifacts/<target>/crash-...`.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds=${1:-10}
sanitizer=${FUZZ_SANITIZER:-none}

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked
fi

# The machine has only a stable toolchain. With no sanitizer cargo fuzz passes no nightly
# flag at all; a sanitizer build needs `-Zsanitizer`, which stable rustc accepts when told
# it is bootstrapping. Always set, so cargo's cached rustc probe (target/.rustc_info.json,
# which does not key on this variable) never remembers a run without it.
export RUSTC_BOOTSTRAP=1

build_log=$(mktemp)
work=$(mktemp -d)
trap 'rm -rf "$build_log" "$work"' EXIT

# Adds what the run found to corpus/<target> and minimizes it to the fewest inputs that
# still reach every edge (hit counts ignored: that keeps the checked-in corpus small).
# The hand-written transcripts (seed-*) are kept as they are.
save() {
  local target=$1 seeds="$work/seeds-$1" rc=0
  cp -n "$work/$target"/* "corpus/$target/" 2>/dev/null || true
  mkdir -p "$seeds"
  mv "corpus/$target"/seed-* "$seeds/" 2>/dev/null || true
  cargo fuzz cmin -s "$sanitizer" "$target" "corpus/$target" -- -set_cover_merge=1 -use_counters=0 \
    >"$work/$target.cmin.log" 2>&1 || rc=$?
  mv "$seeds"/* "corpus/$target/" 2>/dev/null || true
  if [[ $rc -ne 0 ]]; then
    tail -n 20 "$work/$target.cmin.log" >&2
    echo "fuzz.sh: cmin of $target failed" >&2
    failed=$((failed + 1))
  fi
}

started=$SECONDS
if ! cargo fuzz build -s "$sanitizer" >"$build_log" 2>&1; then
  cat "$build_log" >&2
  echo "fuzz.sh: the fuzz targets do not build" >&2
  exit 2
fi
echo "fuzz.sh: built the targets in $((SECONDS - started)) s"

targets=${FUZZ_TARGETS:-$(cargo fuzz list)}
passed=0
failed=0
for target in $targets; do
  mkdir -p "corpus/$target" "artifacts/$target" "$work/$target"
  log="$work/$target.log"
  # The first corpus directory receives new inputs; the checked-in one is only read.
  if cargo fuzz run -s "$sanitizer" "$target" "$work/$target" "corpus/$target" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    >"$log" 2>&1; then
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
    corpus=$(grep -o 'corp: [0-9]*/[0-9a-zA-Z]*' "$log" | tail -1 | cut -d' ' -f2)
    echo "fuzz.sh: $target ok: ${runs:-?} runs, ${rate:-?} exec/s, corpus ${corpus:-?} (units/bytes)"
    passed=$((passed + 1))
  else
    tail -n 60 "$log" >&2
    echo "fuzz.sh: $target FAILED; input in fuzz/artifacts/$target/" >&2
    failed=$((failed + 1))
    continue
  fi
  if [[ ${FUZZ_SAVE:-} == "1" ]]; then
    save "$target"
  fi
done

echo "fuzz.sh: total $((SECONDS - started)) s"
echo "fuzz: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
