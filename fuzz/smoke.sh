#!/usr/bin/env bash
# A short fuzzing run of every target from its committed corpus, as CI runs
# it. Builds the targets with plain cargo on the stable toolchain (the same
# coverage instrumentation cargo-fuzz passes, without a sanitizer), so
# cargo-fuzz need not be installed. Overflow checks and debug assertions
# are on, so an arithmetic overflow any input reaches fails the run instead
# of wrapping silently (issue 18). New inputs go to a temporary folder;
# the committed corpora are only read. Fails on any crash, timeout or
# out-of-memory, leaving the input under fuzz/artifacts/<target>/.
#
#   fuzz/smoke.sh [SECONDS_PER_TARGET]     (default 20)
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-20}
host=$(rustc -vV | sed -n 's/^host: //p')
export RUSTFLAGS="-Cpasses=sancov-module \
 -Cllvm-args=-sanitizer-coverage-level=4 \
 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
 -Cllvm-args=-sanitizer-coverage-pc-table \
 -Cllvm-args=-sanitizer-coverage-trace-compares \
 -Cdebug-assertions -Coverflow-checks \
 --cfg fuzzing"
# --target keeps build scripts and proc macros uninstrumented; a target
# folder of its own keeps cargo-fuzz's builds (other flags) intact.
export CARGO_TARGET_DIR=target/smoke
cargo build --release --bins --target "$host" --quiet

# Longest input per target: image targets read sparse seeds of up to 256 KiB,
# file systems (fs_list) seeds of up to 1 MiB.
declare -A max_len=([open_vhd]=65536 [open_vhdx]=262144 [open_evhd]=262144 [partitions]=65536 [fs_list]=1048576)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
status=0
for t in open_vhd open_vhdx open_evhd keypair_xml vhdx_log write_ops nbd_server partitions fs_list; do
  mkdir -p "$tmp/$t" "artifacts/$t"
  # Every committed input runs first (corpus and former crashes, with
  # overflow checks: tests/fuzz_replay.rs replays them in the release
  # build, where overflows wrap), then the fuzzer mutates them.
  dirs=("corpus/$t")
  [ -d "regressions/$t" ] && dirs+=("regressions/$t")
  # A fixed seed: the same mutations on every run, however far it gets.
  if ! "$CARGO_TARGET_DIR/$host/release/$t" -seed=1 -max_total_time="$secs" -max_len="${max_len[$t]:-4096}" \
      -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
      -artifact_prefix="artifacts/$t/" "$tmp/$t" "${dirs[@]}" > "$tmp/$t.log" 2>&1; then
    echo "fuzz smoke: $t FAILED"
    tail -n 40 "$tmp/$t.log"
    status=1
    continue
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$tmp/$t.log")
  cov=$(grep -o 'cov: [0-9]*' "$tmp/$t.log" | tail -n 1)
  echo "fuzz smoke: $t ok, $runs runs in ${secs}s, $cov"
done
exit $status
